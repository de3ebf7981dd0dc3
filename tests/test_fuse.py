"""fuse() on ShuffleNets written the way users write them, unlike the package's own.

PYTEST_DONT_REWRITE: the official-style model below has an ``assert`` in its forward, and
fuse() must see it as Python compiles it, not as pytest's assertion rewriting does.
"""

import copy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflenet_ops
from shufflenet_ops import fuse
from shufflenet_ops.fuse import FusedConv, FusedForward, FuseWarning, fused_convs, original_forwards
from shufflenet_ops.models import shufflenet_v1

from _helpers import randomize_batchnorm

DOUBLE = torch.float64


# ------------------------------------------------------------------ user-written models
class PaperStyleBlock(nn.Module):
    """Shuffle right after the first GConv + BN + ReLU (the paper's placement) written with
    torch.channel_shuffle; a residual whose shortcut is a 1x1 conv + BN when widths differ."""

    def __init__(self, cin, cout, groups, shortcut_groups=1):
        super().__init__()
        mid = cout // 4
        self.groups = groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.proj = None
        if cin != cout:
            self.proj = nn.Sequential(
                nn.Conv2d(cin, cout, 1, groups=shortcut_groups, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = torch.channel_shuffle(out, self.groups)
        out = self.bn2(self.dw(out))
        out = self.bn3(self.conv2(out))
        shortcut = x if self.proj is None else self.proj(x)
        return F.relu(out + shortcut)


class ShuffleThenBNBlock(nn.Module):
    """conv -> shuffle (view/transpose/contiguous/view, g groups) -> BN -> ReLU: this BN is
    indexed in shuffled order. The last conv has a bias and no BN."""

    def __init__(self, channels, groups):
        super().__init__()
        mid = channels // 4
        self.groups = groups
        self.conv1 = nn.Conv2d(channels, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, channels, 1, groups=groups, bias=True)

    def shuffle(self, x):
        b, c, h, w = x.size()
        x = x.view(b, self.groups, c // self.groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    def forward(self, x):
        y = self.shuffle(self.conv1(x))
        y = self.bn1(y).relu()
        y = self.bn2(self.dw(y))
        return x + self.conv2(y)


class PaperStyleNet(nn.Module):
    def __init__(self, groups=3, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.blocks = nn.Sequential(
            PaperStyleBlock(24, 48, groups),  # ungrouped 1x1 shortcut: nothing to fuse there
            ShuffleThenBNBlock(48, groups),
            PaperStyleBlock(48, 96, groups, shortcut_groups=groups),  # grouped 1x1 shortcut
        )
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class OfficialStyleBlock(nn.Module):
    """The official ShuffleNetV1 block: the shuffle after the depthwise conv + BN, right
    before the second GConv, reshaping to (C/g, g) (the inverse convention), with
    x.data.size() and an assert."""

    def __init__(self, inp, oup, *, group, first_group, mid_channels, ksize, stride):
        super().__init__()
        self.stride, self.group = stride, group
        outputs = oup - inp if stride == 2 else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid_channels, 1, 1, 0, groups=1 if first_group else group, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, ksize, stride, ksize // 2, groups=mid_channels, bias=False),
            nn.BatchNorm2d(mid_channels),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid_channels, outputs, 1, 1, 0, groups=group, bias=False), nn.BatchNorm2d(outputs)
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, old_x):
        x = old_x
        x_proj = old_x
        x = self.branch_main_1(x)
        if self.group > 1:
            x = self.channel_shuffle(x)
        x = self.branch_main_2(x)
        if self.stride == 1:
            return F.relu(x + x_proj)
        return torch.cat((self.branch_proj(x_proj), F.relu(x)), 1)

    def channel_shuffle(self, x):
        batchsize, num_channels, height, width = x.data.size()
        assert num_channels % self.group == 0
        group_channels = num_channels // self.group
        x = x.reshape(batchsize, group_channels, self.group, height, width)
        x = x.permute(0, 2, 1, 3, 4)
        x = x.reshape(batchsize, num_channels, height, width)
        return x


class OfficialStyleNet(nn.Module):
    def __init__(self, group=3, num_classes=10):
        super().__init__()
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.features = nn.Sequential(
            OfficialStyleBlock(12, 48, group=group, first_group=True, mid_channels=12, ksize=3, stride=2),
            OfficialStyleBlock(48, 48, group=group, first_group=False, mid_channels=12, ksize=3, stride=1),
            OfficialStyleBlock(48, 96, group=group, first_group=False, mid_channels=24, ksize=3, stride=2),
        )
        self.globalpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(96, num_classes, bias=False)

    def forward(self, x):
        x = self.features(self.maxpool(self.first_conv(x)))
        return self.classifier(self.globalpool(x).flatten(1))


class ModuleShuffleNet(nn.Module):
    """nn.ChannelShuffle modules before a GConv (paper convention), F.channel_shuffle after
    a biased conv with no BN, and a shuffle written with unflatten/swapaxes/flatten."""

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle_a = nn.ChannelShuffle(4)
        self.conv_b = nn.Conv2d(16, 16, 1, groups=4)  # input shuffled, ReLU module after
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv2d(16, 24, 1, groups=2)  # output shuffled by F.channel_shuffle
        self.conv_d = nn.Conv2d(24, 24, 1, groups=3, bias=False)
        self.bn_d = nn.BatchNorm2d(24)

    def forward(self, x):
        x = self.shuffle_a(self.conv_a(x))
        x = self.act_b(self.conv_b(x))
        x = F.relu(F.channel_shuffle(self.conv_c(x), 2))
        x = torch.flatten(x.unflatten(1, (3, 8)).swapaxes(1, 2), 1, 2)  # shuffle with 3 groups
        return self.bn_d(self.conv_d(x))


def fused_sites(model, kernel="conv1x1_shuffle"):
    return {name: site for name, site in fused_convs(model).items() if site.kernel == kernel}


def check_train_and_eval_equivalence(make_model, x):
    """fuse() vs the original: eval outputs; train outputs, input and parameter gradients,
    running statistics after the step; the same parameters under the same names."""
    torch.manual_seed(0)
    original = randomize_batchnorm(make_model().to(DOUBLE))
    reference = copy.deepcopy(original)
    names = {id(t): n for n, t in [*original.named_parameters(), *original.named_buffers()]}
    fused = fuse(original, inplace=True)
    assert fused_sites(fused), "nothing was fused"
    assert fused.state_dict().keys() == reference.state_dict().keys()
    ref_tensors = dict([*reference.named_parameters(), *reference.named_buffers()])
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert all(names[id(p)] == n for n, p in fused.named_parameters())  # inplace: the same tensors

    reference.eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))

    reference.train()
    fused.train()
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = reference(x_ref), fused(x_fused)
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    y_ref.backward(grad)
    y.backward(grad)
    torch.testing.assert_close(x_fused.grad, x_ref.grad)
    for name, parameter in fused.named_parameters():
        torch.testing.assert_close(parameter.grad, ref_tensors[name].grad, msg=lambda m, name=name: f"{name}: {m}")
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, ref_tensors[name], msg=lambda m, name=name: f"{name}: {m}")
    return fused


def fused_code(model):
    return "\n".join(m.forward.code for m in model.modules() if isinstance(m.__dict__.get("forward"), FusedForward))


# ---------------------------------------------------------------------------------- tests
def site(conv, bn=None, **fields):
    return FusedConv(conv=conv, bn=bn, **fields)


def test_paper_style_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)  # everything is traced and matched
        fused = check_train_and_eval_equivalence(PaperStyleNet, torch.randn(4, 3, 32, 32, dtype=DOUBLE))
    assert type(fused) is PaperStyleNet and type(fused.blocks) is nn.Sequential
    sites = fused_sites(fused)
    assert sites["blocks.0.conv1"] == site("blocks.0.conv1", "blocks.0.bn1", output_shuffle=3, relu=True)
    # the residual add and the ReLU after the second conv + BN: in its epilogue
    assert sites["blocks.0.conv2"] == site("blocks.0.conv2", "blocks.0.bn3", relu=True, residual=True)
    # the BN after the view/transpose shuffle, folded through the inverse permutation
    assert sites["blocks.1.conv1"] == site(
        "blocks.1.conv1", "blocks.1.bn1", output_shuffle=3, relu=True, bn_after_shuffle=True
    )
    assert sites["blocks.1.conv2"] == site("blocks.1.conv2", None, residual=True)  # x + conv2(y): no ReLU
    assert "blocks.0.proj.0" not in sites  # ungrouped 1x1 shortcut, no shuffle: torch's conv...
    assert fused_convs(fused)["blocks.0.proj.0"].kernel == "conv2d_bn"  # ...with its BN folded
    assert sites["blocks.2.proj.0"] == site("blocks.2.proj.0", "blocks.2.proj.1")  # grouped shortcut
    assert fused_convs(fused)["blocks.0.dw"] == site("blocks.0.dw", "blocks.0.bn2", kernel="conv2d_bn")
    code = fused_code(fused)
    assert "channel_shuffle" not in code and "transpose" not in code and ".view(" not in code


def test_official_style_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)  # the assert in channel_shuffle is traced
        fused = check_train_and_eval_equivalence(OfficialStyleNet, torch.randn(4, 3, 64, 64, dtype=DOUBLE))
    sites = fused_sites(fused)
    for index, mid in ((0, 12), (1, 12), (2, 24)):
        second = sites[f"features.{index}.branch_main_2.0"]
        assert second.input_shuffle == mid // 3  # the official (C/g) convention
        assert second.relu  # stride 2: F.relu(x) before the concat; stride 1: relu(x + x_proj)
        assert second.residual == (index == 1)
    # ungrouped, no shuffle, but a ReLU after its BN: the ReLU goes into the epilogue, as in
    # a ShuffleNet V2 branch (fused because this graph holds shuffle patterns)
    assert sites["features.0.branch_main_1.0"] == site(
        "features.0.branch_main_1.0", "features.0.branch_main_1.1", relu=True
    )
    assert sites["features.1.branch_main_1.0"].relu
    assert "permute" not in fused_code(fused) and "_assert" in fused_code(fused)


def test_module_and_functional_shuffles():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        fused = check_train_and_eval_equivalence(ModuleShuffleNet, torch.randn(2, 3, 8, 8, dtype=DOUBLE))
    assert fused_sites(fused) == {
        "conv_b": site("conv_b", input_shuffle=4, relu=True),
        "conv_c": site("conv_c", output_shuffle=2, relu=True),
        "conv_d": site("conv_d", "bn_d", input_shuffle=3),
    }
    # the nn.ChannelShuffle module stays in the tree (state_dict and indexing unchanged), unused
    assert isinstance(fused.shuffle_a, nn.ChannelShuffle) and "shuffle_a" not in fused_code(fused)


def test_package_naive_shufflenet_reaches_the_fused_one():
    """Every 1x1 conv, every epilogue (residual + ReLU, pooled shortcut + ReLU), every BN
    fold and the stem's conv + BN + ReLU + pool, as in shufflenet_v1(fused=True)."""
    torch.manual_seed(0)
    naive = randomize_batchnorm(shufflenet_v1(3, 0.25, num_classes=10, fused=False).to(DOUBLE))
    reference = copy.deepcopy(naive)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        fused = fuse(naive)
    sites = fused_sites(fused)
    assert len(sites) == 32 and all(s.relu for s in sites.values())
    assert sum(s.residual for s in sites.values()) == 13  # the stride-1 units
    assert len(fused_sites(fused, "conv2d_bn")) == 17  # 16 depthwise convs and the stem's conv
    code = fused_code(fused)
    assert ".shuffle" not in code and "channel_shuffle" not in code
    # in the whole network's forward, every unit is one call (the pooled shortcut and the
    # ReLUs inside it); the units' own forwards, fused too, keep their per-conv calls
    top = fused.forward.code
    assert top.count("fuse_fused_unit(") == 16 and "fused_conv1x1" not in top
    assert "fused_stem(" in code and "relu(" not in code.replace("_relu(", "")  # conv1 + BN + ReLU + pool
    packaged = shufflenet_v1(3, 0.25, num_classes=10, fused=True).to(DOUBLE)
    packaged.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 32, 32, dtype=DOUBLE)
    for model in (reference, fused, packaged):
        model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
        torch.testing.assert_close(packaged(x), reference(x))


def test_original_is_untouched_unless_inplace():
    model = PaperStyleNet().to(DOUBLE)
    state = copy.deepcopy(model.state_dict())
    text = repr(model)
    fused = fuse(model)
    assert repr(model) == text and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "forward" not in vars(model) and not fused_convs(model)
    assert not any(p is q for p in fused.parameters() for q in model.parameters())
    parameters = [id(p) for p in model.parameters()]
    shared = fuse(model, inplace=True)
    assert shared is model and fused_convs(model) and [id(p) for p in shared.parameters()] == parameters


def test_model_with_nothing_to_fuse_comes_back_unchanged():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        # an ungrouped 1x1 conv + BN + ReLU in a graph without a shuffle (a ResNet's): left to torch
        nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        result = fuse(model)
    assert type(result) is nn.Sequential and repr(result) == repr(model) and not fused_convs(result)
    assert all("forward" not in vars(m) for m in result.modules())
    assert result.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in result.state_dict().items())
    assert fuse(model, inplace=True) is model


class DataDependentNet(nn.Module):
    """One block fx cannot trace (Python control flow on a tensor value) next to a normal one."""

    def __init__(self):
        super().__init__()
        self.good = PaperStyleBlock(24, 24, 3)
        self.gate = nn.Conv2d(24, 24, 1, groups=3)

    def forward(self, x):
        x = self.good(x)
        if x.mean() > 100:  # data-dependent: stops symbolic tracing of this module
            x = x * 2
        return torch.channel_shuffle(self.gate(x), 3)


def test_untraceable_and_unmatched_parts_are_reported_in_one_warning():
    model = DataDependentNet().to(DOUBLE).eval()
    with pytest.warns(FuseWarning) as record:
        fused = fuse(model)
    assert len(record) == 1
    message = str(record[0].message)
    assert "DataDependentNet could not be traced" in message
    assert type(fused.good) is PaperStyleBlock and isinstance(vars(fused.good)["forward"], FusedForward)
    assert set(fused_sites(fused)) == {"good.conv1", "good.conv2"}  # not the gate inside the untraced forward
    x = torch.randn(2, 24, 6, 6, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))


def test_shuffle_next_to_no_fusable_conv_is_reported():
    class ShuffleAfter3x3(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.shuffle = nn.ChannelShuffle(2)

        def forward(self, x):
            return self.shuffle(self.conv(x))

    with pytest.warns(FuseWarning, match=r"shuffle: channel shuffle not next to a fusable 1x1 conv"):
        result = fuse(ShuffleAfter3x3())
    assert isinstance(result, ShuffleAfter3x3)


def test_conv_called_twice_is_fused_at_each_call():
    class SharedConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 1, groups=3)

        def forward(self, x):
            return self.conv(torch.channel_shuffle(self.conv(x), 3))

    model = SharedConv()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        result = fuse(model)
    code = fused_code(result)
    assert "conv(" not in code.replace("fused_conv1x1(", "") and "channel_shuffle" not in code
    x = torch.randn(1, 6, 2, 2)
    torch.testing.assert_close(result(x), model(x))


def test_torch_compile_of_fused_model():
    torch.manual_seed(0)
    model = randomize_batchnorm(PaperStyleNet()).eval()
    fused = fuse(model).eval()
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    # training through the compiled graph: same loss gradients as eager
    fused.train()
    model.train()
    training = torch.compile(fused, backend="aot_eager", fullgraph=True)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    model(x_eager).square().sum().backward()
    training(x_compiled).square().sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        fuse(lambda x: x)
    with pytest.raises(TypeError, match="inplace"):
        fuse(nn.Conv2d(2, 2, 1), inplace="yes")
    assert shufflenet_ops.fuse is fuse


def test_hand_written_shuffle_that_cannot_be_verified_is_reported():
    class ConstantSizeShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 1, groups=2)

        def forward(self, x):  # sizes hard-coded for 4x4 inputs: not a general channel shuffle
            return self.conv(x).view(-1, 2, 4, 4, 4).transpose(1, 2).reshape(-1, 8, 4, 4)

    model = ConstantSizeShuffle()
    with pytest.warns(FuseWarning, match="conv: a reshape/transpose next to this 1x1 conv was not recognised"):
        result = fuse(model)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(result(x), model(x))
    assert "transpose" in fused_code(result)  # the view/transpose stayed; the grouped conv itself is fused
    assert fused_sites(result) == {"conv": site("conv")}


def test_fuse_keeps_each_batchnorm_mode():
    model = PaperStyleNet().to(DOUBLE).train()
    model.blocks[0].bn1.eval()  # frozen BN inside a training model
    reference = copy.deepcopy(model)
    fused = fuse(model)
    assert fused.training and fused.blocks[0].conv1.training
    assert not fused.blocks[0].bn1.training and fused.blocks[2].bn1.training
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    torch.testing.assert_close(fused(x), reference(x))
    torch.testing.assert_close(fused.blocks[0].bn1.running_mean, reference.blocks[0].bn1.running_mean)
    torch.testing.assert_close(fused.blocks[2].bn1.running_mean, reference.blocks[2].bn1.running_mean)


# ------------------------------------------------------------- the user's model stays theirs
def test_fused_model_keeps_names_checkpoints_and_indexing():
    torch.manual_seed(0)
    original = randomize_batchnorm(PaperStyleNet().to(DOUBLE)).eval()
    fused = fuse(original)
    # the same class and tree: containers index as before
    assert type(fused) is PaperStyleNet and type(fused.blocks[0]) is PaperStyleBlock
    assert type(fused.blocks[0].conv1) is nn.Conv2d
    assert fused.blocks[2].proj[0] is fused.get_submodule("blocks.2.proj.0")
    assert [n for n, _ in fused.named_modules()] == [n for n, _ in original.named_modules()]
    assert fused.state_dict().keys() == original.state_dict().keys()
    # a checkpoint of the fused model loads into a fresh original model, and the other way round
    fresh = PaperStyleNet().to(DOUBLE).eval()
    fresh.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), original(x))
        other = fuse(PaperStyleNet().to(DOUBLE)).eval()
        other.load_state_dict(original.state_dict())
        torch.testing.assert_close(other(x), original(x))
        # load_state_dict(assign=True) swaps the parameter objects: the fused forward reads them live
        other.load_state_dict({k: v.clone() * 2 for k, v in original.state_dict().items()}, assign=True)
        doubled = PaperStyleNet().to(DOUBLE).eval()
        doubled.load_state_dict({k: v.clone() * 2 for k, v in original.state_dict().items()})
        torch.testing.assert_close(other(x), doubled(x))


def test_fused_model_train_eval_to_deepcopy_and_pickle(tmp_path):
    torch.manual_seed(0)
    original = randomize_batchnorm(PaperStyleNet()).eval()
    fused = fuse(original)
    x = torch.randn(2, 3, 16, 16)
    assert fused.train() is fused and all(m.training for m in fused.modules())
    assert fused.eval() is fused and not any(m.training for m in fused.modules())
    as_double = fused.to(DOUBLE)  # parameters converted in place: the fused forward follows
    with torch.no_grad():
        reference = copy.deepcopy(original).to(DOUBLE)(x.to(DOUBLE))
        torch.testing.assert_close(as_double(x.to(DOUBLE)), reference)
        twin = copy.deepcopy(fused)
        assert vars(twin.blocks[0])["forward"].module is twin.blocks[0]  # bound to the copy
        torch.testing.assert_close(twin(x.to(DOUBLE)), reference)
        torch.save(fused, tmp_path / "model.pt")  # the whole model, not just its state_dict
        loaded = torch.load(tmp_path / "model.pt", weights_only=False)
        assert fused_convs(loaded) == fused_convs(fused)
        torch.testing.assert_close(loaded(x.to(DOUBLE)), reference)
        twin.blocks[0].conv1.weight.mul_(0)  # the copy has its own parameters
        torch.testing.assert_close(fused(x.to(DOUBLE)), reference)


def test_fuse_of_a_fused_model_starts_from_the_class_code():
    model = PaperStyleNet().to(DOUBLE).eval()
    once = fuse(model)
    twice = fuse(once)
    assert fused_convs(twice) == fused_convs(once)
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(twice(x), model(x))


def test_submodules_called_directly_run_fused_too():
    model = PaperStyleNet().to(DOUBLE).eval()
    fused = fuse(model)
    block = fused.blocks[1]
    assert isinstance(vars(block)["forward"], FusedForward)
    assert set(fused_sites(block)) == {"conv1", "conv2"}
    h = torch.randn(2, 48, 8, 8, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(block(h), model.blocks[1](h))


def test_original_forwards_runs_the_unfused_code():
    model = PaperStyleNet().to(DOUBLE).eval()
    fused = fuse(model)
    calls = []
    fused.blocks[0].conv1.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 3, 16, 16, dtype=DOUBLE)
    with torch.no_grad():
        fused(x)
        assert not calls  # the fused forward reads the conv's parameters, it does not call it
        with original_forwards(fused):
            torch.testing.assert_close(fused(x), model(x))
    assert calls


# ----------------------------------------------------------------------------- epilogues
class ResidualForms(nn.Module):
    """conv + BN followed by each way of writing the residual add, with and without ReLU."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.conv = nn.Conv2d(12, 12, 1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if self.form == "x + y":
            return F.relu(x + y)
        if self.form == "y + x":
            return torch.relu(y + x)
        if self.form == "torch.add":
            return nn.functional.relu(torch.add(x, y), inplace=True)
        if self.form == "method":
            return y.add(x).relu()
        if self.form == "no relu":
            return x + y
        if self.form == "broadcast":  # a per-channel residual: cannot enter the epilogue as is
            return F.relu(y + x.mean((2, 3), keepdim=True))
        raise AssertionError(self.form)


@pytest.mark.parametrize("form", ["x + y", "y + x", "torch.add", "method", "no relu", "broadcast"])
def test_residual_add_and_relu_move_into_the_epilogue(form):
    fused = check_train_and_eval_equivalence(lambda: ResidualForms(form), torch.randn(2, 12, 5, 7, dtype=DOUBLE))
    assert fused_sites(fused)["conv"] == site("conv", "bn", relu=form != "no relu", residual=True)
    assert "add" not in fused_code(fused).replace("fused_conv1x1", "") or form == "broadcast"


class StrideTwoUnit(nn.Module):
    """The naive stride-2 ShuffleNet unit ending: relu(cat(avg_pool(x), branch)), pool written
    as a module or a function call."""

    def __init__(self, functional_pool):
        super().__init__()
        self.functional_pool = functional_pool
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.dw = nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12, bias=False)
        self.conv = nn.Conv2d(12, 12, 1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        shortcut = F.avg_pool2d(x, 3, 2, 1) if self.functional_pool else self.pool(x)
        return F.relu(torch.cat([shortcut, self.bn(self.conv(self.dw(x)))], dim=1))


@pytest.mark.parametrize("functional_pool", [False, True])
def test_pooled_shortcut_concat_relu_moves_into_the_kernels(functional_pool):
    fused = check_train_and_eval_equivalence(
        lambda: StrideTwoUnit(functional_pool), torch.randn(2, 12, 7, 9, dtype=DOUBLE)
    )
    assert fused_sites(fused)["conv"] == site("conv", "bn", relu=True)
    code = fused_code(fused)
    assert "avg_pool3x3s2_relu" in code and "relu(" not in code.replace("_relu(", "")


def test_pool_with_other_arguments_is_left_alone():
    class PaddingExcludedPool(StrideTwoUnit):
        def forward(self, x):
            shortcut = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            return F.relu(torch.cat([shortcut, self.bn(self.conv(self.dw(x)))], dim=1))

    fused = check_train_and_eval_equivalence(lambda: PaddingExcludedPool(True), torch.randn(2, 12, 8, 8, dtype=DOUBLE))
    assert "avg_pool3x3s2_relu" not in fused_code(fused) and not fused_sites(fused)["conv"].relu


# -------------------------------------------------------------------------------- einops
einops = pytest.importorskip("einops", reason="einops is a test extra")
Rearrange = pytest.importorskip("einops.layers.torch").Rearrange


class EinopsNet(nn.Module):
    """Two inputs, concatenated, GELU, then two 1x1 conv + BN sites behind ONE shared
    Rearrange layer (a channel shuffle), a rearrange() call in the official convention,
    and a Rearrange that is not a shuffle; a list output."""

    def __init__(self):
        super().__init__()
        self.shuffle = Rearrange("b (g c) h w -> b (c g) h w", g=2)
        self.conv_a = nn.Conv2d(32, 16, 1, bias=True)
        self.bn_a = nn.BatchNorm2d(16)
        self.conv_b = nn.Conv2d(32, 16, 1, groups=2, bias=True)
        self.bn_b = nn.BatchNorm2d(16)
        self.conv_c = nn.Conv2d(16, 16, 1, groups=4)
        self.flip = Rearrange("b c h w -> b c w h")  # not a channel shuffle

    def forward(self, left, right):
        x = F.gelu(torch.cat([left, right], 1))
        a = self.bn_a(self.conv_a(self.shuffle(x)))
        b = self.bn_b(self.conv_b(self.shuffle(x)))
        c = self.conv_c(einops.rearrange(F.gelu(b), "b (c g) h w -> b (g c) h w", g=4))
        return [a, self.flip(c)]


def test_einops_shuffles_are_fused():
    torch.manual_seed(0)
    model = randomize_batchnorm(EinopsNet().to(DOUBLE))
    reference = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)  # the non-shuffle Rearrange blocks nothing
        fused = fuse(model)
    assert fused_sites(fused) == {
        "conv_a": site("conv_a", "bn_a", input_shuffle=2),
        "conv_b": site("conv_b", "bn_b", input_shuffle=2),
        "conv_c": site("conv_c", input_shuffle=4),
    }
    code = fused_code(fused)
    assert "self._fused_flip(" in code and "_fused_shuffle" not in code and "rearrange" not in code
    left, right = torch.randn(2, 16, 5, 6, dtype=DOUBLE), torch.randn(2, 16, 5, 6, dtype=DOUBLE)
    for mode in ("eval", "train"):
        getattr(reference, mode)()
        getattr(fused, mode)()
        inputs = [t.clone().requires_grad_() for t in (left, right)]
        ref_inputs = [t.clone().requires_grad_() for t in (left, right)]
        out, ref = fused(*inputs), reference(*ref_inputs)
        for y, y_ref in zip(out, ref):
            torch.testing.assert_close(y, y_ref)
        sum(y.square().sum() for y in out).backward()
        sum(y.square().sum() for y in ref).backward()
        for t, t_ref in zip(inputs, ref_inputs):
            torch.testing.assert_close(t.grad, t_ref.grad)
        for (name, p), p_ref in zip(fused.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, msg=lambda m, name=name: f"{name}: {m}")


def test_fuse_works_without_einops(monkeypatch):
    monkeypatch.setattr(sys.modules["shufflenet_ops.fuse"], "_einops", lambda: (None, (), frozenset()))
    fused = check_train_and_eval_equivalence(ModuleShuffleNet, torch.randn(2, 3, 8, 8, dtype=DOUBLE))
    assert len(fused_sites(fused)) == 3


class ContainerNet(nn.Module):
    """Units held in an nn.ModuleList and an nn.ModuleDict, indexed in forward."""

    def __init__(self):
        super().__init__()
        self.units = nn.ModuleList([PaperStyleBlock(24, 24, 3), PaperStyleBlock(24, 24, 3)])
        self.heads = nn.ModuleDict({"main": nn.Sequential(nn.Conv2d(24, 12, 1, groups=3), nn.ChannelShuffle(3))})

    def forward(self, x):
        for unit in self.units:
            x = unit(x)
        return self.heads["main"](x)


def test_module_list_and_dict_stay_indexable():
    fused = check_train_and_eval_equivalence(ContainerNet, torch.randn(2, 24, 5, 5, dtype=DOUBLE))
    assert type(fused.units) is nn.ModuleList and type(fused.units[1]) is PaperStyleBlock
    assert type(fused.heads) is nn.ModuleDict and type(fused.heads["main"][0]) is nn.Conv2d
    units = {f"units.{i}.conv{j}" for i in (0, 1) for j in (1, 2)}
    assert set(fused_sites(fused)) == units | {"heads.main.0"}
    assert fused_sites(fused)["heads.main.0"].output_shuffle == 3
    assert fused_sites(fused.heads["main"]) == {"0": site("0", output_shuffle=3)}  # the Sequential itself too


def test_a_forward_set_on_the_instance_is_kept():
    model = PaperStyleNet().to(DOUBLE).eval()
    block = model.blocks[0]
    calls = []

    def wrapped(x, _forward=block.forward):  # what hook libraries do
        calls.append(1)
        return _forward(x)

    block.forward = wrapped
    with pytest.warns(FuseWarning, match="blocks.0: its forward is set on the instance"):
        fused = fuse(model, inplace=True)
    assert fused.blocks[0].forward is wrapped and "blocks.1.conv1" in fused_convs(fused)
    x = torch.randn(1, 3, 16, 16, dtype=DOUBLE)
    with torch.no_grad():
        fused(x)  # the model's fused forward calls the wrapper, at run time
    assert calls


def test_fused_model_exports_with_a_dynamic_batch():
    torch.manual_seed(0)
    model = randomize_batchnorm(PaperStyleNet()).eval()
    fused = fuse(model)
    batch = torch.export.Dim("batch")
    program = torch.export.export(fused, (torch.randn(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}})
    targets = {str(n.target) for n in program.graph.nodes}
    assert any("shufflenet_ops" in t for t in targets)  # the fused ops, not their decomposition
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------- what a trace would fix: modes, None, hooks
class ModeDependent(nn.Module):
    """Reads self.training in Python (F.dropout's flag, an if), as many user models do."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 12, 1, groups=3)
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        y = F.dropout(torch.channel_shuffle(self.conv(x), 3), 0.5, self.training)
        if self.training:
            y = y * 2
        return self.bn(y)


@pytest.mark.parametrize("fused_in", ["train", "eval"])
def test_training_flag_read_in_python_follows_train_and_eval(fused_in):
    model = getattr(ModeDependent().to(DOUBLE), fused_in)()
    fused = fuse(model)
    assert set(vars(fused)["forward"].codes) == {"train", "eval"}
    x = torch.randn(2, 12, 5, 5, dtype=DOUBLE)
    fused.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x))  # no dropout, no doubling
    fused.train()
    torch.manual_seed(0)
    y = fused(x)
    torch.manual_seed(0)
    torch.testing.assert_close(y, model.train()(x))  # the same dropout mask, doubled
    fused.eval()
    fused.bn.train()  # mixed modes: the original code decides, module by module
    model.eval()
    model.bn.train()
    torch.testing.assert_close(fused(x), model(x))


def test_forward_that_ignores_the_mode_gets_one_code():
    fused = fuse(PaperStyleNet())
    assert set(vars(fused)["forward"].codes) == {"any"}


def test_argument_defaulting_to_none_runs_the_original_code_when_none():
    class OptionalMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(12, 12, 1, groups=3)

        def forward(self, x, mask=None):
            y = torch.channel_shuffle(self.conv(x), 3)
            if mask is not None:  # the trace saw a tensor here
                y = y * mask
            return y

    model = OptionalMask().to(DOUBLE)
    fused = fuse(model)
    x, mask = torch.randn(2, 12, 3, 3, dtype=DOUBLE), torch.rand(2, 12, 3, 3, dtype=DOUBLE)
    torch.testing.assert_close(fused(x), model(x))
    torch.testing.assert_close(fused(x, None), model(x))
    torch.testing.assert_close(fused(x, mask=mask), model(x, mask))


def test_modules_with_hooks_are_called_and_never_folded():
    torch.manual_seed(0)
    model = PaperStyleNet().to(DOUBLE).eval()
    reference = copy.deepcopy(model)
    seen = []
    model.blocks[1].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    model.blocks[0].conv1.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,))
    reference.blocks[0].conv1.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 2,))
    with pytest.warns(FuseWarning, match="blocks.1: has hooks") as record:
        fused = fuse(model)
    assert "blocks.0.conv1: has hooks" in str(record[0].message)
    assert not seen  # not run on fx proxies while tracing
    assert "blocks.0.conv1" not in fused_convs(fused) and "blocks.2.conv1" in fused_convs(fused)
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), reference(x))
    assert len(seen) == 1 and seen[0][1] == 48  # run once, on the real output


def test_spectral_norm_and_lazy_convs_are_left_to_torch():
    torch.manual_seed(0)
    model = ModuleShuffleNet().to(DOUBLE)
    model.conv_c = torch.nn.utils.spectral_norm(model.conv_c)  # a pre-hook recomputes the weight
    model.conv_d = nn.LazyConv2d(24, 1, groups=3, bias=False, dtype=DOUBLE)  # no weight yet
    with pytest.warns(FuseWarning, match="conv_c: has hooks"):
        fused = fuse(model, inplace=True)
    assert "conv_c" not in fused_convs(fused) and "conv_d" not in fused_convs(fused)
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8, dtype=DOUBLE)
    torch.manual_seed(1)  # the lazy conv initialises its weight at the first call
    y = fused(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y, reference(x))
