"""ShuffleNet V2: torchvision's state_dict, fused vs naive (outputs, gradients, running
statistics), the interleaving copy, count_flops against the paper's Table 5, and fuse()
of V2 code written several ways (torchvision's, torch.channel_shuffle with slices,
nn.ChannelShuffle with torch.split, einops)."""

import collections
import copy
import gc
import importlib
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import shufflenet_ops as so
from shufflenet_ops import count_flops, models
from shufflenet_ops.functional import interleave, split_interleave
from shufflenet_ops.fuse import fused_cat_shuffle, fused_convs
from shufflenet_ops.models import ShuffleNetV2, shufflenet_v2
from shufflenet_ops.models.shufflenet_v2 import STAGE_OUT_CHANNELS, InvertedResidual

from _helpers import (
    FORMATS,
    OpCalls,
    assert_close,
    assert_same_training,
    randomize_batchnorm,
    requires_extension,
    run_and_backward,
)

try:
    import einops
except ImportError:  # a test extra
    einops = None

pytestmark = requires_extension
DOUBLE = torch.float64
# The module (models.shufflenet_v2 is the function of that name).
shufflenet_v2_module = importlib.import_module("shufflenet_ops.models.shufflenet_v2")
UNIT_V2_OP = torch.ops.shufflenet_ops.shuffle_unit_v2.default


# ---------------------------------------------------------- torchvision's structure
# Written from torchvision.models.shufflenetv2 (not imported: torchvision is not a
# dependency): the naive reference whose state_dict the package's model must load.
def tv_channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


class TVInvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch_features = oup // 2
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if self.stride > 1 else branch_features, branch_features, kernel_size=1, stride=1,
                      padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3, stride=self.stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False):
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return tv_channel_shuffle(out, 2)


class TVShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats, stages_out_channels, num_classes=1000, inverted_residual=TVInvertedResidual):
        super().__init__()
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = self._stage_out_channels[0]
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 3, 2, 1, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(
            ["stage2", "stage3", "stage4"], stages_repeats, self._stage_out_channels[1:]
        ):
            seq = [inverted_residual(input_channels, output_channels, 2)]
            for _ in range(repeats - 1):
                seq.append(inverted_residual(output_channels, output_channels, 1))
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = self._stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        return self.fc(x)


def tv_shufflenet_v2(width_mult: float, num_classes: int = 1000, inverted_residual=TVInvertedResidual) -> TVShuffleNetV2:
    return TVShuffleNetV2([4, 8, 4], list(STAGE_OUT_CHANNELS[width_mult]), num_classes, inverted_residual)


def _torchvision_and_package(width_mult, fused=True, dtype=DOUBLE, num_classes=10):
    torch.manual_seed(0)
    tv = randomize_batchnorm(tv_shufflenet_v2(width_mult, num_classes)).to(dtype)
    model = shufflenet_v2(width_mult, num_classes, fused=fused).to(dtype)
    model.load_state_dict(tv.state_dict())  # strict: every key, no more
    return tv, model


def _same_in_train_and_eval(reference, model, x):
    for train in (True, False):
        reference.train(train)
        model.train(train)
        assert_same_training(reference, model, x)  # train: the running statistics moved the same way


# ------------------------------------------------------------------ architecture
@pytest.mark.parametrize("width_mult", sorted(STAGE_OUT_CHANNELS))
@pytest.mark.parametrize("fused", [True, False])
def test_state_dict_keys_and_shapes_are_torchvisions(width_mult, fused):
    tv_state = tv_shufflenet_v2(width_mult).state_dict()
    state = shufflenet_v2(width_mult, fused=fused).state_dict()
    assert list(state) == list(tv_state)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in tv_state.items()}
    tv_names = [name for name, _ in tv_shufflenet_v2(width_mult).named_modules()]
    assert [name for name, _ in shufflenet_v2(width_mult, fused=fused).named_modules()] == tv_names


def test_table5_widths():
    for width, (conv1, s2, s3, s4, conv5) in STAGE_OUT_CHANNELS.items():
        model = shufflenet_v2(width)
        assert model.conv1[0].out_channels == conv1 and model.conv5[0].out_channels == conv5
        for stage, repeats, channels in zip((model.stage2, model.stage3, model.stage4), (4, 8, 4), (s2, s3, s4)):
            assert [unit.stride for unit in stage] == [2] + [1] * (repeats - 1)
            assert all(unit.branch2[5].out_channels == channels // 2 for unit in stage)
        assert model.fc.in_features == conv5


# ---------------------------------------------------- fused vs torchvision's code
@pytest.mark.parametrize("width_mult", sorted(STAGE_OUT_CHANNELS))
def test_torchvision_state_dict_same_outputs_and_gradients_train_and_eval(width_mult):
    """Batch 1 at an odd size: 1x3x67x45 (Stage 4 at 3x2, so train-mode BN has 6 values)."""
    tv, model = _torchvision_and_package(width_mult)
    x = torch.randn(1, 3, 67, 45, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
    _same_in_train_and_eval(tv, model, x)


@pytest.mark.parametrize("width_mult", sorted(STAGE_OUT_CHANNELS))
def test_float32_within_torchs_own_float32_error(width_mult):
    """float32 against the float64 torchvision model. Eval: logits within 1e-4. Train:
    batch statistics over few values make the gradients ill-conditioned (torch's own
    float32 model misses the float64 input gradient by about its size here), so the fused
    model's error in the logits, the input gradient and every parameter gradient must be
    at most twice torch's own float32 error (plus a floor at 1e-6 of the largest one)."""
    tv, model = _torchvision_and_package(width_mult, dtype=torch.float32)
    tv64, _ = _torchvision_and_package(width_mult, dtype=DOUBLE)
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    for m in (tv, model, tv64):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), tv64(x.double()), rtol=1e-4, atol=1e-4)
    for m in (tv, model, tv64):
        m.train()
    reference = run_and_backward(tv64, x.double())
    naive, fused = run_and_backward(tv, x), run_and_backward(model, x)
    pairs = [("logits", fused[0], naive[0], reference[0]), ("grad input", fused[1], naive[1], reference[1])]
    pairs += [(name, p.grad, q.grad, r.grad) for (name, p), q, r in
              zip(model.named_parameters(), tv.parameters(), tv64.parameters())]
    # The floor's scale is the largest gradient: some gradients are 0 in exact arithmetic
    # (a BN bias before a train-mode BN), and float32 leaves noise there.
    scale = max(expected.abs().max().item() for _, _, _, expected in pairs)
    for name, got, torch_own, expected in pairs:
        error = (got.double() - expected).abs().max().item()
        torch_error = (torch_own.double() - expected).abs().max().item()
        assert error <= 2 * torch_error + 1e-6 * scale, (name, error, torch_error)


@pytest.mark.parametrize("size", [(32, 32), (17, 23), (1, 1)])
def test_small_inputs_down_to_1x1_feature_maps(size):
    """Stage 4 at 1x1 (a (N, C, 1, 1) tensor is both NCHW and channels_last)."""
    tv, model = _torchvision_and_package(0.5)
    x = torch.randn(2, 3, *size, dtype=DOUBLE)
    for m in (tv, model):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def test_naive_model_is_torchvisions_code_exactly():
    tv, model = _torchvision_and_package(0.5, fused=False)
    x = torch.randn(2, 3, 33, 41, dtype=DOUBLE)
    for train in (True, False):
        tv.train(train)
        model.train(train)
        with torch.no_grad():
            assert torch.equal(model(x), tv(x))


def test_package_state_dict_loads_into_torchvisions_structure():
    torch.manual_seed(1)
    model = randomize_batchnorm(shufflenet_v2(0.5, 10)).to(DOUBLE).eval()
    tv = tv_shufflenet_v2(0.5, 10).to(DOUBLE).eval()
    tv.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 40, 40, dtype=DOUBLE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))


def test_eval_runs_each_unit_as_one_op_and_folds_the_rest(monkeypatch):
    """In inference each unit is one shuffle_unit_v2 call; with a gradient needed (eval BNs,
    parameters requiring grad) every 1x1 conv runs through the fused conv op with its BN
    folded and its ReLU in the epilogue. Either way no nn.Conv2d or nn.BatchNorm2d module is
    called."""
    _, model = _torchvision_and_package(0.5, dtype=torch.float32)
    model.eval()
    calls = []
    original = so.functional.group_conv1x1_shuffle

    def spy(x, weight, groups, bias=None, shuffle_groups=None, relu=False, residual=None, interleave_with=None):
        calls.append((groups, shuffle_groups, relu, bias is not None))
        return original(x, weight, groups, bias=bias, shuffle_groups=shuffle_groups, relu=relu, residual=residual,
                        interleave_with=interleave_with)

    monkeypatch.setattr("shufflenet_ops.modules.conv_bn.functional.group_conv1x1_shuffle", spy)
    module_calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: module_calls.append(type(m).__name__))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), OpCalls() as ops:
        model(x)
    assert sum(op == UNIT_V2_OP for op in ops.ops) == 16
    assert calls == [(1, 1, True, True)]  # conv5
    calls.clear()
    with OpCalls() as ops:
        model(x).sum().backward()
    assert UNIT_V2_OP not in ops.ops
    for hook in hooks:
        hook.remove()
    pointwise = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))
    assert len(calls) == pointwise == 2 * 16 + 3 + 1  # two per unit, branch1 of 3 stride-2 units, conv5
    assert set(calls) == {(1, 1, True, True)}
    assert module_calls == []


# ---------------------------------------------------------------------------- units
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("train", [True, False])
def test_unit_matches_torchvision_unit(stride, fmt, train):
    inp, oup = (24, 48) if stride == 2 else (48, 48)
    torch.manual_seed(0)
    tv = randomize_batchnorm(TVInvertedResidual(inp, oup, stride)).to(DOUBLE).train(train)
    unit = InvertedResidual(inp, oup, stride, fused=True).to(DOUBLE).train(train)
    unit.load_state_dict(tv.state_dict())
    x = torch.randn(1, inp, 13, 7, dtype=DOUBLE).contiguous(memory_format=FORMATS[fmt])
    y = assert_same_training(tv, unit, x)
    assert y.shape == (1, oup, 13 if stride == 1 else 7, 7 if stride == 1 else 4)
    if fmt == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_interleave_is_cat_then_shuffle_in_one_copy(fmt):
    a = torch.randn(2, 6, 5, 3).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    b = torch.randn(2, 6, 5, 3).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    out = interleave(a, b)
    expected = torch.channel_shuffle(torch.cat((a, b), 1), 2)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=FORMATS[fmt])
    go = torch.randn_like(out)
    ga, gb = torch.autograd.grad(out, (a, b), go)
    assert torch.equal(ga, go[:, 0::2]) and torch.equal(gb, go[:, 1::2])
    x = torch.randn(1, 12, 4, 4).contiguous(memory_format=FORMATS[fmt])
    x1, x2 = x.chunk(2, dim=1)  # a channel slice as the first operand (a stride-1 unit)
    assert torch.equal(interleave(x1, x2 * 2), tv_channel_shuffle(torch.cat((x1, x2 * 2), 1), 2))
    for bad in (x2[:, :5], x2.double(), x2[0]):
        with pytest.raises(ValueError, match="interleave expects two 4-D tensors of the same shape"):
            interleave(bad, bad if bad.dim() == 3 else x2)


# ---------------------------------------------------------------------------- flops
# ShuffleNet V2 paper, Table 5: complexity (MFLOPs, multiply-adds) at 224x224.
TABLE5_MFLOPS = {0.5: 41, 1.0: 146, 1.5: 299, 2.0: 591}


@pytest.mark.parametrize("width_mult", sorted(TABLE5_MFLOPS))
def test_count_flops_matches_table5(width_mult):
    flops = count_flops(shufflenet_v2(width_mult), (1, 3, 224, 224))
    # Within 2% of the paper's value (the whole network, FC included).
    assert flops["total"] / 1e6 == pytest.approx(TABLE5_MFLOPS[width_mult], rel=0.02)
    naive = count_flops(shufflenet_v2(width_mult, fused=False), (1, 3, 224, 224))
    assert naive == flops
    assert count_flops(tv_shufflenet_v2(width_mult), (1, 3, 224, 224)) == flops


# ---------------------------------------------------------------------------- fuse()
# V2 units written other ways than torchvision's (same branches, same state_dict).
class SlicingUnit(TVInvertedResidual):
    """torch.channel_shuffle; the halves as slices x[:, :c], x[:, c:]."""

    def forward(self, x):
        if self.stride == 1:
            c = x.shape[1] // 2
            out = torch.cat([x[:, :c], self.branch2(x[:, c:])], dim=1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return torch.channel_shuffle(out, 2)


class SplitUnit(TVInvertedResidual):
    """An nn.ChannelShuffle(2) layer (no state: the state_dict is torchvision's); torch.split."""

    def __init__(self, inp, oup, stride):
        super().__init__(inp, oup, stride)
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = torch.split(x, x.size(1) // 2, dim=1)
            return self.shuffle(torch.cat((x1, self.branch2(x2)), 1))
        return self.shuffle(torch.cat((self.branch1(x), self.branch2(x)), 1))


class EinopsUnit(TVInvertedResidual):
    """einops.rearrange as the shuffle; Tensor.split."""

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.split(x.shape[1] // 2, 1)
            out = torch.concat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.concat((self.branch1(x), self.branch2(x)), dim=1)
        return einops.rearrange(out, "b (g c) h w -> b (c g) h w", g=2)


V2_WRITINGS = [
    pytest.param(TVInvertedResidual, id="torchvision"),
    pytest.param(SlicingUnit, id="channel_shuffle-slices"),
    pytest.param(SplitUnit, id="ChannelShuffle-split"),
    pytest.param(EinopsUnit, id="einops-split", marks=pytest.mark.skipif(einops is None, reason="einops not installed")),
]


def _fused_v2(unit, dtype=DOUBLE):
    """(naive, fuse(naive)) for V2 0.5x written with ``unit``; fuse() must see all of it."""
    torch.manual_seed(0)
    naive = randomize_batchnorm(tv_shufflenet_v2(0.5, 10, unit)).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", so.FuseWarning)
        return naive, so.fuse(naive)


class _ComputeOps(TorchDispatchMode):
    """Records each non-view op that runs: (op, output shape, output channels_last), of its
    first output if it returns several."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            first = out[0] if isinstance(out, (tuple, list)) else out  # batch norm: (y, mean, invstd, ...)
            self.calls.append((str(func.overloadpacket), tuple(first.shape),
                               first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)))
        return out


def _compute_ops(model, x, grad=False):
    """The ops of ``model(x)`` after a first call (that filled the caches); ``grad``: with
    gradients enabled (the parameters require them: the per-op path, folding per call)."""
    with torch.set_grad_enabled(grad):
        model(x)
        with _ComputeOps() as recorded:
            model(x)
    return recorded.calls


@pytest.mark.parametrize("unit", V2_WRITINGS)
def test_fuse_of_v2_code_same_outputs_and_gradients(unit):
    """fuse() of V2 code against the code itself: train (outputs, input and parameter
    gradients, running statistics) and eval, batch 1 at an odd size, NCHW and channels_last."""
    naive, fused = _fused_v2(unit)
    reference = copy.deepcopy(naive)  # fuse() worked on a copy: naive is untouched
    x = torch.randn(1, 3, 67, 45, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
    _same_in_train_and_eval(reference, fused, x)
    with torch.no_grad():
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), reference(x))


@pytest.mark.parametrize("unit", V2_WRITINGS)
def test_fuse_of_v2_code_runs_what_the_package_model_runs(unit):
    """In eval the fuse()d model runs the ops of shufflenet_v2(fused=True), in the same order
    on the same shapes and memory formats (given channels_last input, as the package's model
    makes it on CPU): each unit one fused_unit_v2 call, in inference one shuffle_unit_v2 op
    (16), the stem (``fused_stem``) its 3x3 conv + BN as one F.conv2d and its ReLU + max pool
    as one op, conv5 + BN + ReLU one fused conv. With a gradient needed each unit runs op by op, as the package's
    model does: each 1x1 conv + BN + ReLU one fused conv (36 at any width: two per unit,
    branch1 of the 3 stride-2 units, conv5), each 3x3 conv + BN one F.conv2d (20: the stem
    and the depthwise convs), each unit's cat + shuffle written by its last 1x1 conv
    (``interleave_with``: no interleaving copy, no torch.stack), the chunk a view. Either way
    not a cat, a shuffle, a BN or a ReLU of their own.
    ``fused_convs`` lists the convs as the per-op path runs them."""
    naive, fused = _fused_v2(unit, torch.float32)
    sites = fused_convs(fused)
    pointwise = {name for name, m in naive.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)}
    on_op = {name: s for name, s in sites.items() if s.kernel == "conv1x1_shuffle"}
    assert set(on_op) == pointwise and len(pointwise) == 36
    for name, s in on_op.items():
        assert (s.bn, s.relu, s.input_shuffle, s.output_shuffle, s.residual) == (name[:-1] + str(int(name[-1]) + 1),
                                                                                  True, 1, 1, False)
    others = {name for name, m in naive.named_modules() if isinstance(m, nn.Conv2d)} - pointwise
    assert {name for name, s in sites.items() if s.kernel == "conv2d_bn"} == others and len(others) == 20
    code = fused.forward.code
    assert code.count("fused_unit_v2(") == 16 and code.count("fused_stem(") == 1  # conv1 + BN + ReLU + pool
    assert code.count("fused_conv1x1(") == 1 and code.count("fused_conv_bn(") == 0  # conv5
    for written in ("cat(", "concat(", "channel_shuffle", "transpose", "rearrange", ".shuffle", "relu(self", "view(",
                    "chunk(", "split(", "getitem"):
        assert written not in code, written

    package = shufflenet_v2(0.5, 10).eval()
    package.load_state_dict(naive.state_dict())
    fused.eval()
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    ops = _compute_ops(fused, x)
    assert ops == _compute_ops(package, x)
    names = [op for op, _, _ in ops]
    assert names.count("shufflenet_ops.shuffle_unit_v2") == 16
    assert names.count("shufflenet_ops.group_conv1x1_shuffle") == 1 and "aten.stack" not in names
    assert "aten.cat" not in names and "aten.clone" not in names and "aten.relu" not in names

    ops = _compute_ops(fused, x, grad=True)
    assert ops == _compute_ops(package, x, grad=True)
    names = [op for op, _, _ in ops]
    assert names.count("shufflenet_ops.group_conv1x1_shuffle") == 36 and "aten.stack" not in names
    assert "shufflenet_ops.shuffle_unit_v2" not in names
    assert "aten.cat" not in names and "aten.clone" not in names and "aten.relu" not in names


def test_fuse_of_v2_code_in_train_mode_runs_torchs_convs():
    """Train mode, as shufflenet_v2(fused=True) trains: the BN between each conv and its ReLU
    keeps the convs apart, so every conv runs as torch's (its backward is the faster one for
    V2's large ungrouped 1x1 convs), each BN with its ReLU as one op, the stem's BN, ReLU and
    pool as one op; the cat + shuffle is one interleave op."""
    _, fused = _fused_v2(TVInvertedResidual, torch.float32)
    fused.train()
    with _ComputeOps() as recorded:
        fused(torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last))
    names = [op for op, _, _ in recorded.calls]
    assert names.count("aten.convolution") == 56 and names.count("shufflenet_ops.interleave") == 16
    assert "shufflenet_ops.group_conv1x1_shuffle" not in names and "aten.cat" not in names
    assert "aten.stack" not in names
    # as the package's model trains: every BN (and the ReLU after it) one op, the stem's BN,
    # ReLU and pool one op; no aten BN, ReLU or pool
    assert names.count("shufflenet_ops.batch_norm_relu") == 55  # 13 * 3 + 3 * 5 unit BNs, conv5's
    assert names.count("shufflenet_ops.batch_norm_relu_max_pool3x3s2") == 1
    assert not [n for n in names if n in ("aten.native_batch_norm", "aten.relu", "aten.max_pool2d_with_indices")]


@pytest.mark.parametrize("unit", V2_WRITINGS)
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_fuse_of_v2_code_same_outputs_in_inference(unit, fmt):
    """Eval without gradients, float64 and float32, batch 1 and 3 at odd sizes: the code's own
    outputs, each unit one shuffle_unit_v2 op where it applies (channels_last: all 16; NCHW:
    the 3 stride-2 units, the stride-1 ones op by op, as the package's units do)."""
    naive, fused = _fused_v2(unit)
    naive.eval()
    fused32 = copy.deepcopy(fused).float().eval()
    fused.eval()
    generator = torch.Generator().manual_seed(3)
    for batch, size in ((1, (45, 67)), (3, (33, 19))):
        x = torch.randn(batch, 3, *size, generator=generator, dtype=DOUBLE).contiguous(memory_format=FORMATS[fmt])
        with torch.no_grad():
            expected = naive(x)
            for model, dtype in ((fused, DOUBLE), (fused32, torch.float32)):
                with OpCalls() as calls:
                    y = model(x.to(dtype))
                assert calls.ops.count(UNIT_V2_OP) == (16 if fmt == "channels_last" else 3)
                assert_close(y, expected, dtype)


class VariantUnit(TVInvertedResidual):
    """Stride-1 V2 code written other ways. Still the V2 unit: "shape-checks" (shape queries of
    values the whole-unit call no longer computes). Not it, so op by op: "same-half" (x1 is
    the second half too), "even-odd" (even and odd channels, not halves), "swapped" (the
    branch first in the cat), "relu6" (not a ReLU after branch2)."""

    def __init__(self, channels, variant):
        super().__init__(channels, channels, 1)
        self.variant = variant
        if variant == "relu6":
            self.branch2[7] = nn.ReLU6()

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        if self.variant == "same-half":
            x1 = x[:, c:]
        elif self.variant == "even-odd":
            x1, x2 = x[:, 0::2], x[:, 1::2]
        y = x2
        for index, layer in enumerate(self.branch2):
            y = layer(y)
            if self.variant == "shape-checks" and index in (2, 4):  # the compress and depthwise outputs
                torch._assert(y.size(1) == self.branch2[0].out_channels, "bottleneck width")
        if self.variant == "shape-checks":
            torch._assert(y.shape == x1.shape, "branch2 keeps x1's shape")
        return tv_channel_shuffle(torch.cat((y, x1) if self.variant == "swapped" else (x1, y), 1), 2)


@pytest.mark.parametrize("variant", ["shape-checks", "same-half", "even-odd", "swapped", "relu6"])
def test_fuse_of_v2_unit_variants(variant):
    """After a torchvision stride-2 unit (one fused_unit_v2 call), a variant: one more call
    if it is the V2 unit, else its ops as today (the cat + shuffle still one copy); either
    way the code's outputs, in inference and in training with gradients."""
    torch.manual_seed(0)
    naive = randomize_batchnorm(nn.Sequential(TVInvertedResidual(24, 48, 2), VariantUnit(48, variant))).to(DOUBLE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", so.FuseWarning)
        fused = so.fuse(naive)
    units = 2 if variant == "shape-checks" else 1
    code = fused.forward.code
    assert code.count("fused_unit_v2(") == units and code.count("fused_cat_shuffle(") == 2 - units
    x = torch.randn(3, 24, 13, 11, dtype=DOUBLE).contiguous(memory_format=torch.channels_last)
    naive.eval()
    fused.eval()
    with torch.no_grad(), OpCalls() as calls:
        y = fused(x)
    assert calls.ops.count(UNIT_V2_OP) == units
    with torch.no_grad():
        assert_close(y, naive(x), DOUBLE)
    naive.train()
    fused.train()
    assert_same_training(naive, fused, x)


def test_fuse_of_v2_code_caches_each_unit_until_a_weight_changes(monkeypatch):
    """Each unit's folded, packed arguments are computed once and reused, again after an
    in-place change of a weight or a BN statistic (that unit only), and never keep the
    model alive."""
    naive, fused = _fused_v2(TVInvertedResidual)
    naive.eval()
    fused.eval()
    packs = []
    pack = shufflenet_v2_module._pack_unit
    monkeypatch.setattr(shufflenet_v2_module, "_pack_unit", lambda pairs, stride: packs.append(stride) or pack(pairs, stride))
    x = torch.randn(1, 3, 45, 37, dtype=DOUBLE).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused(x)
        fused(x)
        assert packs == [2, 1, 1, 1, 2, *[1] * 7, 2, 1, 1, 1]  # once per unit
        for model in (naive, fused):
            model.stage3[0].branch1[2].weight.mul_(-1)  # branch1's 1x1 conv
            model.stage2[1].branch2[4].running_var.add_(0.5)  # a depthwise conv's BN
        y = fused(x)
        assert len(packs) == 18
        assert_close(y, naive(x), DOUBLE)
    alive = weakref.ref(fused)
    del fused, model
    gc.collect()
    assert alive() is None


class ConcatShuffles(nn.Module):
    """A grouped conv (a ShuffleNet graph), then cat + shuffle pairs that are no V2 ending."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1, groups=2)

    def forward(self, a, b):
        y = torch.channel_shuffle(self.conv(a), 2)  # a V1 site, fused
        unequal = tv_channel_shuffle(torch.cat((y, b), 1), 2)  # 8 + 4 channels: rewritten, exact
        three = torch.channel_shuffle(torch.cat((y, b), 1), 3)  # 3 groups: left alone (reported)
        both = torch.cat((y, a), 1)  # the concat read twice: left alone
        return unequal, three, tv_channel_shuffle(both, 2) + both


def test_concat_shuffles_that_do_not_interleave():
    model = ConcatShuffles().to(DOUBLE)
    with pytest.warns(so.FuseWarning, match="channel shuffle not next to a fusable 1x1 conv"):
        fused = so.fuse(model)
    code = fused.forward.code
    assert code.count("fused_cat_shuffle(") == 1 and code.count("cat(") == 2
    assert code.count("channel_shuffle(") == 1 and code.count("transpose(") == 1
    a, b = torch.randn(2, 8, 3, 5, dtype=DOUBLE), torch.randn(2, 4, 3, 5, dtype=DOUBLE)
    for got, expected in zip(fused(a, b), model(a, b)):
        assert_close(got, expected, DOUBLE)
    assert torch.equal(fused_cat_shuffle(a, a * 2), interleave(a, a * 2))
    assert torch.equal(fused_cat_shuffle(a, b), tv_channel_shuffle(torch.cat((a, b), 1), 2))


# ------------------------------------------------------------------------ arguments
def test_bad_arguments():
    with pytest.raises(ValueError, match="width_mult must be one of"):
        shufflenet_v2(0.75)
    with pytest.raises(ValueError, match="num_classes"):
        shufflenet_v2(num_classes=0)
    with pytest.raises(ValueError, match="stages_out_channels"):
        ShuffleNetV2((4, 8, 4), (24, 48, 96))
    with pytest.raises(ValueError, match="stride"):
        InvertedResidual(24, 48, 3)
    with pytest.raises(ValueError, match="inp"):
        InvertedResidual(24, 48, 1)
    assert models.shufflenet_v2 is shufflenet_v2 and isinstance(shufflenet_v2(0.5).stage2[0], InvertedResidual)


# ------------------------------------------------------------- the per-op path's halves
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("channels", [6, 5])
def test_split_interleave_is_interleave_then_chunk(channels, fmt):
    """Values as interleave(a, b).chunk(2, 1), gradients by gradcheck (float64), dense
    gradients in the layout of the halves' gradients; an odd channel count falls back to
    the chunk (its halves hold unequal shares of a and b)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(2, channels, 3, 4, generator=gen, dtype=torch.float64).to(memory_format=fmt).requires_grad_()
            for _ in range(2))
    halves = split_interleave(a, b)
    expected = interleave(a, b).chunk(2, 1)
    assert all(torch.equal(h, e) for h, e in zip(halves, expected))
    assert torch.autograd.gradcheck(split_interleave, (a, b))
    grads = torch.autograd.grad(halves, (a, b), [torch.randn_like(h).contiguous(memory_format=fmt) for h in halves])
    assert all(g.is_contiguous(memory_format=fmt) for g in grads)


def test_training_units_hand_over_halves():
    """In a training step each stride-1 unit takes the halves of the unit before it: no
    chunk (SplitBackward0) in the graph, one split_interleave per stride-1 unit, and the
    gradients and running statistics of the naive model (float64)."""
    torch.manual_seed(0)
    naive = shufflenet_v2(0.5, num_classes=10, fused=False).double().train()
    fused = shufflenet_v2(0.5, num_classes=10, fused=True).double().train()
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    out = copy.deepcopy(fused)(x)  # (a copy: the call updates running statistics)
    nodes, stack = collections.Counter(), [out.grad_fn]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes[type(node).__name__] += 1
        stack.extend(next_node for next_node, _ in node.next_functions)
    assert nodes["SplitBackward0"] == 0 and nodes["_SplitInterleaveBackward"] == 13  # 3 + 7 + 3 stride-1 units
    assert_same_training(naive, fused, x)
