"""fuse() on ShuffleNets written the way users write them, unlike the package's own.

PYTEST_DONT_REWRITE: the official-style model below has an ``assert`` in its forward, and
fuse() must see it as Python compiles it, not as pytest's assertion rewriting does.
"""

import copy
import warnings

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import shufflenet_ops
from shufflenet_ops import fuse
from shufflenet_ops.fuse import FuseWarning
from shufflenet_ops.models import shufflenet_v1
from shufflenet_ops.modules import (
    FUSED_MODULE_TYPES,
    GroupConv1x1BNShuffle,
    GroupConv1x1Shuffle,
    ShuffleGroupConv1x1,
    ShuffleGroupConv1x1BN,
)

from test_modules import randomize_batchnorm

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


def fused_modules(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, FUSED_MODULE_TYPES)}


def check_train_and_eval_equivalence(make_model, x):
    """fuse() vs the original: eval outputs; train outputs, input and parameter gradients,
    running statistics after the step."""
    torch.manual_seed(0)
    original = randomize_batchnorm(make_model().to(DOUBLE))
    reference = copy.deepcopy(original)
    # inplace=True shares the parameters, so each fused parameter is found by identity
    names = {id(t): n for n, t in [*original.named_parameters(), *original.named_buffers()]}
    fused = fuse(original, inplace=True)
    assert fused_modules(fused), "nothing was fused"
    ref_tensors = dict([*reference.named_parameters(), *reference.named_buffers()])
    fused_params = list(fused.parameters())
    assert sorted(names[id(p)] for p in fused_params) == sorted(n for n, _ in reference.named_parameters())

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
    for parameter in fused_params:
        name = names[id(parameter)]
        torch.testing.assert_close(parameter.grad, ref_tensors[name].grad, msg=lambda m: f"{name}: {m}")
    for buffer in fused.buffers():
        name = names[id(buffer)]
        torch.testing.assert_close(buffer, ref_tensors[name], msg=lambda m: f"{name}: {m}")
    return fused


def fused_code(model):
    return "\n".join(m.code for m in model.modules() if isinstance(m, fx.GraphModule))


# ---------------------------------------------------------------------------------- tests
def test_paper_style_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)  # everything is traced and matched
        fused = check_train_and_eval_equivalence(PaperStyleNet, torch.randn(4, 3, 32, 32, dtype=DOUBLE))
    assert isinstance(fused, fx.GraphModule)
    module = fused.get_submodule
    assert isinstance(module("blocks.0.conv1"), GroupConv1x1BNShuffle) and module("blocks.0.conv1").shuffle_groups == 3
    assert module("blocks.0.conv1").relu and not module("blocks.0.conv1").bn_after_shuffle
    # the BN after the view/transpose shuffle, folded through the inverse permutation
    assert module("blocks.1.conv1").bn_after_shuffle and module("blocks.1.conv1").relu
    assert isinstance(module("blocks.1.conv2"), GroupConv1x1Shuffle) and module("blocks.1.conv2").shuffle_groups == 1
    assert type(module("blocks.0.proj.0")) is nn.Conv2d  # ungrouped 1x1 shortcut, no shuffle: left alone
    assert isinstance(module("blocks.2.proj.0"), GroupConv1x1BNShuffle)  # grouped shortcut on the fused kernel
    code = fused_code(fused)
    assert "channel_shuffle" not in code and "transpose" not in code and ".view(" not in code
    assert "GroupConv1x1BNShuffle" in repr(fused)
    # a fused conv without BN keeps the conv's state_dict keys
    assert {"blocks.1.conv2.weight", "blocks.1.conv2.bias"} <= fused.state_dict().keys()


def test_official_style_model():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)  # the assert in channel_shuffle is traced
        fused = check_train_and_eval_equivalence(OfficialStyleNet, torch.randn(4, 3, 64, 64, dtype=DOUBLE))
    assert isinstance(fused, fx.GraphModule)
    for index, mid in ((0, 12), (1, 12), (2, 24)):
        second = fused.get_submodule(f"features.{index}.branch_main_2.0")
        assert isinstance(second, ShuffleGroupConv1x1BN)
        assert second.shuffle_groups == mid // 3  # the official (C/g) convention
        assert second.relu == (index != 1)  # stride 2: F.relu(x) before the concat
    assert type(fused.get_submodule("features.0.branch_main_1.0")) is nn.Conv2d  # ungrouped, no shuffle
    assert isinstance(fused.get_submodule("features.1.branch_main_1.0"), GroupConv1x1BNShuffle)
    assert "permute" not in fused_code(fused) and "_assert" in fused_code(fused)


def test_module_and_functional_shuffles():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        fused = check_train_and_eval_equivalence(ModuleShuffleNet, torch.randn(2, 3, 8, 8, dtype=DOUBLE))
    assert isinstance(fused.conv_b, ShuffleGroupConv1x1) and fused.conv_b.shuffle_groups == 4 and fused.conv_b.relu
    assert isinstance(fused.conv_c, GroupConv1x1Shuffle) and fused.conv_c.shuffle_groups == 2 and fused.conv_c.relu
    assert isinstance(fused.conv_d, ShuffleGroupConv1x1BN) and fused.conv_d.shuffle_groups == 3
    assert not any(isinstance(m, nn.ChannelShuffle) for m in fused.modules())


def test_package_naive_shufflenet_becomes_the_fused_one():
    torch.manual_seed(0)
    naive = randomize_batchnorm(shufflenet_v1(3, 0.25, num_classes=10, fused=False).to(DOUBLE))
    reference = copy.deepcopy(naive)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        fused = fuse(naive)
    packaged = shufflenet_v1(3, 0.25, num_classes=10, fused=True).to(DOUBLE)
    packaged.load_state_dict(reference.state_dict())
    assert len(fused_modules(fused)) == len(fused_modules(packaged)) == 32
    assert not any(isinstance(m, nn.ChannelShuffle) for m in fused.modules())
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
    assert not any(p is q for p in fused.parameters() for q in model.parameters())
    shared = fuse(model, inplace=True)
    assert {id(p) for p in shared.parameters()} == {id(p) for p in model.parameters()}


def test_model_with_nothing_to_fuse_comes_back_unchanged():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 1),  # an ungrouped 1x1 conv with no shuffle: nothing to gain
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", FuseWarning)
        result = fuse(model)
    assert type(result) is nn.Sequential and repr(result) == repr(model)
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
    assert isinstance(fused.good, fx.GraphModule) and isinstance(fused.good.conv1, GroupConv1x1BNShuffle)
    assert type(fused.gate) is nn.Conv2d  # inside the untraced forward: left as it was
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


def test_shared_conv_is_not_fused_and_is_reported():
    class SharedConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 1, groups=3)

        def forward(self, x):
            return self.conv(torch.channel_shuffle(self.conv(x), 3))

    model = SharedConv()
    with pytest.warns(FuseWarning, match="called more than once"):
        result = fuse(model)
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
    assert "transpose" in result.code  # the view/transpose stayed; the grouped conv itself is fused
    assert isinstance(result.conv, GroupConv1x1Shuffle) and result.conv.shuffle_groups == 1


def test_fuse_keeps_each_batchnorm_mode():
    model = PaperStyleNet().to(DOUBLE).train()
    model.blocks[0].bn1.eval()  # frozen BN inside a training model
    reference = copy.deepcopy(model)
    fused = fuse(model)
    assert fused.training and fused.get_submodule("blocks.0.conv1").training
    assert not fused.get_submodule("blocks.0.conv1.bn").training
    assert fused.get_submodule("blocks.2.conv1.bn").training
    x = torch.randn(2, 3, 16, 16, dtype=DOUBLE)
    torch.testing.assert_close(fused(x), reference(x))
