"""NaN and +-inf through every kernel and epilogue, forward and backward, on both backends.

Every op must give exactly the NaN / +inf / -inf pattern of the unfused pure-PyTorch
reference (``relu(nan) = nan``, ``inf - inf = nan``, ``0 * inf = nan``), and the same finite
values. Each conv case puts NaN, +inf or -inf into one input (x, weight, bias or residual)
at two places that meet in one dot product (so a +inf and a -inf product make a NaN), and
always adds an all-zero weight row and an all-zero pixel (so an inf meets a zero: 0 * inf).
Gradients of x, weight, bias and residual are compared with the reference's autograd.

Paths: float32 takes the AVX-512 small GEMM with its in-register epilogue where the CPU has
it (channel-major in place at 12x11 pixels, pixel-major, strided input rows), float32 with
a residual whose output is scattered takes the portable epilogue loop, float64 and bfloat16
take BLAS and the portable loop; ``test_float32_blas_path`` reruns the float32 cases with
SHUFFLENET_OPS_CPU_GEMM=blas. The Triton kernels run under TRITON_INTERPRET=1 in a
subprocess (``test_triton_interpreter``), and on the GPU where there is one (marked cuda),
with tiles forced onto the tl.dot and the FMA paths so that every tile dimension has a
masked edge (masked loads pad with zeros, which must not meet an inf as 0 * inf).
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # extension-not-built warning: the tests say so
    import shufflenet_ops as so
from shufflenet_ops import _extension, functional, reference

from _helpers import FORMATS, assert_close, conv_inputs

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None
SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
cpp_only = pytest.mark.skipif(not _extension.available(), reason="C++ extension not built")
# numpy (the Triton interpreter) warns where it computes inf - inf or 0 * inf: the point here.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@dataclass(frozen=True)
class Shape:
    n: int
    groups: int
    cin: int
    cout: int
    h: int
    w: int


# tile15: 15-pixel images, so NCHW tiles span both batch items (gathered and scattered);
# plane132: one image of 132 pixels, written in place in NCHW, with a masked last vector.
CPP_SHAPES = {"tile15": Shape(2, 3, 12, 18, 3, 5), "plane132": Shape(1, 2, 8, 20, 12, 11)}
# Triton: forced 16-wide tiles over 4 inputs, 6 outputs per group and 15 pixels per image.
TRITON_SHAPE = Shape(2, 2, 8, 12, 3, 5)


def parity(op: str, fmt: str, relu: bool, residual: bool) -> int:
    """Alternates with each of op, layout, relu and residual: a choice made by it (the shape,
    the Triton path) still meets every op, layout and epilogue, and every place and value."""
    return int((op == "in") ^ (fmt == "nchw") ^ relu ^ residual)


def conv_cases(dtypes, shapes):
    """(op, place, value, fmt, relu, residual, dtype, shape) for every op, place, value, layout,
    epilogue and dtype; of two shapes, the one picked by ``parity``. A special value in the
    residual needs a residual."""
    cases = []
    for op in ("out", "in"):
        for place in ("x", "weight", "bias", "residual"):
            for value in SPECIALS:
                for fmt in FORMATS:
                    for relu in (True, False):
                        for residual in (True, False) if place != "residual" else (True,):
                            shape = shapes[parity(op, fmt, relu, residual) % len(shapes)]
                            for dtype in dtypes:
                                cases.append((op, place, value, fmt, relu, residual, dtype, shape))
    return cases


def case_id(case) -> str:
    op, place, value, fmt, relu, residual, dtype, shape = case
    return "-".join(
        (op, place, value, fmt, "relu" if relu else "norelu", "res" if residual else "nores", str(dtype)[6:], shape)
    )


def assert_same_specials(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """The NaN, +inf and -inf positions of ``actual`` are exactly those of ``expected``, and the
    finite values match within ``dtype``'s tolerance (relative to the finite values' scale)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    for name, mask_of in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = mask_of(a), mask_of(e)
        if not torch.equal(got, want):
            wrong = (got ^ want).nonzero().tolist()
            raise AssertionError(
                f"{what} ({dtype}): {name} at {int(got.sum())} positions, the reference at {int(want.sum())}; "
                f"{len(wrong)} differ, e.g. {wrong[:4]} (got {[a[tuple(i)].item() for i in wrong[:4]]}, "
                f"expected {[e[tuple(i)].item() for i in wrong[:4]]})"
            )
    finite = torch.isfinite(e)
    assert_close(a[finite], e[finite], dtype, what)


def make_inputs(shape: Shape, place: str, value: str, fmt: str, residual: bool, dtype: torch.dtype, device: str):
    """x, weight, bias, residual (float64, then cast) with the special value placed."""
    s = shape
    x, w, b, r = conv_inputs(s.groups, s.cin, s.cout, n=s.n, h=s.h, w=s.w, residual=residual)
    rows = s.cout // s.groups
    w[0] = 0.0  # zero rows meet an inf or NaN x: 0 * inf = nan
    w[rows] = 0.0
    x[:, :, -1, -1] = 0.0  # a zero pixel meets an inf or NaN weight
    v = SPECIALS[value]
    c0 = s.cin // s.groups  # first channel of the second group (of x's memory order)
    if place == "x":
        x[0, c0, 0, 1] = x[0, c0 + 1, 0, 1] = v
    elif place == "weight":
        w[rows + 1, 0] = w[rows + 1, 1] = v
    elif place == "bias":
        b[rows + 1] = v
    else:
        r[0, 3, 1, 2] = r[-1, -1, -1, -1] = v
    memory_format = FORMATS[fmt]
    x = x.to(device, dtype).contiguous(memory_format=memory_format)
    w, b = w.to(device, dtype), b.to(device, dtype)
    r = r.to(device, dtype).contiguous(memory_format=memory_format) if r is not None else None
    return x, w, b, r


def run_conv(impl, op: str, shape: Shape, x, w, b, r, relu: bool):
    g = shape.groups
    if op == "out":  # the paper's placement: shuffle the output with g
        return impl.group_conv1x1_shuffle(x, w, g, bias=b, shuffle_groups=g, relu=relu, residual=r)
    return impl.shuffle_group_conv1x1(x, w, g, shape.cin // g, bias=b, relu=relu, residual=r)  # official shuffle


def check_conv_specials(case, backend: str, shape: Shape, device: str = "cpu") -> None:
    op, place, value, fmt, relu, residual, dtype, _ = case
    x, w, b, r = make_inputs(shape, place, value, fmt, residual, dtype, device)
    leaves = [t.requires_grad_() for t in (x, w, b, r) if t is not None]
    with so.backend(backend):
        y = run_conv(so, op, shape, x, w, b, r, relu)
    go = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    go = go.to(device, dtype).contiguous(memory_format=FORMATS[fmt])
    grads = torch.autograd.grad(y, leaves, go)

    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    x64, w64, b64, r64 = (ref_leaves.pop(0) if t is not None else None for t in (x, w, b, r))
    pre = run_conv(reference, op, shape, x64, w64, b64, r64, False)
    assert_same_specials(y, F.relu(pre) if relu else pre, dtype, "forward")
    # torch's ReLU backward (threshold_backward: zero where output <= 0, so a NaN output
    # passes its gradient), applied to the kernel's own output: a finite value that rounds
    # across zero in float32 then cannot fail the gradient check.
    go64 = go.cpu().double()
    go_ref = torch.ops.aten.threshold_backward(go64, y.detach().cpu().double(), 0) if relu else go64
    ref_grads = torch.autograd.grad(pre, [t for t in (x64, w64, b64, r64) if t is not None], go_ref)
    names = [n for n, t in zip(("grad x", "grad weight", "grad bias", "grad residual"), (x, w, b, r)) if t is not None]
    for name, got, want in zip(names, grads, ref_grads):
        assert_same_specials(got, want, dtype, name)


def check_shuffle_specials(value: str, fmt: str, dtype: torch.dtype, backend: str, device: str = "cpu") -> None:
    x = torch.randn(2, 12, 3, 5, dtype=torch.float64)
    x[0, 1, 0, 0] = x[1, 7, 2, 4] = SPECIALS[value]
    x = x.to(device, dtype).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
    with so.backend(backend):
        y = so.channel_shuffle(x, 3)
    assert_same_specials(y, torch.channel_shuffle(x.detach(), 3), dtype, "forward")
    go = torch.randn(y.shape, dtype=torch.float64)
    go[1, 5, 1, 1] = SPECIALS[value]  # a special value on the way back too
    go = go.to(device, dtype).contiguous(memory_format=FORMATS[fmt])
    (gx,) = torch.autograd.grad(y, x, go)
    assert_same_specials(gx, torch.channel_shuffle(go, 4), dtype, "grad x")


def check_relu_grad_specials(fmt: str, dtype: torch.dtype, backend: str, device: str = "cpu") -> None:
    """relu_grad(grad, output) is torch's threshold_backward: 0 where output <= 0 (also for an
    inf or NaN grad), else grad (also where output is NaN)."""
    special = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.5, -2.0], dtype=torch.float64)
    grad = special.repeat_interleave(7)
    out = special.repeat(7)  # every (grad, output) pair once
    shape = (1, 7, 1, 7)
    grad = grad.reshape(shape).to(device, dtype).contiguous(memory_format=FORMATS[fmt])
    out = out.reshape(shape).to(device, dtype).contiguous(memory_format=FORMATS[fmt])
    if backend == "triton":
        from shufflenet_ops.triton.table import TRITON as table
    else:
        table = torch.ops.shufflenet_ops
    got = table.relu_grad(grad, out)
    assert_same_specials(got, torch.ops.aten.threshold_backward(grad, out, 0), dtype, "relu_grad")


# --------------------------------------------------------------------- C++ kernels
if not INTERPRETING:

    @cpp_only
    @pytest.mark.parametrize(
        "case", conv_cases((torch.float32, torch.float64, torch.bfloat16), list(CPP_SHAPES)), ids=case_id
    )
    def test_cpp_conv(case):
        check_conv_specials(case, "cpp", CPP_SHAPES[case[-1]])

    @cpp_only
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("value", list(SPECIALS))
    def test_cpp_channel_shuffle(value, fmt, dtype):
        check_shuffle_specials(value, fmt, dtype, "cpp")

    @cpp_only
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
    @pytest.mark.parametrize("fmt", list(FORMATS))
    def test_cpp_relu_grad(fmt, dtype):
        check_relu_grad_specials(fmt, dtype, "cpp")

    POOLS = ("max_pool3x3s2_relu", "avg_pool3x3s2_relu")

    @cpp_only
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("value", list(SPECIALS))
    @pytest.mark.parametrize("op", POOLS)
    def test_cpp_pool(op, value, fmt, dtype):
        """float32 channels_last: the AVX-512 loop; float64/bfloat16 channels_last: the portable
        loop; NCHW: aten's pool and ReLU. 20 channels: one full and one masked vector."""
        x = torch.randn(2, 20, 7, 6, dtype=torch.float64)
        v = SPECIALS[value]
        x[0, 3, 2, 2] = x[0, 17, 0, 0] = x[1, 19, 6, 5] = v  # inside several windows; corners
        x[1, 4, 3, 3] = v
        x[1, 5, 3, 3] = -v if value != "nan" else v
        x = x.to(dtype).contiguous(memory_format=FORMATS[fmt]).requires_grad_()
        y = getattr(functional, op)(x)
        x64 = x.detach().double().requires_grad_()
        expected = getattr(reference, op)(x64)
        assert_same_specials(y, expected, dtype, "forward")
        go = torch.randn(y.shape, dtype=torch.float64).to(dtype)
        (gx,) = torch.autograd.grad(y, x, go)
        (gx_ref,) = torch.autograd.grad(expected, x64, go.double())
        assert_same_specials(gx, gx_ref, dtype, "grad x")

    @cpp_only
    @pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
    def test_model_nan_pixel_gives_nan_logits(train):
        """One NaN input pixel makes every logit NaN in the fused model, as in the naive one."""
        torch.manual_seed(0)
        x = torch.randn(2, 3, 64, 64)
        x[0, 1, 30, 17] = math.nan
        for fused in (True, False):
            model = so.models.shufflenet_v1(groups=3, fused=fused, num_classes=10).train(train)
            with torch.no_grad():
                logits = model(x)
            assert logits[0].isnan().all(), (fused, logits[0])
            if not train:  # eval: the images do not mix, the clean one stays finite
                assert logits[1].isfinite().all(), (fused, logits[1])

    @cpp_only
    @pytest.mark.slow
    def test_float32_blas_path():
        """The float32 cases again with BLAS instead of the AVX-512 small GEMM (the choice is
        read once per process, hence the subprocess)."""
        if _extension.cpu_gemm() != "small_gemm":
            pytest.skip("float32 already takes BLAS on this CPU")
        env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SHUFFLENET_OPS_BACKEND")}
        env["SHUFFLENET_OPS_CPU_GEMM"] = "blas"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__,
             "-k", "test_cpp_conv and float32"],
            capture_output=True, text=True, env=env, timeout=600, check=False,
        )
        print(f"float32 on BLAS: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-4000:]

    @pytest.mark.slow
    @pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
    def test_triton_interpreter():
        """The Triton cases below, on CPU under TRITON_INTERPRET=1, in a subprocess."""
        env = {k: v for k, v in os.environ.items() if k != "SHUFFLENET_OPS_BACKEND"}
        env["TRITON_INTERPRET"] = "1"
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", __file__],
            capture_output=True, text=True, env=env, timeout=900, check=False,
        )
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(f"interpreter special values: {summary} ({time.monotonic() - start:.0f} s)")
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-4000:]


# ------------------------------------------------------------------ Triton kernels
# Under the interpreter on CPU tensors; on CUDA (Triton compiled for the GPU) where there is one.
TRITON_DEVICE = "cpu" if INTERPRETING else "cuda"
if HAVE_TRITON and (INTERPRETING or torch.cuda.is_available()):
    from shufflenet_ops.triton import _common, _configs

    # Tiles that force the tl.dot path and the outer-product FMA path (conv, grad weight).
    PATHS = {
        "dot": (_configs.Tile(16, 16, 16, True, 2, 1), _configs.Tile(16, 16, 0, True, 2, 1)),
        "fma": (_configs.Tile(8, 1, 16, False, 2, 1), _configs.Tile(8, 8, 0, False, 2, 1)),
    }
    # Every op x place x value x layout x epilogue; float32 on the tl.dot path and float64 on
    # the FMA path, picked by ``parity``.
    TRITON_CASES = conv_cases((torch.float32,), ("dot", "fma"))
    triton_mark = pytest.mark.cuda if not INTERPRETING else (lambda test: test)

    @triton_mark
    @pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: case_id(c).replace("float32-", ""))
    def test_triton_conv(case, monkeypatch):
        monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")  # CUDA: the forced tiles, no tuning
        path = case[-1]
        dtype = torch.float32 if path == "dot" else torch.float64
        conv_tile, gw_tile = PATHS[path]
        with _common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile):
            check_conv_specials((*case[:6], dtype, path), "triton", TRITON_SHAPE, TRITON_DEVICE)

    @triton_mark
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("value", list(SPECIALS))
    def test_triton_channel_shuffle(value, fmt):
        check_shuffle_specials(value, fmt, torch.float32, "triton", TRITON_DEVICE)

    @triton_mark
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
    @pytest.mark.parametrize("fmt", list(FORMATS))
    def test_triton_relu_grad(fmt, dtype):
        check_relu_grad_specials(fmt, dtype, "triton", TRITON_DEVICE)
