"""The Triton launchers' launch cache (shufflenet_ops/triton/launch_cache.py), without a GPU.

- The key: what Triton specialises a launch on (each tensor's dtype, shape, strides and
  16-byte alignment), the launchers' scalars and the settings; checked on plain tensors.
- ``Launch``: a stand-in kernel records how it is called: the first call goes through
  ``kernel[grid]``, later calls through the compiled kernel's runner with the arguments the
  first call bound.
- The real launchers on Triton's real JIT with the GPU stubbed (``bench.host_overhead``'s
  ``stubbed_launches``: kernels compile for sm_90 on the CPU, the driver records launches):
  a cached call launches exactly what the uncached path launches, compiles once per key, and
  does not enter the JIT after the first call; the fused backward's launch count.
The interpreter suite (tests/test_triton.py) checks cached results against uncached ones.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from shufflenet_ops.triton import _common, _configs, launch_cache
from shufflenet_ops.triton.launch_cache import Launch, LaunchCache, call_key

from _helpers import triton_launcher_calls

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


# ------------------------------------------------------------------------------ the key
def _misaligned(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a tensor of its shape and strides whose data pointer is 4 bytes past
    a 16-byte boundary (fp32): Triton compiles such a pointer without the divisibility hint."""
    storage = torch.empty(t.numel() + 4, dtype=t.dtype)
    offset = next(i for i in range(4) if (storage.data_ptr() + i * t.element_size()) % 16 == 4)
    out = storage[offset:offset + t.numel()].view(t.shape)
    return out.copy_(t)


def test_key_is_what_a_launch_specialises_on():
    x = torch.randn(2, 12, 3, 5)
    base = call_key((x, None), (3, True))
    assert call_key((torch.randn(2, 12, 3, 5), None), (3, True)) == base, "same metadata: same key"
    assert call_key((x.clone(), None), (3, True)) == base
    different = {
        "strides": call_key((x.contiguous(memory_format=torch.channels_last), None), (3, True)),
        "alignment": call_key((_misaligned(x), None), (3, True)),
        "dtype": call_key((x.double(), None), (3, True)),
        "shape": call_key((torch.randn(2, 12, 3, 6), None), (3, True)),
        "batch": call_key((torch.randn(3, 12, 3, 5), None), (3, True)),
        "optional tensor": call_key((x, torch.randn(12)), (3, True)),
        "scalar": call_key((x, None), (4, True)),
        "flag": call_key((x, None), (3, False)),
    }
    assert _misaligned(x).data_ptr() % 16 != 0
    for what, key in different.items():
        assert key != base, what
    assert len(set(different.values())) == len(different)


def test_key_includes_the_settings(monkeypatch):
    x = torch.randn(2, 12, 3, 5)
    base = call_key((x,), ())
    _common.set_allow_tf32(True)
    try:
        assert call_key((x,), ()) != base, "TF32 changes DOT_PRECISION"
    finally:
        _common.set_allow_tf32(False)
    with _common.forced_tile("conv", _configs.CONV_TILES[0]):
        assert call_key((x,), ()) != base, "a forced tile changes the grid"
    with _common.forced_splits(2):
        assert call_key((x,), ()) != base, "forced slices change the reduction"
    monkeypatch.setattr(_common, "INT32_LIMIT", 1)
    assert call_key((x,), ()) != base, "the 64-bit offsets switch changes INDEX_64"
    monkeypatch.undo()
    monkeypatch.setenv("SHUFFLENET_OPS_DETERMINISTIC", "0")
    assert call_key((x,), ()) != base
    monkeypatch.setenv("SHUFFLENET_OPS_DETERMINISTIC", "1")
    assert call_key((x,), ()) == base


def test_cache_makes_one_plan_per_key():
    made = []
    cache = LaunchCache("test")
    try:
        def make(x, flag):
            made.append((x.shape, flag))
            return object()

        x = torch.randn(2, 12, 3, 5)
        first = cache.plan((x,), (True,), make)
        assert cache.plan((torch.randn(2, 12, 3, 5),), (True,), make) is first
        assert cache.plan((x,), (False,), make) is not first
        assert cache.plan((_misaligned(x),), (True,), make) is not first
        assert len(made) == 3 and len(cache) == 3 and (cache.hits, cache.misses) == (1, 3)
        _common.set_launch_cache(False)
        try:
            assert cache.plan((x,), (True,), make) is not first, "disabled: a fresh plan per call"
        finally:
            _common.set_launch_cache(True)
        cache.maxsize = 3
        cache.plan((torch.randn(1, 1, 1, 1),), (True,), make)
        assert len(cache) == 3, "past maxsize, calls run uncached"
    finally:
        launch_cache._caches.remove(cache)


def test_a_miss_inside_cuda_graph_capture_is_a_clear_error(monkeypatch):
    """Warm up before capture: a new key inside a capture raises, a cached one runs."""

    class CudaLike:  # what the key reads of a CUDA tensor
        is_cuda, dtype, shape, device = True, torch.float32, torch.Size([2, 3]), torch.device("cuda", 0)

        def stride(self):
            return (3, 1)

        def data_ptr(self):
            return 1024

    def make(*args):
        return object()

    cache = LaunchCache("test")
    try:
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
        plan = cache.plan((CudaLike(),), (), make)
        monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
        assert cache.plan((CudaLike(),), (), make) is plan
        with pytest.raises(RuntimeError, match="inside a CUDA graph capture; run the captured code once"):
            cache.plan((CudaLike(),), (1,), make)
    finally:
        launch_cache._caches.remove(cache)


# ------------------------------------------------------------------ Launch, stand-in kernel
class FakeCompiled:
    def __init__(self, calls):
        self.calls = calls

    def __getitem__(self, grid):
        return lambda *args: self.calls.append(("runner", grid, args))


class FakeKernel:
    """A triton.jit function's launch surface: ``kernel[grid](*args, **kwargs)`` returns the
    compiled kernel (None: the interpreter)."""

    arg_names = ("x_ptr", "y_ptr", "n", "stride", "FLAG", "BLOCK")

    def __init__(self, interpreted=False, best_config=None):
        self.calls = []
        self.interpreted = interpreted
        if best_config is not None:
            self.best_config = best_config

    def __getitem__(self, grid):
        def jit(*args, **kwargs):
            self.calls.append(("jit", grid, args, kwargs))
            return None if self.interpreted else FakeCompiled(self.calls)

        return jit


def test_launch_binds_after_the_first_call():
    kernel = FakeKernel()
    launch = Launch(kernel, (4, 2), (100, 7), dict(FLAG=True, BLOCK=64, num_warps=4))
    x, y = torch.zeros(1), torch.zeros(1)
    launch(x, y)
    assert not any(c[0] == "runner" for c in kernel.calls) and launch.bound
    launch(y, x)
    launch(x, x)
    assert [c[0] for c in kernel.calls] == ["jit", "runner", "runner"], "the JIT only on the first call"
    assert kernel.calls[0][3] == dict(FLAG=True, BLOCK=64, num_warps=4)
    # the runner gets a 3-D grid and every parameter after the tensors in signature order,
    # constexprs included; the options (num_warps) are the compiled kernel's
    assert kernel.calls[1][1] == (4, 2, 1)
    assert kernel.calls[1][2] == (y, x, 100, 7, True, 64)
    assert kernel.calls[2][2][:2] == (x, x)


def test_launch_takes_the_autotuners_choice():
    class Config:
        def all_kwargs(self):
            return {"BLOCK": 32, "num_warps": 8}

    kernel = FakeKernel(best_config=Config())
    launch = Launch(kernel, lambda meta: (100 // meta["BLOCK"],), (100, 7), dict(FLAG=False))
    launch(torch.zeros(1), torch.zeros(1))
    launch(torch.zeros(1), torch.zeros(1))
    assert kernel.calls[1][1] == (3, 1, 1) and kernel.calls[1][2][2:] == (100, 7, False, 32)


def test_interpreter_and_disabled_cache_always_take_the_kernels_own_path():
    kernel = FakeKernel(interpreted=True)
    launch = Launch(kernel, (1,), (1, 1), dict(FLAG=True, BLOCK=16))
    launch(torch.zeros(1), torch.zeros(1))
    launch(torch.zeros(1), torch.zeros(1))
    assert [c[0] for c in kernel.calls] == ["jit", "jit"] and not launch.bound
    kernel = FakeKernel()
    _common.set_launch_cache(False)
    try:
        launch = Launch(kernel, (1,), (1, 1), dict(FLAG=True, BLOCK=16))
        launch(torch.zeros(1), torch.zeros(1))
        launch(torch.zeros(1), torch.zeros(1))
    finally:
        _common.set_launch_cache(True)
    assert [c[0] for c in kernel.calls] == ["jit", "jit"]


# ------------------------------------------------ the real launchers, the GPU stubbed
needs_stub = pytest.mark.skipif(
    INTERPRETING or torch.cuda.is_available(),
    reason="the stubbed driver replaces Triton's: not beside real kernels (CUDA) or the interpreter",
)


def _described(args: tuple) -> tuple:
    """A launch's arguments with tensors as what the kernel sees of them (fresh outputs
    differ in address between calls, not in what was compiled)."""
    return tuple((a.dtype, a.shape, a.stride(), a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor) else a
                 for a in args)


@needs_stub
@pytest.mark.parametrize("name", list(triton_launcher_calls()))
def test_cached_launch_is_the_uncached_launch(name, monkeypatch):
    from triton.runtime.jit import JITFunction

    from shufflenet_ops.bench.host_overhead import stubbed_launches

    monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")
    call = triton_launcher_calls()[name]
    jit_runs = []
    real_run = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **k: jit_runs.append(self) or real_run(self, *a, **k))
    with stubbed_launches(record=True) as stub:
        _common.set_launch_cache(False)
        try:
            call()
            call()
        finally:
            _common.set_launch_cache(True)
        uncached = [(grid, _described(args)) for grid, args in stub.calls]
        assert uncached[: len(uncached) // 2] == uncached[len(uncached) // 2:]
        assert len(jit_runs) == len(uncached), "uncached: every launch through the JIT"
        stub.calls.clear()
        jit_runs.clear()
        call()
        first = len(jit_runs)
        call()
        call()
        assert len(jit_runs) == first, "cache hits do not enter the JIT"
        cached = [(grid, _described(args)) for grid, args in stub.calls]
        per_call = len(uncached) // 2
        assert cached == uncached[:per_call] * 3, "a hit launches what the uncached path launches"
        compiled = {kernel: sum(len(c[0]) for c in kernel.device_caches.values()) for kernel in set(jit_runs)}
        assert all(n == 1 for n in compiled.values()), f"one compile per kernel and key: {compiled}"


@needs_stub
def test_alignment_gives_a_new_entry_and_compile(monkeypatch):
    from shufflenet_ops.bench.host_overhead import stubbed_launches
    from shufflenet_ops.triton import conv_forward

    monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")
    x, w = torch.randn(2, 24, 5, 7), torch.randn(48, 8, 1, 1)
    with stubbed_launches(record=True) as stub:
        cache = launch_cache.caches()["conv forward"]
        conv_forward.conv1x1_shuffle_forward(x, w, None, 3, 1, 3, False)
        conv_forward.conv1x1_shuffle_forward(x.clone(), w, None, 3, 1, 3, False)
        assert (cache.hits, cache.misses) == (1, 1)
        conv_forward.conv1x1_shuffle_forward(_misaligned(x), w, None, 3, 1, 3, False)
        assert (cache.hits, cache.misses) == (1, 2)
        kernel = conv_forward._permuted_group_conv1x1_kernel
        assert sum(len(c[0]) for c in kernel.device_caches.values()) == 2, "Triton specialised the pointer anew"
        assert stub.launches == 3


@needs_stub
def test_fused_backward_launches(monkeypatch):
    """The fused backward: grad input and grad weight + bias reading go through the ReLU
    mask, and the slice sum (several slices at 132 SMs): 3 Triton launches, no aten compute.
    Op by op: relu_grad, grad input, grad weight + its slice sum, grad bias + its slice sum."""
    from shufflenet_ops.bench.host_overhead import AtenCounter, stubbed_launches
    from shufflenet_ops.triton import conv_backward

    monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")
    x = torch.randn(8, 240, 28, 28).contiguous(memory_format=torch.channels_last)
    w = torch.randn(60, 80, 1, 1)
    go = torch.randn(8, 60, 28, 28).contiguous(memory_format=torch.channels_last)
    out = torch.randn_like(go)
    with stubbed_launches() as stub:
        for fused in (True, False):
            before = stub.launches
            with AtenCounter() as aten:
                if fused:
                    conv_backward.conv1x1_shuffle_backward(go, x, w, out, 3, 1, 3, (True, True, True))
                else:
                    g = conv_backward.relu_grad(go, out)
                    conv_backward.conv1x1_grad_input(g, w, 3, 1, 3)
                    conv_backward.conv1x1_grad_weight(g, x, 3, 1, 3)
                    conv_backward.conv1x1_grad_bias(g, 3)
            assert aten.ops == [], aten.ops
            assert stub.launches - before == (3 if fused else 6)
