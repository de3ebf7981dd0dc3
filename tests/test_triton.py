"""Triton kernels against the pure-PyTorch reference.

Without a GPU the kernels run on CPU tensors in Triton's interpreter, which must be switched
on (TRITON_INTERPRET=1) before triton is imported. So in a normal ``pytest`` run this file
contributes one test, ``test_interpreter_suite``, that re-runs this file in a subprocess
with TRITON_INTERPRET=1 (the rest of the suite is unaffected); inside that subprocess the
kernel tests below are defined and run. To run them directly, with per-test output:

    TRITON_INTERPRET=1 pytest tests/test_triton.py

Shapes are tiny (the interpreter runs each program in numpy) but chosen so that every path
is taken: forward, grad input, grad weight, grad bias and the ReLU mask; both placements;
both shuffle conventions (s = g as in the paper, s = C/g as in the official code) and no
shuffle; NCHW (per-image pixel tiles) and channels_last (batch folded, all groups per
program); the tensor-core path and the FMA path for narrow groups; masked edges in every
tile dimension; several reduction slices; 64-bit offsets; batch 0; non-dense inputs; the fused
backward (ReLU mask and grad bias in the grad kernels) against the op-by-op one, NaN and inf
included, and gradcheck through it; the launch cache's results against the uncached path.

The cases and checks (tests/_helpers.py) are shared with tests/test_cuda.py, which runs them
on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from torch._prims_common import suggest_memory_format

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed: the Triton kernels cannot be tested", allow_module_level=True)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # extension-not-built warning: not needed here
    import shufflenet_ops as so
from shufflenet_ops import reference
from shufflenet_ops.triton import _configs

from _helpers import (
    COMBOS,
    EPILOGUES,
    FORMATS,
    GROUP_SHAPES,
    PATH_TILES,
    assert_close,
    check_conv,
    check_residual_epilogue,
    check_shuffle,
    conv_inputs,
    pointwise_shapes,
    triton_launcher_calls,
)

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ------------------------------------------------- pure-Python tile rule (any process)
@pytest.mark.parametrize("g,cin,cout", pointwise_shapes())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_layers_take_tensor_cores_without_mostly_padded_tiles(g, cin, cout, dtype):
    for rows, red in ((cout // g, cin // g), (cin // g, cout // g)):  # forward and grad input
        tiles = _configs.fit_conv(rows, red, 28 * 28, dtype == torch.float64)
        assert tiles, f"no tile fits rows={rows} red={red}"
        for t in tiles:
            assert t.use_dot, f"g={g} {cin}->{cout}: per-group {rows}x{red} should take tl.dot"
            assert _configs.use_fraction(rows, t.block_m) >= 0.5, (rows, t)
            assert _configs.use_fraction(red, t.block_k) >= 0.5, (red, t)
    for t in _configs.fit_grad_weight(cout // g, cin // g, False):
        assert t.use_dot
        assert _configs.use_fraction(cout // g, t.block_m) >= 0.5 and _configs.use_fraction(cin // g, t.block_k) >= 0.5


@pytest.mark.parametrize("rows,red", [(1, 5), (4, 64), (64, 3), (8, 8), (12, 200)])
def test_narrow_groups_take_the_fma_path_with_tight_tiles(rows, red):
    tiles = _configs.fit_conv(rows, red, 100, False)
    assert tiles
    dot = _configs.dot_allowed(rows, red, False)
    assert all(t.use_dot == dot for t in tiles)
    assert all(_configs.use_fraction(rows, t.block_m) >= 0.5 for t in tiles)
    if rows <= 8 or red <= 8:
        assert not dot
    assert all(not t.use_dot for t in _configs.fit_conv(rows, red, 100, True)), "float64 must not take tl.dot"


def test_pixel_tiles_fit_small_maps():
    for p in (1, 7 * 7, 14 * 14, 28 * 28, 128 * 49):
        tiles = _configs.fit_conv(48, 48, p, False)
        assert tiles
        if p >= 32:
            assert all(_configs.use_fraction(p, t.block_p) >= 0.5 for t in tiles), p


def test_host_integer_helpers_match_triton():
    """The launchers' cdiv / next_power_of_2 (plain Python: triton's are constexpr functions
    costing ~5 us per host call) give Triton's values for every positive size."""
    import triton

    from shufflenet_ops.triton import _common

    for n in list(range(1, 300)) + [1023, 1024, 1025, 2**31 - 1, 2**31, 2**40 + 3]:
        assert _common.next_power_of_2(n) == triton.next_power_of_2(n), n
        for d in (1, 3, 16, 32, 128, 1000):
            assert _common.cdiv(n, d) == triton.cdiv(n, d), (n, d)


def test_reduction_slices_depend_on_shape_and_device_only():
    assert _configs.num_splits(1000, 10, 132) == _configs.num_splits(1000, 10, 132)
    assert 1 <= _configs.num_splits(3, 1000, 132) <= 3
    assert _configs.num_splits(10_000, 4, 132) == 132


def test_tf32_is_opt_in():
    from shufflenet_ops.triton import _common

    assert _common.dot_precision(torch.float32) == "ieee"
    so.triton.set_allow_tf32(True)
    try:
        assert _common.dot_precision(torch.float32) == "tf32"
        assert _common.dot_precision(torch.bfloat16) == "ieee"
    finally:
        so.triton.set_allow_tf32(False)


def test_registration_is_a_noop_without_cuda():
    from shufflenet_ops import _extension
    from shufflenet_ops.ops import register_cuda_kernels

    expected = torch.cuda.is_available() and _extension.available()
    assert register_cuda_kernels() is expected


def _subprocess(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SHUFFLENET_OPS_BACKEND")}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300, check=False
    )


def test_registration_puts_triton_on_the_cuda_key():
    from shufflenet_ops import _extension

    if not _extension.available():
        pytest.skip(f"the C++ extension (which defines the ops) is not built: {_extension.LOAD_ERROR}")
    code = (
        "import torch, shufflenet_ops\n"
        "from shufflenet_ops.ops import SPECS, register_cuda_kernels\n"
        "assert register_cuda_kernels(force=True)\n"
        "for spec in SPECS:\n"
        "    assert torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, 'CUDA'), spec.name\n"
        "print('ok')\n"
    )
    proc = _subprocess(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-4000:]


def test_cpu_tensor_without_interpreter_is_a_clear_error():
    code = (
        "import torch, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from shufflenet_ops.triton.table import TRITON\n"
        "x = torch.zeros(1, 4, 2, 2)\n"
        "for call in (lambda: TRITON.channel_shuffle(x, 2), lambda: TRITON.max_pool3x3s2_relu(x)):\n"
        "    try:\n"
        "        call()\n"
        "    except RuntimeError as e:\n"
        "        assert 'TRITON_INTERPRET=1' in str(e), e\n"
        "    else:\n"
        "        raise AssertionError('no error')\n"
        "print('ok')\n"
    )
    proc = _subprocess(code)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr[-4000:]


if not INTERPRETING:

    @pytest.mark.slow
    def test_interpreter_suite():
        """The kernel tests of this file, on CPU under TRITON_INTERPRET=1, in a subprocess."""
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        env.pop("SHUFFLENET_OPS_BACKEND", None)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            capture_output=True, text=True, env=env, timeout=1200, check=False,
        )
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        print(f"interpreter suite: {summary} ({time.monotonic() - start:.0f} s)")
        assert proc.returncode == 0, proc.stdout[-30000:] + proc.stderr[-5000:]

else:
    from shufflenet_ops.triton import _common, conv_backward, conv_forward, launch_cache
    from shufflenet_ops.triton.table import TRITON

    def test_gradient_penalty_fails_loudly_on_triton():
        """The backward ops run through their specs: with create_graph=True their results
        carry a node that raises, as on the C++ backend, instead of coming back detached."""
        x = torch.randn(1, 12, 3, 3, dtype=torch.float64)
        w = torch.randn(12, 4, 1, 1, dtype=torch.float64, requires_grad=True)
        with so.backend("triton"):
            loss = so.group_conv1x1_shuffle(x, w, 3, shuffle_groups=1, relu=True).pow(2).sum()
            (gw,) = torch.autograd.grad(loss, w, create_graph=True)
            with pytest.raises(RuntimeError, match="double backward"):
                (loss + gw.pow(2).sum()).backward()

    # ------------------------------------------------------- every op on its spec's samples
    SPEC_SAMPLES = [(spec, args) for spec in so.ops.SPECS for args in spec.samples()]

    @pytest.mark.parametrize("spec,args", SPEC_SAMPLES, ids=[f"{s.name}-{i}" for i, (s, _) in enumerate(SPEC_SAMPLES)])
    def test_table_matches_reference_on_spec_samples(spec, args):
        got = getattr(TRITON, spec.name)(*args)
        assert_close(got, spec.reference(*args), torch.float64, spec.name)
        first = got[0] if isinstance(got, tuple) else got
        if first.dim() == 4:
            assert first.is_contiguous(memory_format=suggest_memory_format(args[0]))

    # -------------------------------------------------------------------- channel shuffle
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("c,g", [(12, 3), (12, 4), (12, 1), (12, 12), (16, 8), (6, 2)])
    def test_channel_shuffle(c, g, fmt):
        check_shuffle(c, g, fmt, torch.float64, "cpu", backend="triton")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_channel_shuffle_dtypes(dtype):
        for fmt in FORMATS:
            check_shuffle(24, 3, fmt, dtype, "cpu", backend="triton")

    def test_channel_shuffle_non_dense_input():
        x = torch.randn(2, 24, 4, 6, dtype=torch.float64)[:, 2:14, :, ::2]  # sliced: not dense
        assert torch.equal(TRITON.channel_shuffle(x, 4), torch.channel_shuffle(x, 4))
        xt = torch.randn(2, 4, 6, 12, dtype=torch.float64).permute(0, 3, 1, 2)  # channels_last view
        assert torch.equal(TRITON.channel_shuffle(xt, 3), torch.channel_shuffle(xt, 3))

    # --------------------------------------------------------- fused conv, every path
    @pytest.mark.parametrize("index", range(len(COMBOS)))
    def test_conv_forward_backward_paths(index):
        placement, convention, fmt, path = COMBOS[index]
        g, cin, cout = GROUP_SHAPES[index % len(GROUP_SHAPES)]
        bias, relu = EPILOGUES[index % len(EPILOGUES)]
        conv_tile, gw_tile = PATH_TILES[path]
        with (
            _common.forced_tile("conv", conv_tile),
            _common.forced_tile("grad_weight", gw_tile),
            _common.forced_splits(2),  # batch 3 -> 3 work items in 2 slices: a short last slice
        ):
            check_conv(placement, g, cin, cout, convention, bias=bias, relu=relu, fmt=fmt,
                       dtype=torch.float64, device="cpu", n=3, backend="triton")

    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("g,cin,cout", [(1, 8, 12), (2, 8, 24), (3, 36, 12), (4, 16, 32), (8, 96, 48)])
    def test_conv_default_tiles_every_group_count(g, cin, cout, fmt):
        """The tile rule's own choice (no forcing), both placements, official convention."""
        for placement in ("out", "in"):
            check_conv(placement, g, cin, cout, "official" if placement == "in" else "paper", bias=True, relu=True,
                       fmt=fmt, dtype=torch.float64, device="cpu", backend="triton")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("path", list(PATH_TILES))
    @pytest.mark.parametrize("fmt", list(FORMATS))
    def test_conv_low_precision(dtype, path, fmt):
        conv_tile, gw_tile = PATH_TILES[path]
        with _common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile):
            check_conv("out", 3, 60, 36, "paper", bias=True, relu=True, fmt=fmt, dtype=dtype, device="cpu",
                       backend="triton")

    def test_shufflenet_g8_layer_narrow_groups():
        """A real g=8 layer (Stage 2, 384 -> 96: 48 in and 12 out per group) and its mirror, at 6x6."""
        for placement, cin, cout in (("out", 384, 96), ("in", 96, 384)):
            check_conv(placement, 8, cin, cout, "paper", bias=True, relu=True, fmt="channels_last",
                       dtype=torch.float32, device="cpu", n=1, h=6, w=6, backend="triton")

    # ------------------------------------------------ kernels with both shuffles at once
    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("path", list(PATH_TILES))
    def test_backward_ops_with_input_and_output_shuffles(fmt, path):
        """The backward ops take any (in_shuffle, out_shuffle), not only one of them."""
        g, cin, cout, si, s_out = 2, 24, 40, 3, 4
        x, w, _, _ = conv_inputs(g, cin, cout, bias=False, fmt=fmt, fan_in_scaled=True)
        go = torch.randn(2, cout, 3, 5, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
        x64, w64 = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = torch.channel_shuffle(torch.nn.functional.conv2d(torch.channel_shuffle(x64, si), w64, groups=g), s_out)
        rx, rw = torch.autograd.grad(y, (x64, w64), go)
        conv_tile, gw_tile = PATH_TILES[path]
        with _common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile):
            fwd = conv_forward.conv1x1_shuffle_forward(x, w, None, g, si, s_out, False)
            gx = TRITON.conv1x1_shuffle_grad_input(go, w, g, si, s_out)
            gw = TRITON.conv1x1_shuffle_grad_weight(go, x, g, si, s_out)
        gb = TRITON.conv1x1_shuffle_grad_bias(go, s_out)
        assert_close(fwd, y.detach(), torch.float64, "forward")
        assert_close(gx, rx, torch.float64, "grad input")
        assert_close(gw, rw, torch.float64, "grad weight")
        assert_close(gb, torch.channel_shuffle(go, cout // s_out).sum((0, 2, 3)), torch.float64, "grad bias")

    def test_grad_ops_with_mixed_layouts_and_strided_weight():
        """grad_output NCHW with x channels_last (no batch folding), a transposed weight view."""
        g, cin, cout = 3, 36, 24
        x = torch.randn(2, cin, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        go = torch.randn(2, cout, 3, 5, dtype=torch.float64)
        w = torch.randn(cin // g, cout, dtype=torch.float64).t()  # (Cout, Cin/g), not contiguous
        x64, w64 = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = torch.channel_shuffle(torch.nn.functional.conv2d(x64, w64[:, :, None, None], groups=g), g)
        rx, rw = torch.autograd.grad(y, (x64, w64), go)
        with _common.forced_splits(3):
            assert_close(TRITON.conv1x1_shuffle_grad_weight(go, x, g, 1, g).reshape(rw.shape), rw,
                         torch.float64, "grad weight")
        gx = TRITON.conv1x1_shuffle_grad_input(go, w, g, 1, g)
        assert gx.is_contiguous()  # grad_output's format
        assert_close(gx, rx, torch.float64, "grad input")
        out = torch.randn(2, cout, 3, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(TRITON.relu_grad(go, out), go * (out > 0), rtol=0, atol=0)

    @pytest.mark.parametrize("fmt", list(FORMATS))
    @pytest.mark.parametrize("path", list(PATH_TILES))
    def test_residual_epilogue(fmt, path):
        conv_tile, gw_tile = PATH_TILES[path]
        with _common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile):
            check_residual_epilogue("output", 3, 12, 24, 3, FORMATS[fmt], backend="triton")
            check_residual_epilogue("input", 4, 16, 8, 4, FORMATS[fmt], backend="triton",
                                    residual_format=torch.contiguous_format)

    def test_non_dense_input_forward():
        x = torch.randn(2, 48, 4, 10, dtype=torch.float64)[:, ::2, :, 1:8]  # 24 channels, 4x7, strided
        w = torch.randn(12, 8, 1, 1, dtype=torch.float64)
        y = TRITON.group_conv1x1_shuffle(x, w, None, 3, 3, False)
        assert_close(y, reference.group_conv1x1_shuffle(x, w, 3, shuffle_groups=3), torch.float64, "forward")

    def test_relu_grad():
        for fmt in FORMATS:
            go = torch.randn(2, 6, 5, 7, dtype=torch.float32).contiguous(memory_format=FORMATS[fmt])
            out = torch.randn(2, 6, 5, 7, dtype=torch.float32).contiguous(memory_format=FORMATS[fmt])
            got = TRITON.relu_grad(go, out)
            assert torch.equal(got, go * (out > 0)) and got.is_contiguous(memory_format=FORMATS[fmt])

    def test_batch_zero():
        x = torch.randn(0, 12, 3, 3, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        with so.backend("triton"):
            y = so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True)
            assert y.shape == (0, 6, 3, 3)
            y.sum().backward()
            assert so.channel_shuffle(x.detach(), 3).shape == x.shape
        assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))

    def test_64bit_offsets_path(monkeypatch):
        """INDEX_64 code paths (taken for tensors of >= 2^31 elements) on a small shape."""
        monkeypatch.setattr(_common, "INT32_LIMIT", 1)
        for fmt in FORMATS:
            with _common.forced_tile("conv", PATH_TILES["dot"][0]):
                check_conv("out", 2, 24, 40, "paper", bias=True, relu=True, fmt=fmt, dtype=torch.float64,
                           device="cpu", backend="triton")
            check_conv("in", 3, 36, 24, "official", bias=True, relu=True, fmt=fmt, dtype=torch.float64,
                       device="cpu", backend="triton")
            check_shuffle(12, 3, fmt, torch.float64, "cpu", backend="triton")

    def test_grad_weight_is_reproducible_across_calls():
        x, _, _, _ = conv_inputs(4, 64, 32, n=3, h=5, w=7, bias=False, dtype=torch.float32, fan_in_scaled=True)
        go = torch.randn(3, 32, 5, 7)
        with _common.forced_splits(3):
            first = TRITON.conv1x1_shuffle_grad_weight(go, x, 4, 1, 4)
            again = TRITON.conv1x1_shuffle_grad_weight(go, x, 4, 1, 4)
        assert torch.equal(first, again)

    # ------------------------------------------------------ launch cache and fused backward
    def _same(got, want, what):
        if isinstance(want, tuple):
            for g, w in zip(got, want):
                _same(g, w, what)
        elif want is None:
            assert got is None, what
        else:
            assert torch.equal(got, want) and got.stride() == want.stride(), what

    def test_launch_cache_gives_the_uncached_results():
        """Every launcher: the first call (a miss) and the next (a hit: the cached plan) give
        exactly what the uncached path gives."""
        launch_cache.clear_all()
        for name, call in triton_launcher_calls().items():
            _common.set_launch_cache(False)
            try:
                want = call()
            finally:
                _common.set_launch_cache(True)
            _same(call(), want, f"{name}, first call")
            _same(call(), want, f"{name}, cached")
        assert all(cache.hits >= 1 for cache in launch_cache.caches().values())

    def _relu_case(fmt, dtype=torch.float64, g=3, cin=12, cout=24, n=3):
        """A conv's inputs, its output with a ReLU and a gradient; NaN in the output (its
        gradient passes), inf and NaN in the gradient where the output is 0 (they give 0, not
        NaN) and NaN where it is positive (it passes)."""
        x, w, b, _ = conv_inputs(g, cin, cout, n=n, bias=True, fmt=fmt, dtype=dtype, fan_in_scaled=True)
        out = TRITON.group_conv1x1_shuffle(x, w, b, g, g, True)
        out[0, 1, 0, :2] = float("nan")
        go = torch.randn(out.shape, dtype=dtype).contiguous(memory_format=FORMATS[fmt])
        zeros = (out == 0).nonzero()
        go[tuple(zeros[0])] = float("inf")
        go[tuple(zeros[-1])] = float("nan")
        go[tuple((out > 0).nonzero()[0])] = float("nan")
        return x, w, out, go

    @pytest.mark.parametrize("splits", [1, 3])
    @pytest.mark.parametrize("path", list(PATH_TILES))
    @pytest.mark.parametrize("fmt", list(FORMATS))
    def test_fused_backward_is_the_op_by_op_backward(fmt, path, splits):
        """ReLU mask and grad bias folded into the grad kernels: the relu_grad op's values,
        NaN and inf included (a product go * (out > 0) would make inf * 0 = NaN)."""
        x, w, out, go = _relu_case(fmt)
        conv_tile, gw_tile = PATH_TILES[path]
        with (_common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile),
              _common.forced_splits(splits)):
            gx, gw, gb = conv_backward.conv1x1_shuffle_backward(go, x, w, out, 3, 1, 3, (True, True, True))
            masked = TRITON.relu_grad(go, out)
            want = (TRITON.conv1x1_shuffle_grad_input(masked, w, 3, 1, 3),
                    TRITON.conv1x1_shuffle_grad_weight(masked, x, 3, 1, 3), TRITON.conv1x1_shuffle_grad_bias(masked, 3))
        torch.testing.assert_close(masked, torch.ops.aten.threshold_backward(go, out, 0), rtol=0, atol=0,
                                   equal_nan=True, msg=lambda m: f"the op's mask is torch's: {m}")
        assert masked.isnan().any() and not masked.isinf().any()
        for name, got, ref in zip(("grad input", "grad weight", "grad bias"), (gx, gw, gb), want):
            torch.testing.assert_close(got, ref, equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")
        assert gx.is_contiguous(memory_format=FORMATS[fmt])

    def test_fused_backward_low_precision_and_what_is_needed():
        """bf16 (partials summed in fp32, cast once), and only the gradients asked for: a frozen
        weight (grad bias alone), no bias, no ReLU."""
        x, w, out, _ = _relu_case("channels_last", torch.float32)
        go = torch.randn(out.shape).contiguous(memory_format=torch.channels_last)
        masked = TRITON.relu_grad(go, out)
        xb, wb, gob, outb = (t.bfloat16() for t in (x, w, go, out))
        with _common.forced_splits(3):
            gx, gw, gb = conv_backward.conv1x1_shuffle_backward(gob, xb, wb, outb, 3, 1, 3, (True, True, True))
        assert gx.dtype == gw.dtype == gb.dtype == torch.bfloat16
        ref_masked = torch.ops.aten.threshold_backward(go, outb.float(), 0)
        assert_close(gw, TRITON.conv1x1_shuffle_grad_weight(ref_masked, xb.float(), 3, 1, 3), torch.bfloat16, "gw")
        assert_close(gb, TRITON.conv1x1_shuffle_grad_bias(ref_masked, 3), torch.bfloat16, "gb")
        none, none_w, gb_only = conv_backward.conv1x1_shuffle_backward(go, x, w, out, 3, 1, 3, (False, False, True))
        assert none is None and none_w is None
        torch.testing.assert_close(gb_only, TRITON.conv1x1_shuffle_grad_bias(masked, 3))
        gx, gw, no_bias = conv_backward.conv1x1_shuffle_backward(go, x, w, None, 3, 1, 3, (True, True, False))
        assert no_bias is None
        torch.testing.assert_close(gx, TRITON.conv1x1_shuffle_grad_input(go, w, 3, 1, 3))
        torch.testing.assert_close(gw, TRITON.conv1x1_shuffle_grad_weight(go, x, 3, 1, 3))

    def test_public_op_takes_the_fused_backward(monkeypatch):
        """Eager Triton autograd calls the fused backward, once per conv; create_graph=True
        (grad mode on in backward) does not (test_gradient_penalty_fails_loudly_on_triton)."""
        from shufflenet_ops.triton import table

        calls = []
        fused = table.conv1x1_shuffle_backward
        monkeypatch.setattr(table, "conv1x1_shuffle_backward", lambda *a: calls.append(1) or fused(*a))
        x, w, b, _ = conv_inputs(3, 12, 24, bias=True, fmt="nchw", fan_in_scaled=True)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        with so.backend("triton"):
            y = so.group_conv1x1_shuffle(x, w, 3, bias=b, relu=True)
        torch.autograd.grad(y.sum(), leaves)
        assert calls == [1]

    def test_gradcheck_through_the_fused_backward():
        gen = torch.Generator().manual_seed(3)
        x = torch.randn(1, 4, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        w = torch.randn(6, 2, 1, 1, dtype=torch.float64, generator=gen, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, generator=gen, requires_grad=True)
        r = torch.randn(1, 6, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
        with so.backend("triton"):
            assert torch.autograd.gradcheck(
                lambda x, w, b: so.group_conv1x1_shuffle(x, w, 2, bias=b, shuffle_groups=3, relu=True), (x, w, b))
            assert torch.autograd.gradcheck(
                lambda x, w, r: so.shuffle_group_conv1x1(x, w, 2, 2, relu=True, residual=r), (x, w, r))

    # ------------------------------------------------------------------ property test
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        g=st.sampled_from([1, 2, 3, 4, 8]),
        k=st.integers(1, 20),
        m=st.integers(1, 20),
        hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
        n=st.integers(1, 2),
        placement=st.sampled_from(["out", "in"]),
        convention=st.sampled_from(["paper", "official", "none"]),
        fmt=st.sampled_from(list(FORMATS)),
        epilogue=st.sampled_from(EPILOGUES),
    )
    def test_conv_random_shapes(g, k, m, hw, n, placement, convention, fmt, epilogue):
        check_conv(placement, g, g * k, g * m, convention, bias=epilogue[0], relu=epilogue[1], fmt=fmt,
                   dtype=torch.float64, device="cpu", n=n, h=hw[0], w=hw[1], backend="triton")


def test_kernels_launch_on_the_input_device(monkeypatch):
    """Triton launches on the current CUDA device: the kernel table switches to the input's
    device first (checked with a stand-in tensor and device context, no GPU needed)."""
    from shufflenet_ops.triton.table import on_input_device

    entered = []

    class FakeCudaTensor:
        is_cuda = True
        device = torch.device("cuda", 1)

    class RecordingDevice:
        def __init__(self, device):
            entered.append(device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    seen = []
    wrapped = on_input_device("op", lambda t, *args: seen.append(args) or "ran")
    assert wrapped(FakeCudaTensor(), 3) == "ran"
    assert entered == [torch.device("cuda", 1)] and seen == [(3,)]
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert wrapped(FakeCudaTensor(), 4) == "ran"
    assert entered == [torch.device("cuda", 1)], "no switch when the input is on the current device"
