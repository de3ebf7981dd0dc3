"""The whole-unit V2 inference op (shuffle_unit_v2) against the naive unit (torchvision's
code: chunk, cat, reshape-transpose shuffle).

Every distinct unit of ShuffleNet V2 (widths 0.5x-2x, stride 1 and 2) at odd sizes, batch 1
and 16, NCHW and channels_last, strided views, special values, thread counts, and the model's and unit's choice of path. opcheck, the reference on
the spec's samples and one bad call per argument run for every op in test_registration.py
and test_errors.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import shufflenet_ops as so
from shufflenet_ops.models.shufflenet_v2 import STAGE_OUT_CHANNELS, InvertedResidual
from shufflenet_ops.ops.shuffle_unit_v2 import SHUFFLE_UNIT_V2

from _helpers import (
    FORMATS,
    OpCalls,
    assert_close,
    randomize_batchnorm,
    requires_extension,
    results_per_thread_count,
    run_fused_unit,
)

pytestmark = requires_extension
UNIT_OP = torch.ops.shufflenet_ops.shuffle_unit_v2.default


def v2_units(width_mult: float) -> list[tuple[int, int, int]]:
    """``(inp, oup, stride)`` of every distinct unit of the net at ``width_mult``."""
    stem, *stages, _ = STAGE_OUT_CHANNELS[width_mult]
    units, inp = [], stem
    for width in stages:
        units += [(inp, width, 2), (width, width, 1)]
        inp = width
    return units


UNIT_CASES = [(width, *unit) for width in STAGE_OUT_CHANNELS for unit in v2_units(width)]


def unit_pair(inp, oup, stride, seed=0, dtype=torch.float64):
    """A fused unit (eval, ``dtype``) and the naive unit (float64) with the same state, BN
    statistics randomised."""
    torch.manual_seed(seed)
    naive = randomize_batchnorm(InvertedResidual(inp, oup, stride, fused=False), seed)
    fused = InvertedResidual(inp, oup, stride, fused=True)
    fused.load_state_dict(naive.state_dict())
    return fused.to(dtype).eval(), naive.double().eval()


def run_unit(fused, x):
    return run_fused_unit(fused, x, UNIT_OP)


@pytest.mark.parametrize("width,inp,oup,stride", UNIT_CASES,
                         ids=[f"{c[0]}x-{c[1]}-{c[2]}-s{c[3]}" for c in UNIT_CASES])
def test_every_v2_unit_matches_the_naive_unit(width, inp, oup, stride):
    fused, naive = unit_pair(inp, oup, stride)
    x = torch.randn(1, inp, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = naive(x)
    assert_close(run_unit(fused, x), expected, torch.float64)
    assert_close(run_unit(fused.float(), x.float()), expected, torch.float32)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("size", [(7, 7), (13, 17), (1, 1), (2, 9)])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_sizes_batches_and_layouts(fmt, size, batch, stride):
    inp, oup = (48, 48) if stride == 1 else (24, 40)
    fused, naive = unit_pair(inp, oup, stride, seed=1)
    x = torch.randn(batch, inp, *size, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    with torch.no_grad():
        expected = naive(x)
    for dtype in (torch.float64, torch.float32):
        y = run_unit(fused.to(dtype), x.to(dtype))
        assert_close(y, expected, dtype, f"{fmt} {size} batch {batch}")
        assert y.is_contiguous(memory_format=FORMATS[fmt]), "output not in the input's layout"


@pytest.mark.parametrize("stride", [1, 2])
def test_strided_input_views(stride):
    """Batch slices of a channels_last tensor, a channel slice (pixels wider apart than the
    channel count: stride 2 makes it dense for branch1's depthwise conv) and a non-contiguous
    NCHW view run in place or through one copy, with the same result."""
    fused, naive = unit_pair(48, 48, stride, seed=2)
    base = torch.randn(5, 64, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    views = (base[1:4, :48], base[::2, 16:], base[:2, 8:56, 1:, ::2],
             torch.randn(2, 48, 9, 22, dtype=torch.float64)[..., ::2])
    for x in views:
        with torch.no_grad():
            expected = naive(x)
        assert_close(run_unit(fused, x), expected, torch.float64)
        assert_close(run_unit(fused.float(), x.float()), expected, torch.float32)
        fused.double()


def test_op_reads_x2_in_place_and_interleaves():
    """The op's index math on a hand-made unit: identity-like weights make branch2 return
    relu(x2), so the output's odd channels are relu(x2) and the even ones x1 (unchanged,
    negative values included: x1 passes through without a ReLU)."""
    c = 20  # not a multiple of 16: the vector loops' masked tails
    x = torch.randn(2, 2 * c, 5, 6).contiguous(memory_format=torch.channels_last)
    eye = so.pack_pointwise_weight(torch.eye(c).reshape(c, c, 1, 1), 1)
    centre = torch.zeros(c, 1, 3, 3)
    centre[:, 0, 1, 1] = 1.0
    zeros = torch.zeros(c)
    y = so.shuffle_unit_v2(x, eye, zeros, centre, zeros, eye, zeros)
    assert torch.equal(y[:, 0::2], x[:, :c]) and torch.equal(y[:, 1::2], x[:, c:].relu())


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("stride", [1, 2])
def test_special_values_match_the_naive_unit(value, stride):
    """A NaN or inf in x (in x1, which passes through, and in x2, which goes through branch2)
    spreads as in the naive unit: the same NaN positions, the same infinities, equal finite
    values."""
    inp, oup = (24, 24) if stride == 1 else (24, 48)
    fused, naive = unit_pair(inp, oup, stride, seed=4)
    x = torch.randn(1, inp, 8, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x[0, 5, 3, 4] = value
    x[0, 17, 6, 2] = value
    with torch.no_grad():
        expected = naive(x)
    for dtype in (torch.float64, torch.float32):
        y = run_unit(fused.to(dtype), x.to(dtype)).double()
        assert torch.equal(y.isnan(), expected.isnan()), f"{dtype}: NaN positions differ"
        assert torch.equal(y.isinf(), expected.isinf()) and torch.equal(y[y.isinf()], expected[expected.isinf()])
        finite = expected.isfinite()
        assert_close(y[finite], expected[finite], dtype)


@pytest.mark.parametrize("stride", [1, 2])
def test_thread_counts_give_identical_results(stride):
    """Bands (and their halo rows, recomputed at band edges) change with the thread count,
    never the arithmetic: bitwise equal results."""
    fused, _ = unit_pair(96, 96, stride, seed=5, dtype=torch.float32)
    x = torch.randn(1, 96, 15, 13).contiguous(memory_format=torch.channels_last)
    results = results_per_thread_count(lambda: run_unit(fused, x))
    assert all(torch.equal(results[0], r) for r in results[1:])


# The portable (non-AVX-512) loops: test_shuffle_unit.py::test_portable_loops_without_avx512
# runs both unit ops' samples there.


# ----------------------------------------------------------------- the module's path
def test_unit_takes_the_per_op_path_when_it_must():
    """A gradient through an eval unit, a backend other than cpp, training, float16 and
    replaced layers all run op by op (with their usual results); the whole-unit op never
    records a graph."""
    fused, naive = unit_pair(24, 24, 1, seed=6)
    x = torch.randn(2, 24, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    with OpCalls() as calls:
        y = fused(x)  # eval, but grad mode on and parameters requiring grad
    assert UNIT_OP not in calls.ops
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert_close(y.detach(), naive(x), torch.float64)
        with so.backend("reference"), OpCalls() as calls:
            fused(x)
        assert UNIT_OP not in calls.ops
        fused.branch2[7] = nn.Hardtanh(0.0, 0.5)  # no longer the op's ReLU
        naive.branch2[7] = nn.Hardtanh(0.0, 0.5)
        with OpCalls() as calls:
            assert_close(fused(x), naive(x), torch.float64)
        assert UNIT_OP not in calls.ops
        half = fused.half()
        with OpCalls() as calls:
            half(x.half())
        assert UNIT_OP not in calls.ops
    fused.double().train()
    with torch.no_grad(), OpCalls() as calls:
        fused(x)
    assert UNIT_OP not in calls.ops


def test_cache_follows_parameter_changes_eps_and_replaced_data():
    """The folded, packed weights are cached; an in-place change of a BN statistic or a
    weight, ``.data =``, a BN's eps, and load_state_dict are all seen by the next call."""
    fused, naive = unit_pair(24, 48, 2, seed=7)
    x = torch.randn(1, 24, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        run_unit(fused, x)
        for module in (fused, naive):
            module.branch2[4].running_var.mul_(3.0)
            module.branch1[2].weight.add_(0.5)
        assert_close(run_unit(fused, x), naive(x), torch.float64)
        for module in (fused, naive):
            module.branch2[5].weight.data = module.branch2[5].weight.data * 2
            module.branch1[1].eps = 0.5
        assert_close(run_unit(fused, x), naive(x), torch.float64)
        state = {k: v + 0.25 if v.is_floating_point() and "running_var" not in k else v
                 for k, v in naive.state_dict().items()}
        naive.load_state_dict(state)
        fused.load_state_dict(state)
        assert_close(run_unit(fused, x), naive(x), torch.float64)


# A call that needs a graph is refused: test_shuffle_unit.py::test_a_call_that_needs_a_graph_raises
# covers both unit ops.


def test_fused_model_runs_every_unit_as_one_op_and_hooked_units_as_modules():
    """The model calls the units' op directly (one check per forward); a unit or stage with a
    hook, or a global hook, is called as a module, so that the hook runs."""
    model = randomize_batchnorm(so.models.shufflenet_v2(0.5, num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), OpCalls() as calls:
        y = model(x)
    assert calls.ops.count(UNIT_OP) == 16
    seen = []
    handles = [model.stage3[2].register_forward_hook(lambda m, a, out: seen.append("unit")),
               model.stage4.register_forward_pre_hook(lambda m, a: seen.append("stage"))]
    with torch.no_grad(), OpCalls() as calls:
        torch.testing.assert_close(model(x), y)
    assert seen == ["unit", "stage"] and calls.ops.count(UNIT_OP) == 16
    for handle in handles:
        handle.remove()
    global_handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, out: seen.append(type(m)))
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(x), y)
    finally:
        global_handle.remove()
    assert seen.count(InvertedResidual) == 16


def test_public_function_names_bad_arguments():
    args = list(next(iter(SHUFFLE_UNIT_V2.samples())))
    # The schema's defaults are the function's: a stride-1 call needs no branch1 or stride.
    torch.testing.assert_close(torch.ops.shufflenet_ops.shuffle_unit_v2(*args[:7]), so.shuffle_unit_v2(*args[:7]))
    for index, bad, error, message in [
        (11, 2.0, TypeError, r"stride must be an int, got float"),
        (11, True, TypeError, r"stride must be an int, got bool"),
        (3, [1.0], TypeError, r"depthwise_weight must be a torch.Tensor or None, got list"),
        (1, None, TypeError, r"every branch2 weight and bias must be a torch.Tensor"),
    ]:
        with pytest.raises(error, match=message):
            so.shuffle_unit_v2(*args[:index], bad, *args[index + 1:])
    stride2 = list(SHUFFLE_UNIT_V2.samples())[2]
    for index, bad, message in [
        (8, torch.zeros(11, dtype=torch.float64), r"branch1_depthwise_bias must have shape \(12,\)"),
        (9, stride2[9][:, :, :4], r"branch1_pointwise_bias must have shape \(4,\), got \[20\]"),
        ((9, 10), (stride2[9][:, :, :4], stride2[10][:4]), r"branch1's 4 output channels must equal branch2's 20"),
        (7, torch.zeros(12, 1, 3, 2, dtype=torch.float64), r"branch1_depthwise_weight must have shape"),
    ]:
        bad_args = list(stride2)
        for i, value in zip(*((index, bad) if isinstance(index, tuple) else ((index,), (bad,)))):
            bad_args[i] = value
        with pytest.raises(ValueError, match=message):
            so.shuffle_unit_v2(*bad_args)
        with pytest.raises(ValueError, match=message):
            torch.ops.shufflenet_ops.shuffle_unit_v2(*bad_args)


def test_unit_with_replaced_layers_runs_them_as_written():
    """Layers other than the plain ones the fused paths fold (a BN subclass with its own
    forward, a BN replaced by Identity or GroupNorm, a 3x3 conv where a 1x1 one was) are run
    as written, in the unit op's place and on the per-op path, with the naive unit's results."""
    class ScaledBN(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    replacements = [
        ("branch2", 4, lambda: ScaledBN(24)), ("branch2", 4, nn.Identity), ("branch2", 1, lambda: nn.GroupNorm(4, 24)),
        ("branch2", 0, lambda: nn.Conv2d(48, 24, 3, padding=1, bias=False)), ("branch1", 3, lambda: ScaledBN(24)),
    ]
    for branch, index, make in replacements:
        fused, naive = unit_pair(48, 48, 2, seed=8)
        torch.manual_seed(9)
        layer = make().double().eval()
        getattr(naive, branch)[index] = layer
        getattr(fused, branch)[index] = copy.deepcopy(layer)
        x = torch.randn(1, 48, 9, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), OpCalls() as calls:
            expected, y = naive(x), fused(x)
        assert UNIT_OP not in calls.ops, f"{branch}[{index}]"
        assert_close(y, expected, torch.float64, f"{branch}[{index}] = {type(layer).__name__}")
        x.requires_grad_()  # eval with a gradient: the per-op path
        assert_close(fused(x).detach(), naive(x).detach(), torch.float64, f"{branch}[{index}], grad mode")
