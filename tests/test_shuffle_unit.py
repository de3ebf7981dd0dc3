"""The whole-unit inference op (shuffle_unit) against the per-op path and the naive unit.

Every distinct unit of ShuffleNet V1 (g = 1, 2, 3, 4, 8; widths 0.5x-2x; stride 1 and 2) at
odd sizes, batch 1 and 16, NCHW and channels_last, both shuffle conventions, special
values, thread counts, the portable (non-AVX-512) loops, and the module's choice of path.
opcheck, the reference on the spec's samples and one bad call per argument run for every
op in test_registration.py and test_errors.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import shufflenet_ops as so
from shufflenet_ops.models.shufflenet_v1 import GROUPS, stage_channels
from shufflenet_ops.modules import ShuffleUnit
from shufflenet_ops.ops import BY_NAME
from shufflenet_ops.ops.shuffle_unit import SHUFFLE_UNIT, pack_pointwise_weight, unpack_pointwise_weight

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
UNIT_OP = torch.ops.shufflenet_ops.shuffle_unit.default


def v1_units(groups: int, width_mult: float) -> list[tuple[int, int, int, bool]]:
    """``(in_channels, out_channels, stride, grouped_first)`` of every distinct unit of the net."""
    stem, *stages = stage_channels(groups, width_mult)
    units, cin = [], stem
    for index, width in enumerate(stages):
        units.append((cin, width, 2, index > 0))
        units.append((width, width, 1, True))
        cin = width
    return units


UNIT_CASES = [
    (g, width, *unit) for g in GROUPS for width in (0.5, 1.0, 1.5, 2.0) for unit in v1_units(g, width)
]


def unit_pair(cin, cout, groups, stride, grouped_first, seed=0, dtype=torch.float64):
    """A fused unit (eval) and the naive unit with the same state, BN statistics randomised."""
    torch.manual_seed(seed)
    naive = ShuffleUnit(cin, cout, groups, stride, grouped_first, fused=False)
    randomize_batchnorm(naive, seed)
    fused = ShuffleUnit(cin, cout, groups, stride, grouped_first, fused=True)
    fused.load_state_dict(naive.state_dict())
    return fused.to(dtype).eval(), naive.double().eval()


def run_unit(fused, x):
    return run_fused_unit(fused, x, UNIT_OP)


@pytest.mark.parametrize("g,width,cin,cout,stride,grouped_first", UNIT_CASES,
                         ids=[f"g{c[0]}-{c[1]}x-{c[2]}-{c[3]}-s{c[4]}" for c in UNIT_CASES])
def test_every_v1_unit_matches_the_naive_unit(g, width, cin, cout, stride, grouped_first):
    fused, naive = unit_pair(cin, cout, g, stride, grouped_first)
    x = torch.randn(1, cin, 7, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = naive(x)
    assert_close(run_unit(fused, x), expected, torch.float64)
    assert_close(run_unit(fused.float(), x.float()), expected, torch.float32)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("size", [(7, 7), (13, 17), (1, 1), (2, 9)])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("stride", [1, 2])
def test_sizes_batches_and_layouts(fmt, size, batch, stride):
    cin, cout = (48, 48) if stride == 1 else (24, 72)
    fused, naive = unit_pair(cin, cout, 3, stride, True, seed=1)
    x = torch.randn(batch, cin, *size, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    with torch.no_grad():
        expected = naive(x)
    for dtype in (torch.float64, torch.float32):
        y = run_unit(fused.to(dtype), x.to(dtype))
        assert_close(y, expected, dtype, f"{fmt} {size} batch {batch}")
        assert y.is_contiguous(memory_format=FORMATS[fmt]), "output not in the input's layout"


def test_strided_input_views():
    """A batch slice of a channels_last tensor and a non-contiguous NCHW view run in place or
    through one copy, with the same result."""
    fused, naive = unit_pair(48, 48, 4, 1, True, seed=2)
    base = torch.randn(5, 48, 9, 11, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for x in (base[1:4], base[::2], torch.randn(2, 48, 9, 22, dtype=torch.float64)[..., ::2]):
        with torch.no_grad():
            assert_close(run_unit(fused, x), naive(x), torch.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("convention", ["groups", "bottleneck/groups", "none"])
def test_both_shuffle_conventions_on_the_op(stride, convention):
    """The paper's shuffle(., g) and the official code's shuffle(., B/g), and none (g = 1):
    the op against the layer-by-layer reference, float32 and float64."""
    g, cin, bottleneck = 4, 32, 16
    shuffle = {"groups": g, "bottleneck/groups": bottleneck // g, "none": 1}[convention]
    gen = torch.Generator().manual_seed(3)
    branch = cin if stride == 1 else 48
    args = (
        torch.randn(2, cin, 9, 10, generator=gen, dtype=torch.float64),
        pack_pointwise_weight(torch.randn(bottleneck, cin // g, 1, 1, generator=gen, dtype=torch.float64), g),
        torch.randn(bottleneck, generator=gen, dtype=torch.float64),
        torch.randn(bottleneck, 1, 3, 3, generator=gen, dtype=torch.float64),
        torch.randn(bottleneck, generator=gen, dtype=torch.float64),
        pack_pointwise_weight(torch.randn(branch, bottleneck // g, 1, 1, generator=gen, dtype=torch.float64), g),
        torch.randn(branch, generator=gen, dtype=torch.float64),
        shuffle, stride,
    )
    expected = SHUFFLE_UNIT.reference(*args)
    for dtype in (torch.float64, torch.float32):
        cast = tuple(a.to(dtype) if isinstance(a, torch.Tensor) else a for a in args)
        assert_close(so.shuffle_unit(*cast), expected, dtype, convention)


def test_pack_and_unpack_are_inverse():
    w = torch.randn(24, 4, 1, 1)
    packed = pack_pointwise_weight(w, 3)
    assert packed.shape == (3, 4, 8) and packed.is_contiguous()
    assert torch.equal(packed[1, 2, 5], w[1 * 8 + 5, 2, 0, 0])
    assert torch.equal(unpack_pointwise_weight(packed), w)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("stride", [1, 2])
def test_special_values_match_the_naive_unit(value, stride):
    """A NaN or inf pixel of x spreads as in the naive unit: the same NaN positions, the same
    infinities, equal finite values."""
    cin, cout = (24, 24) if stride == 1 else (24, 48)
    fused, naive = unit_pair(cin, cout, 3, stride, True, seed=4)
    x = torch.randn(1, cin, 8, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x[0, 5, 3, 4] = value
    with torch.no_grad():
        expected = naive(x)
    for dtype in (torch.float64, torch.float32):
        y = run_unit(fused.to(dtype), x.to(dtype)).double()
        assert torch.equal(y.isnan(), expected.isnan()), f"{dtype}: NaN positions differ"
        assert torch.equal(y.isinf(), expected.isinf()) and torch.equal(y[y.isinf()], expected[expected.isinf()])
        finite = expected.isfinite()
        assert_close(y[finite], expected[finite], dtype)


def test_thread_counts_give_identical_results():
    """Bands (and their halo rows, recomputed at band edges) change with the thread count,
    never the arithmetic: bitwise equal results."""
    fused, _ = unit_pair(96, 96, 3, 1, True, seed=5, dtype=torch.float32)
    x = torch.randn(1, 96, 15, 13).contiguous(memory_format=torch.channels_last)
    results = results_per_thread_count(lambda: run_unit(fused, x))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.slow
def test_portable_loops_without_avx512():
    """SHUFFLENET_OPS_CPU_GEMM=blas turns the AVX-512 kernels off: float32 then runs the
    portable loops (what a CPU without AVX-512 runs), with the same results, for both
    whole-unit ops (V1 and V2)."""
    code = (
        "import torch, shufflenet_ops as so\n"
        "from shufflenet_ops.ops import BY_NAME\n"
        "for name in ('shuffle_unit', 'shuffle_unit_v2'):\n"
        "    spec = BY_NAME[name]\n"
        "    for args in spec.samples():\n"
        "        a = tuple(t.float() if isinstance(t, torch.Tensor) else t for t in args)\n"
        "        torch.testing.assert_close(spec(*a), spec.reference(*a), rtol=1e-4, atol=1e-4)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, SHUFFLENET_OPS_CPU_GEMM="blas")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


# ----------------------------------------------------------------- the module's path
def test_module_takes_the_per_op_path_when_it_must():
    """Training, a gradient through an eval unit, a backend other than cpp, and float16 all
    run op by op (with their usual results); the whole-unit op never records a graph."""
    fused, naive = unit_pair(24, 24, 3, 1, True, seed=6)
    x = torch.randn(2, 24, 6, 6, dtype=torch.float64, requires_grad=True)
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
    fused.train()
    with torch.no_grad(), OpCalls() as calls:
        fused(x)
    assert UNIT_OP not in calls.ops


def test_cache_follows_parameter_changes():
    """The folded, packed weights are cached; an in-place change of a BN statistic or a
    weight, or load_state_dict, is seen by the next call."""
    fused, naive = unit_pair(24, 48, 3, 2, True, seed=7)
    x = torch.randn(1, 24, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        run_unit(fused, x)
        for module in (fused, naive):
            module.depthwise[1].running_var.mul_(3.0) if isinstance(module.depthwise, torch.nn.Sequential) else \
                module.depthwise.bn.running_var.mul_(3.0)
            module.expand[0].weight.add_(0.5) if isinstance(module.expand, torch.nn.Sequential) else \
                module.expand.conv.weight.add_(0.5)
        assert_close(run_unit(fused, x), naive(x), torch.float64)
        state = {k: v + 0.25 if v.is_floating_point() and "running_var" not in k else v
                 for k, v in naive.state_dict().items()}
        naive.load_state_dict(state)
        fused.load_state_dict(state)
        assert_close(run_unit(fused, x), naive(x), torch.float64)


@pytest.mark.parametrize("grad_argument", [0, 1], ids=["x", "weight"])
@pytest.mark.parametrize("name", ["shuffle_unit", "shuffle_unit_v2"])
@pytest.mark.parametrize("call", ["dispatcher", "public"])
def test_a_call_that_needs_a_graph_raises(call, name, grad_argument):
    """No silent, gradient-less output from either whole-unit op: a call that would need a
    backward (x or a weight requiring grad) is refused; the same call without a graph
    (no_grad, inference_mode, no tensor requiring grad) runs."""
    spec = BY_NAME[name]
    args = list(next(iter(spec.samples())))
    run = getattr(torch.ops.shufflenet_ops, name) if call == "dispatcher" else getattr(so, name)
    expected = run(*args)
    args[grad_argument] = args[grad_argument].clone().requires_grad_()
    with pytest.raises(RuntimeError, match=f"{name} is an inference op and has no backward"):
        run(*args)
    with torch.no_grad():
        torch.testing.assert_close(run(*args), expected)
    with torch.inference_mode():
        torch.testing.assert_close(run(*args), expected)


def test_fused_model_runs_every_unit_as_one_op():
    model = randomize_batchnorm(so.models.shufflenet_v1(3, 0.5, num_classes=10)).eval()
    with torch.no_grad(), OpCalls() as calls:
        model(torch.randn(1, 3, 64, 64))
    assert calls.ops.count(UNIT_OP) == 16
    assert not any("conv1x1" in str(op) for op in calls.ops), "a unit ran op by op"


def test_fused_model_calls_hooked_units_as_modules():
    """The model calls the units' op directly (one check per forward); a unit or stage with a
    hook, or a global hook, is called as a module, so that the hook runs."""
    model = randomize_batchnorm(so.models.shufflenet_v1(3, 0.5, num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    seen = []
    handles = [model.stage3[2].register_forward_hook(lambda m, a, y: seen.append("unit")),
               model.stage4.register_forward_pre_hook(lambda m, a: seen.append("stage"))]
    with torch.no_grad(), OpCalls() as calls:
        y = model(x)
    assert seen == ["unit", "stage"] and calls.ops.count(UNIT_OP) == 16
    for handle in handles:
        handle.remove()
    global_handle = torch.nn.modules.module.register_module_forward_hook(lambda m, a, y: seen.append(type(m)))
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(x), y)
    finally:
        global_handle.remove()
    assert seen.count(ShuffleUnit) == 16


def test_cache_follows_eps_and_replaced_data():
    """A BN's eps (not a tensor) and `.data =` (which bumps no version, and whose new storage
    may land at the old address) both invalidate the cached weights."""
    for trial in range(20):
        unit = randomize_batchnorm(ShuffleUnit(24, 24, 3, 1).double(), seed=trial).eval()
        x = torch.randn(1, 24, 7, 7, dtype=torch.float64)
        weight = unit.expand.conv.weight
        with torch.no_grad():
            unit(x)
            weight.data = weight.data * 2
            weight.data = weight.data * 2
            unit.depthwise.bn.eps = 0.5
            y = run_unit(unit, x)
            with so.backend("reference"):
                expected = unit(x)
        assert_close(y, expected, torch.float64, f"trial {trial}")


def test_model_runs_subclassed_units_and_stages_as_modules():
    """A ShuffleUnit subclass or an instance with its own forward, a Sequential subclass stage
    and a stage that is not a Sequential run as written."""
    class Scaled(ShuffleUnit):
        def forward(self, x):
            return 0.5 * super().forward(x)

    class ScaledStage(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    model = randomize_batchnorm(so.models.shufflenet_v1(3, 0.5, num_classes=10)).eval()
    old = model.stage3[2]
    scaled = Scaled(old.in_channels, old.out_channels, old.groups, old.stride)
    scaled.load_state_dict(old.state_dict())
    model.stage3[2] = scaled.eval()
    model.stage2 = ScaledStage(*model.stage2)
    model.stage4[1].forward = lambda x, unit=model.stage4[1]: ShuffleUnit.forward(unit, x) + 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
        with so.backend("reference"):
            expected = model(x)
        assert_close(y, expected, torch.float32)
        model.stage4 = nn.Identity()
        model.fc = nn.Linear(model.stage3[-1].out_channels, 10)
        assert model(x).shape == (1, 10)


def test_public_function_and_packing_name_bad_arguments():
    args = list(next(iter(SHUFFLE_UNIT.samples())))
    for index, bad, error, message in [
        (8, 2.0, TypeError, r"stride must be an int, got float"),
        (8, "1", TypeError, r"stride must be an int, got str"),
        (3, [1.0], TypeError, r"depthwise_weight must be a torch.Tensor, got list"),
        (7, 3.0, TypeError, r"shuffle_groups must be an int"),
    ]:
        with pytest.raises(error, match=message):
            so.shuffle_unit(*args[:index], bad, *args[index + 1:])
    w = torch.randn(60, 80, 1, 1)
    for groups, error, message in [(0, ValueError, r"groups must be >= 1"), (7, ValueError, r"divisible by groups"),
                                   (3.0, TypeError, r"groups must be an int")]:
        with pytest.raises(error, match=message):
            so.pack_pointwise_weight(w, groups)
    with pytest.raises(ValueError, match=r"1x1 kernel"):
        so.pack_pointwise_weight(torch.randn(60, 80, 3, 3), 3)
    with pytest.raises(TypeError, match=r"stride must be an int"):
        ShuffleUnit(24, 24, 3, 1.0)
