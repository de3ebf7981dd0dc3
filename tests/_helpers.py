"""What the test files share (``from _helpers import ...``: pytest puts tests/ on sys.path).

- the tolerance table and ``assert_close``, the comparison with a float64 reference that
  every fast path goes through;
- the ShuffleNet V1 1x1 layer shapes, from the model's own layer table, and
  ``conv_inputs``, the one builder of a fused conv's inputs;
- the checks of a fused conv against the reference (``check_conv``,
  ``check_residual_epilogue``, ``check_shuffle``) and the Triton kernel cases that
  tests/test_triton.py runs under the interpreter and tests/test_cuda.py on a GPU;
- the fused-vs-naive module helpers (``randomize_batchnorm``, ``run_and_backward``, ...).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch._prims_common import suggest_memory_format
from torch.utils._python_dispatch import TorchDispatchMode

import shufflenet_ops as so
from shufflenet_ops import reference
from shufflenet_ops.layer_shapes import PointwiseLayer, shufflenet_v1_pointwise_layers
from shufflenet_ops.models.shufflenet_v1 import GROUPS
from shufflenet_ops.triton import _configs

__all__ = [
    "COMBOS",
    "EPILOGUES",
    "FORMATS",
    "GROUPS",
    "GROUP_SHAPES",
    "PATH_TILES",
    "TOLERANCES",
    "OpCalls",
    "assert_close",
    "assert_same_buffers",
    "assert_same_grads",
    "assert_same_training",
    "check_conv",
    "check_residual_epilogue",
    "check_shuffle",
    "conv_inputs",
    "pointwise_layers",
    "pointwise_shapes",
    "randomize_batchnorm",
    "requires_extension",
    "run_and_backward",
    "shuffle_for",
    "triton_launcher_calls",
]

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}

requires_extension = pytest.mark.skipif(not so._extension.available(), reason="C++ extension not built")


# ------------------------------------------------------------------------- tolerances
# Relative tolerance per dtype of a result computed in that dtype, against a float64
# reference: |actual - expected| <= tol * (|expected| + max|expected|), see assert_close.
TOLERANCES = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.bfloat16: 2e-2,
    torch.float16: 1e-2,
}


def assert_close(actual, expected, dtype: torch.dtype, what: str = "") -> None:
    """``actual`` (computed in ``dtype``) matches the float64 ``expected``: relative, with an
    absolute floor at the tensor's scale (low-precision sums cancel). Tuples (an op with
    several outputs) are compared output by output."""
    if isinstance(actual, (tuple, list)):
        assert isinstance(expected, (tuple, list)) and len(actual) == len(expected), what
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, dtype, f"{what}[{i}]")
        return
    tol = TOLERANCES[dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double().cpu(), expected.double().cpu(), rtol=tol, atol=tol * max(scale, 1e-30),
        msg=lambda m: f"{what} ({dtype}): {m}",
    )


# ------------------------------------------------------------- layer shapes and inputs
def pointwise_layers(width_mult: float = 1.0) -> list[PointwiseLayer]:
    """Every distinct 1x1 conv layer of ShuffleNet V1, for each group count of Table 1."""
    return [layer for g in GROUPS for layer in shufflenet_v1_pointwise_layers(g, width_mult)]


def pointwise_shapes(width_mult: float = 1.0) -> list[tuple[int, int, int]]:
    """Sorted distinct ``(groups, Cin, Cout)`` of those layers."""
    return sorted({(layer.groups, layer.cin, layer.cout) for layer in pointwise_layers(width_mult)})


def conv_inputs(
    groups: int,
    cin: int,
    cout: int,
    *,
    n: int = 2,
    h: int = 3,
    w: int = 5,
    bias: bool = True,
    residual: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    fmt: str | torch.memory_format = "nchw",
    fan_in_scaled: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``x (N, Cin, H, W)``, ``weight (Cout, Cin/groups, 1, 1)``, ``bias (Cout,)`` or None and
    ``residual (N, Cout, H, W)`` or None of a fused conv: standard normal, drawn in float64
    in that order from a generator seeded with ``seed``, then cast to ``dtype`` and moved to
    ``device``; x and the residual in memory format ``fmt`` (a name of ``FORMATS`` or a
    ``torch.memory_format``). ``fan_in_scaled`` divides the weight by ``sqrt(Cin/groups)``
    (outputs of unit scale whatever the width). ``generator``: draw from this one instead
    (and go on drawing from it after)."""
    memory_format = FORMATS[fmt] if isinstance(fmt, str) else fmt
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(cout, cin // groups, 1, 1, generator=gen, dtype=torch.float64)
    if fan_in_scaled:
        weight = weight / math.sqrt(max(cin // groups, 1))
    b = torch.randn(cout, generator=gen, dtype=torch.float64) if bias else None
    r = torch.randn(n, cout, h, w, generator=gen, dtype=torch.float64) if residual else None
    x = x.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)
    weight = weight.to(device=device, dtype=dtype)
    b = b.to(device=device, dtype=dtype) if b is not None else None
    r = r.to(device=device, dtype=dtype).contiguous(memory_format=memory_format) if r is not None else None
    return x, weight, b, r


# ------------------------------------------------------------------- fused conv checks
def _backend(name: str | None):
    return so.backend(name) if name else contextlib.nullcontext()


def check_residual_epilogue(
    placement: str,
    groups: int,
    cin: int,
    cout: int,
    shuffle_groups: int,
    memory_format: torch.memory_format,
    dtype: torch.dtype = torch.float64,
    backend: str | None = None,
    residual_format: torch.memory_format | None = None,
    spatial: tuple[int, int] = (3, 5),
) -> None:
    """``act(... + residual)`` and the gradients of all four tensors vs the float64 reference
    (``placement``: ``"output"`` or ``"input"``, the side the shuffle is on)."""
    gen = torch.Generator().manual_seed(0)
    x, w, b, r = conv_inputs(groups, cin, cout, h=spatial[0], w=spatial[1], residual=True, fmt=memory_format,
                             generator=gen)
    r = r.contiguous(memory_format=residual_format or memory_format)
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b, r)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, r)]

    def run(impl, x, w, b, r):
        if placement == "output":
            return impl.group_conv1x1_shuffle(x, w, groups, bias=b, shuffle_groups=shuffle_groups, relu=True, residual=r)
        return impl.shuffle_group_conv1x1(x, w, groups, shuffle_groups, bias=b, relu=True, residual=r)

    with _backend(backend):
        y = run(so, *leaves)
        y_ref = run(reference, *ref_leaves)
        assert_close(y, y_ref, dtype)
        go = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        y.backward(go.to(dtype))
    y_ref.backward(go)
    for leaf, ref in zip(leaves, ref_leaves):
        assert_close(leaf.grad, ref.grad, dtype)


# The Triton kernel cases (tests/test_triton.py under the interpreter, tests/test_cuda.py on
# a GPU). Tiles that force each kernel path on tiny shapes (blocks of 16 over 12- and
# 20-channel groups and 15 or 30 pixels: every tile dimension has a masked edge).
PATH_TILES = {
    "dot": (_configs.Tile(16, 16, 16, True, 2, 1), _configs.Tile(16, 16, 0, True, 2, 1)),
    "fma": (_configs.Tile(8, 1, 16, False, 2, 1), _configs.Tile(8, 8, 0, False, 2, 1)),
}

# Each (placement, convention, layout, path) combination once; group counts and the
# bias/ReLU epilogue rotate through the combinations so all values are seen with both
# paths and both layouts. Channels per group (12 or 20) and pixels (15, or 30 folded)
# leave a masked edge in every tile of the forced 16-wide tiles.
GROUP_SHAPES = [(1, 20, 12), (2, 40, 24), (3, 60, 36), (4, 48, 80), (8, 96, 160)]
EPILOGUES = [(True, True), (False, False), (True, False), (False, True)]
COMBOS = [
    (placement, convention, fmt, path)
    for placement in ("out", "in")
    for convention in ("paper", "official", "none")
    for fmt in FORMATS
    for path in PATH_TILES
]


def run_fused(placement, x, w, b, g, s, relu):
    if placement == "out":
        return so.group_conv1x1_shuffle(x, w, g, bias=b, shuffle_groups=s, relu=relu)
    return so.shuffle_group_conv1x1(x, w, g, s, bias=b, relu=relu)


def run_reference(placement, x, w, b, g, s, relu):
    if placement == "out":
        return reference.group_conv1x1_shuffle(x, w, g, bias=b, shuffle_groups=s, relu=relu)
    return reference.shuffle_group_conv1x1(x, w, g, s, bias=b, relu=relu)


def shuffle_for(convention: str, g: int, channels: int) -> int:
    """The shuffle group count of a convention, for the shuffled side with ``channels``."""
    return {"paper": g, "official": channels // g, "none": 1}[convention]


def check_conv(placement, g, cin, cout, convention, *, bias, relu, fmt, dtype, device, n=2, h=3, w=5, seed=0,
               backend=None):
    """Forward and all gradients of a fused conv (``placement``: ``"out"`` or ``"in"``) vs
    the float64 reference; the output and grad input in the layouts torch would give."""
    s = shuffle_for(convention, g, cout if placement == "out" else cin)
    x, wt, b, _ = conv_inputs(g, cin, cout, n=n, h=h, w=w, bias=bias, dtype=dtype, device=device, fmt=fmt,
                              fan_in_scaled=True, seed=seed)
    leaves = [t.requires_grad_() for t in (x, wt, b) if t is not None]
    with _backend(backend):
        y = run_fused(placement, x, wt, b, g, s, relu)
    # The input's memory format as torch reads it: a shape like (N, 1, H, W) is both formats.
    assert y.is_contiguous(memory_format=suggest_memory_format(x)), f"output not in the input's memory format ({fmt})"
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    go = go.to(device=device, dtype=dtype).contiguous(memory_format=FORMATS[fmt])  # as autograd would pass it
    grads = torch.autograd.grad(y, leaves, go)

    x64, w64, b64 = (t.detach().double().requires_grad_() if t is not None else None for t in (x, wt, b))
    ref = run_reference(placement, x64, w64, b64, g, s, False)
    ref_y = ref.clamp_min(0) if relu else ref
    assert_close(y.detach(), ref_y, dtype, "forward")
    # The backward masks by the kernel's own output (what autograd saved), so a value that
    # rounds across zero in low precision does not fail the gradient check.
    go_ref = go.double() * (y.detach() > 0).double() if relu else go.double()
    leaves64 = [t for t in (x64, w64, b64) if t is not None]
    ref_grads = torch.autograd.grad(ref, leaves64, go_ref)
    for name, got, want in zip(("grad input", "grad weight", "grad bias"), grads, ref_grads):
        assert_close(got, want, dtype, name)
    assert grads[0].is_contiguous(memory_format=suggest_memory_format(go)), "grad input not in grad_output's memory format"


def check_shuffle(c, g, fmt, dtype, device, n=2, h=3, w=5, backend=None):
    """channel_shuffle equals torch.channel_shuffle, keeps the layout; its backward is the
    inverse shuffle."""
    x = torch.randn(n, c, h, w, dtype=torch.float64).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    with _backend(backend):
        y = so.channel_shuffle(x, g)
    assert torch.equal(y, torch.channel_shuffle(x.detach(), g)), "shuffle differs from torch.channel_shuffle"
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    go = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, go)
    assert torch.equal(gx, torch.channel_shuffle(go, c // g)), "shuffle backward is not the inverse shuffle"


def triton_launcher_calls(device="cpu", dtype=torch.float32) -> dict:
    """One call of every Triton launcher (and each launcher's options: ReLU mask, residual,
    input shuffle, grad weight with bias), on fixed random tensors: for the launch-cache
    tests, which compare repeated calls and the uncached path (tests/test_launch_cache.py
    with the GPU stubbed, tests/test_triton.py under the interpreter)."""
    from shufflenet_ops.triton import conv_backward, conv_forward, shuffle

    gen = torch.Generator().manual_seed(0)

    def randn(*shape, fmt=torch.contiguous_format):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device).contiguous(memory_format=fmt)

    x = randn(2, 24, 5, 7, fmt=torch.channels_last)
    w, b = randn(48, 8, 1, 1) / 3, randn(48)
    go, out, residual = randn(2, 48, 5, 7), randn(2, 48, 5, 7), randn(2, 48, 5, 7)
    return {
        "forward": lambda: conv_forward.conv1x1_shuffle_forward(x, w, b, 3, 1, 3, True, None),
        "forward, input shuffle, residual": lambda: conv_forward.conv1x1_shuffle_forward(
            x, w, None, 3, 8, 1, False, residual),
        "grad input, ReLU mask": lambda: conv_backward.conv1x1_grad_input(go, w, 3, 1, 3, out),
        "grad weight and bias, ReLU mask": lambda: conv_backward.grad_weight_and_bias(go, x, 3, 1, 3, out, True),
        "grad bias": lambda: conv_backward.conv1x1_grad_bias(go, 3),
        "relu grad": lambda: conv_backward.relu_grad(go, out),
        "channel shuffle": lambda: shuffle.channel_shuffle(x, 3),
    }


# ----------------------------------------------------------------- fused vs naive modules
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    module.bias.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def run_and_backward(forward, x, seed=1):
    """``forward(x)`` and the gradient of x for a seeded random output gradient."""
    x = x.detach().clone().requires_grad_()
    y = forward(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    y.backward(grad)
    return y.detach(), x.grad


def assert_same_grads(module_a: nn.Module, module_b: nn.Module) -> None:
    """The same parameter names, with equal gradients."""
    params_a, params_b = dict(module_a.named_parameters()), dict(module_b.named_parameters())
    assert params_a.keys() == params_b.keys()
    for name, param in params_a.items():
        torch.testing.assert_close(param.grad, params_b[name].grad, msg=lambda m, name=name: f"{name}: {m}")


def assert_same_buffers(module_a: nn.Module, module_b: nn.Module) -> None:
    """The same buffer names, with equal values."""
    buffers_a, buffers_b = dict(module_a.named_buffers()), dict(module_b.named_buffers())
    assert buffers_a.keys() == buffers_b.keys()
    for name, buffer in buffers_a.items():
        torch.testing.assert_close(buffer, buffers_b[name], msg=lambda m, name=name: f"{name}: {m}")


def assert_same_training(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` equals ``reference(x)`` (float64: to rounding), as do the gradients of x
    and of every parameter (same names) and the buffers after the call (running
    statistics in train mode); returns the model's output."""
    for module in (reference, model):
        module.zero_grad()
    (y_ref, gx_ref), (y, gx) = (run_and_backward(module, x) for module in (reference, model))
    torch.testing.assert_close((y, gx), (y_ref, gx_ref))
    assert_same_grads(reference, model)
    assert_same_buffers(reference, model)
    return y


class OpCalls(TorchDispatchMode):
    """Records the ops a block of code dispatches (``with OpCalls() as calls: ...; calls.ops``):
    which path a module took."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func)
        return func(*args, **(kwargs or {}))


def results_per_thread_count(run: Callable[[], torch.Tensor], counts: tuple[int, ...] = (1, 2, 3)) -> list[torch.Tensor]:
    """``run()`` under each of torch's intra-op thread ``counts`` (the previous count restored)."""
    threads = torch.get_num_threads()
    try:
        results = []
        for count in counts:
            torch.set_num_threads(count)
            results.append(run())
        return results
    finally:
        torch.set_num_threads(threads)


def run_fused_unit(fused: nn.Module, x: torch.Tensor, unit_op) -> torch.Tensor:
    """``fused(x)`` in inference, checking that the unit ran as the one whole-unit op
    ``unit_op`` if x is channels_last or the unit has stride 2, and op by op for a stride-1
    unit given NCHW x (the per-op path runs NCHW natively)."""
    with torch.no_grad(), OpCalls() as calls:
        y = fused(x)
    if x.is_contiguous(memory_format=torch.channels_last) or fused.stride == 2:
        assert unit_op in calls.ops, f"the unit did not run as {unit_op}"
    elif x.stride(1) != 1:
        assert unit_op not in calls.ops, "a stride-1 unit with NCHW input ran the whole-unit op"
    return y
