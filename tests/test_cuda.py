"""The Triton kernels on CUDA, through the dispatcher (the registered CUDA implementation).

Marked ``cuda``; skipped without a CUDA device. Runs the interpreter suite's cases
(tests/_helpers.py; tests/test_triton.py runs them under the interpreter) on CUDA, plus
what the interpreter cannot: every ShuffleNet V1 1x1 layer shape, fp16/bf16 on the tensor
cores, batch 128, tensors past 2^31 elements, autotuning, torch.compile (fullgraph) and
opcheck, bit-for-bit reproducible grad weight, TF32 as an opt-in.
benchmarks/device_check.sh runs this file on a GPU machine.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import _helpers as cases  # the interpreter suite's cases and checks

pytestmark = pytest.mark.cuda

if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the CUDA tests need a GPU", allow_module_level=True)
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

import shufflenet_ops as so
from shufflenet_ops import _extension, reference

if not _extension.available():
    pytest.skip(f"the C++ extension (which defines the ops) is not built: {_extension.LOAD_ERROR}",
                allow_module_level=True)

from shufflenet_ops.ops import SPECS  # noqa: E402
from shufflenet_ops.triton import _common  # noqa: E402
from shufflenet_ops.triton.table import TRITON  # noqa: E402

DEVICE = "cuda"
LOW_PRECISION = [(torch.bfloat16, "channels_last"), (torch.float16, "channels_last"), (torch.float32, "nchw")]


@pytest.fixture(autouse=True)
def fixed_tiles(monkeypatch):
    """Fixed tiles (no autotuning) unless a test turns it on: one compile per variant, fast."""
    monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "0")
    monkeypatch.delenv("SHUFFLENET_OPS_BACKEND", raising=False)
    monkeypatch.delenv("SHUFFLENET_OPS_DETERMINISTIC", raising=False)


def test_triton_is_the_cuda_kernel_of_every_op():
    for spec in SPECS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(spec.qualname, "CUDA"), spec.name


# ------------------------------------------------------- the interpreter suite on CUDA
@pytest.mark.parametrize("index", range(len(cases.COMBOS)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_paths_on_cuda(index, dtype):
    placement, convention, fmt, path = cases.COMBOS[index]
    if dtype == torch.float64 and path == "dot":
        pytest.skip("float64 takes the FMA path on GPU (no fp64 tensor-core tile is relied on)")
    g, cin, cout = cases.GROUP_SHAPES[index % len(cases.GROUP_SHAPES)]
    bias, relu = cases.EPILOGUES[index % len(cases.EPILOGUES)]
    conv_tile, gw_tile = cases.PATH_TILES[path]
    with _common.forced_tile("conv", conv_tile), _common.forced_tile("grad_weight", gw_tile), _common.forced_splits(2):
        cases.check_conv(placement, g, cin, cout, convention, bias=bias, relu=relu, fmt=fmt, dtype=dtype,
                         device=DEVICE, n=3)


@pytest.mark.parametrize("fmt", list(cases.FORMATS))
@pytest.mark.parametrize("c,g", [(12, 3), (240, 3), (384, 8), (96, 4), (200, 2), (16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channel_shuffle(c, g, fmt, dtype):
    cases.check_shuffle(c, g, fmt, dtype, DEVICE, n=4, h=14, w=14)


# ----------------------------------------------------------------- real layer shapes
@pytest.mark.parametrize("g,cin,cout", cases.pointwise_shapes())
@pytest.mark.parametrize("dtype,fmt", LOW_PRECISION)
def test_shufflenet_v1_layers(g, cin, cout, dtype, fmt):
    placement, convention = ("out", "paper") if cout < cin else ("in", "official")
    cases.check_conv(placement, g, cin, cout, convention, bias=True, relu=True, fmt=fmt, dtype=dtype, device=DEVICE,
                     n=4, h=14, w=14)


@pytest.mark.parametrize("dtype,fmt", LOW_PRECISION)
@pytest.mark.parametrize("g,cin,cout", [(3, 240, 60), (3, 60, 240), (8, 384, 96), (8, 96, 384)])
def test_batch_128(g, cin, cout, dtype, fmt):
    placement = "out" if cout < cin else "in"
    cases.check_conv(placement, g, cin, cout, "paper", bias=True, relu=placement == "out", fmt=fmt, dtype=dtype,
                     device=DEVICE, n=128, h=28, w=28)


def test_autotuned_tiles(monkeypatch):
    monkeypatch.setenv("SHUFFLENET_OPS_TRITON_AUTOTUNE", "1")
    monkeypatch.setenv("SHUFFLENET_OPS_DETERMINISTIC", "0")
    for dtype, fmt in LOW_PRECISION:
        cases.check_conv("out", 8, 384, 96, "paper", bias=True, relu=True, fmt=fmt, dtype=dtype, device=DEVICE,
                         n=8, h=28, w=28)


def test_int64_offsets_past_2_to_the_31():
    """Tensors of more than 2^31 elements: results of the last batch item, whose offsets
    pass 2^31, against the reference on that item alone."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs about 24 GiB of free GPU memory")
    n, c, h, w = 3, 48, 3800, 4000  # 2.19e9 elements
    assert n * c * h * w > 2**31
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=torch.bfloat16)
    y = so.channel_shuffle(x, 3)
    assert torch.equal(y[-1:], torch.channel_shuffle(x[-1:], 3))
    del y
    wt = (torch.randn(24, 16, 1, 1, device=DEVICE) / 4).to(torch.bfloat16)
    y = so.group_conv1x1_shuffle(x, wt, 3, relu=True)
    ref = reference.group_conv1x1_shuffle(x[-1:].float(), wt.float(), 3, relu=True)
    cases.assert_close(y[-1:], ref, torch.bfloat16, "forward past 2^31")
    go = torch.randn_like(y)
    gx = TRITON.conv1x1_shuffle_grad_input(go, wt, 3, 1, 3)
    xl = x[-1:].float().requires_grad_()
    (rx,) = torch.autograd.grad(reference.group_conv1x1_shuffle(xl, wt.float(), 3), xl, go[-1:].float())
    cases.assert_close(gx[-1:], rx, torch.bfloat16, "grad input past 2^31")
    gi = TRITON.relu_grad(go, y)
    assert torch.equal(gi[-1:], go[-1:] * (y[-1:] > 0))


# ---------------------------------------------------------------- compile and opcheck
def test_torch_compile_fullgraph_forward_backward():
    def block(x, w1, b1, w2):
        y = so.group_conv1x1_shuffle(x, w1, 3, bias=b1, relu=True)
        return so.shuffle_group_conv1x1(y, w2, 3, 60 // 3)

    x = torch.randn(8, 240, 14, 14, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w1 = torch.randn(60, 80, 1, 1, device=DEVICE) / 9
    b1 = torch.randn(60, device=DEVICE)
    w2 = torch.randn(240, 20, 1, 1, device=DEVICE) / 4
    params = [t.requires_grad_() for t in (x, w1, b1, w2)]
    eager = block(*params)
    eager_grads = torch.autograd.grad(eager.square().sum(), params)
    compiled = torch.compile(block, fullgraph=True)
    out = compiled(*params)
    grads = torch.autograd.grad(out.square().sum(), params)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_opcheck():
    ops = torch.ops.shufflenet_ops
    x = torch.randn(2, 24, 5, 7, device=DEVICE, requires_grad=True)
    w = torch.randn(12, 8, 1, 1, device=DEVICE, requires_grad=True)
    b = torch.randn(12, device=DEVICE, requires_grad=True)
    go = torch.randn(2, 12, 5, 7, device=DEVICE)
    torch.library.opcheck(ops.channel_shuffle, (x, 3))
    torch.library.opcheck(ops.group_conv1x1_shuffle, (x, w, b, 3, 3, True))
    torch.library.opcheck(ops.shuffle_group_conv1x1, (x, w, b, 3, 8, False))
    torch.library.opcheck(ops.conv1x1_shuffle_grad_input, (go, w.detach(), 3, 8, 3))
    torch.library.opcheck(ops.conv1x1_shuffle_grad_weight, (go, x.detach(), 3, 8, 3))
    torch.library.opcheck(ops.conv1x1_shuffle_grad_bias, (go, 3))
    torch.library.opcheck(ops.relu_grad, (go, torch.randn_like(go)))


# --------------------------------------------------------- determinism and precision
@pytest.mark.parametrize("dtype,fmt", LOW_PRECISION)
def test_grad_weight_bit_for_bit_reproducible(dtype, fmt):
    x, _, _, _ = cases.conv_inputs(3, 240, 60, n=64, h=28, w=28, bias=False, dtype=dtype, device=DEVICE, fmt=fmt,
                                   fan_in_scaled=True)
    go = torch.randn(64, 60, 28, 28, device=DEVICE, dtype=dtype).contiguous(memory_format=cases.FORMATS[fmt])
    runs = [TRITON.conv1x1_shuffle_grad_weight(go, x, 3, 1, 3) for _ in range(3)]
    biases = [TRITON.conv1x1_shuffle_grad_bias(go, 3) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    assert all(torch.equal(biases[0], r) for r in biases[1:])


def test_fp32_is_exact_by_default_and_tf32_is_opt_in():
    x, w, _, _ = cases.conv_inputs(3, 480, 120, n=8, h=14, w=14, bias=False, dtype=torch.float32, device=DEVICE,
                                   fan_in_scaled=True)
    ref = reference.group_conv1x1_shuffle(x.double(), w.double(), 3)
    scale = ref.abs().max().item()
    exact = (so.group_conv1x1_shuffle(x, w, 3).double() - ref).abs().max().item() / scale
    so.triton.set_allow_tf32(True)
    try:
        tf32 = (so.group_conv1x1_shuffle(x, w, 3).double() - ref).abs().max().item() / scale
    finally:
        so.triton.set_allow_tf32(False)
    assert exact < 1e-5, f"default fp32 is not exact fp32: relative error {exact:.2e}"
    assert tf32 < 1e-2, f"TF32 error too large: {tf32:.2e}"
    print(f"relative error: ieee {exact:.2e}, tf32 {tf32:.2e}")


def test_backend_env_var_forces_triton(monkeypatch):
    monkeypatch.setenv("SHUFFLENET_OPS_BACKEND", "triton")
    cases.check_conv("in", 8, 96, 384, "official", bias=False, relu=False, fmt="channels_last",
                     dtype=torch.bfloat16, device=DEVICE, n=2, h=7, w=7)


# ------------------------------------------------------------------------- CUDA graphs
class _TwoConvs(torch.nn.Module):
    """A ShuffleNet unit's two fused 1x1 convs: bias + ReLU, then the input shuffle with the
    residual and ReLU (both backward forms: the fused one and the materialised mask)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(60, 80, 1, 1, generator=gen) / 9)
        self.b1 = torch.nn.Parameter(torch.randn(60, generator=gen))
        self.w2 = torch.nn.Parameter(torch.randn(240, 20, 1, 1, generator=gen) / 4)

    def forward(self, x):
        y = so.group_conv1x1_shuffle(x, self.w1, 3, bias=self.b1, relu=True)
        return so.shuffle_group_conv1x1(y, self.w2, 3, 20, relu=True, residual=x)


def _graph_inputs(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 240, 14, 14, generator=gen).to(DEVICE).contiguous(memory_format=torch.channels_last)


def _train_step(model, x):
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()])
    return out.detach(), grads


def _assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_cuda_graphs_make_graphed_callables_training():
    """The documented path (docs/design.md, "CUDA graphs"): after a warm-up on the graph's
    shapes every launch in the capture is a launch-cache hit (no compile, no autotuning inside
    the capture), and the replayed forward and backward give the eager results."""
    from shufflenet_ops.triton import launch_cache

    eager = _TwoConvs().to(DEVICE)
    x = _graph_inputs().requires_grad_()
    want = _train_step(eager, x)
    misses = {name: cache.misses for name, cache in launch_cache.caches().items()}
    graphed = torch.cuda.make_graphed_callables(_TwoConvs().to(DEVICE), (x,))
    assert {name: cache.misses for name, cache in launch_cache.caches().items()} == misses
    for seed in (1, 2):  # replays with new input values
        x2 = _graph_inputs(seed).requires_grad_()
        _assert_same_step(_train_step(graphed, x2), _train_step(eager, x2))
    assert torch.equal(_train_step(graphed, x)[0], want[0])


def test_cuda_graphs_capture_and_replay_eval():
    model = _TwoConvs().to(DEVICE).eval()
    static_x = _graph_inputs()
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            model(static_x)  # warm-up: compiles, fills the launch cache
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            static_out = model(static_x)
        for seed in (2, 3):
            static_x.copy_(_graph_inputs(seed))
            graph.replay()
            torch.testing.assert_close(static_out, model(static_x), rtol=0, atol=0)


@pytest.mark.parametrize("train", [True, False])
def test_cuda_graphs_torch_compile_reduce_overhead(train):
    torch._dynamo.reset()
    eager = _TwoConvs().to(DEVICE)
    compiled = torch.compile(_TwoConvs().to(DEVICE), mode="reduce-overhead")
    for seed in (1, 2, 3, 4):  # the first calls warm up, later ones replay the recorded graph
        x = _graph_inputs(seed)
        if train:
            x.requires_grad_()
            _assert_same_step(_train_step(compiled, x), _train_step(eager, x))
        else:
            with torch.no_grad():
                torch.testing.assert_close(compiled(x).clone(), eager(x), rtol=1e-5, atol=1e-5)
