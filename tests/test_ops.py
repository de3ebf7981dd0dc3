"""The fused ops (default backend: C++ on CPU) against the pure-PyTorch reference."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import pytest
import torch

import shufflenet_ops as so
from shufflenet_ops import reference

from _helpers import assert_close, check_residual_epilogue, conv_inputs, pointwise_layers, requires_extension

pytestmark = requires_extension


@dataclass(frozen=True)
class Case:
    """One fused conv: ``output`` placement shuffles the conv output, ``input`` its input."""

    placement: str
    cin: int
    cout: int
    groups: int
    shuffle_groups: int
    bias: bool = True
    relu: bool = True

    def run(self, impl, x, weight, bias):
        if self.placement == "output":
            return impl.group_conv1x1_shuffle(
                x, weight, self.groups, bias=bias, shuffle_groups=self.shuffle_groups, relu=self.relu
            )
        return impl.shuffle_group_conv1x1(x, weight, self.groups, self.shuffle_groups, bias=bias, relu=self.relu)

    def tensors(self, batch=2, height=3, width=5, dtype=torch.float64, seed=0):
        x, weight, bias, _ = conv_inputs(
            self.groups, self.cin, self.cout, n=batch, h=height, w=width, bias=self.bias, dtype=dtype, seed=seed
        )
        return x, weight, bias


def conventions(cin: int, cout: int, groups: int):
    """Both placements, each with the paper's shuffle (g groups) and its inverse (C/g, the
    official code's convention)."""
    for s in sorted({groups, cout // groups}):
        yield "output", s
    for s in sorted({groups, cin // groups}):
        yield "input", s


def check_against_reference(case: Case, x, weight, bias, dtype=torch.float64, grad=True):
    """Forward and (optionally) all gradients of the fused op vs the float64 reference."""
    leaves = [t for t in (x, weight, bias) if t is not None]
    fast_in = [t.detach().clone().requires_grad_(grad) for t in leaves]
    ref_in = [t.detach().double().requires_grad_(grad) for t in leaves]
    # Keep the memory format of x for both (clone preserves strides).
    ref_in[0] = ref_in[0].detach().to(memory_format=torch.contiguous_format).requires_grad_(grad)

    def unpack(ts):
        return ts[0], ts[1], (ts[2] if bias is not None else None)

    y = case.run(so, *unpack(fast_in))
    y_ref = case.run(reference, *unpack(ref_in))
    assert y.dtype == dtype and y.shape == y_ref.shape
    assert_close(y, y_ref, dtype)
    if case.relu and dtype != torch.float64:
        # A pre-activation within rounding of 0 can take the other side of the ReLU in float32
        # than in the float64 reference; take the reference's mask from the fast output so the
        # gradients compare the same branch (the mask itself is checked in float64).
        linear = dataclasses.replace(case, relu=False).run(reference, *unpack(ref_in))
        y_ref = linear * (y.detach() > 0)
    if not grad:
        return y
    go = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(go.to(dtype))
    y_ref.backward(go)
    for fast, ref in zip(fast_in, ref_in):
        assert_close(fast.grad, ref.grad, dtype)
    return y


# ------------------------------------------------------------- real layer shapes
LAYER_CASES = [
    Case(placement, layer.cin, layer.cout, layer.groups, s, bias, relu)
    for layer in pointwise_layers()
    for placement, s in conventions(layer.cin, layer.cout, layer.groups)
    for bias, relu in ((True, True), (False, False))
]


@pytest.mark.parametrize("case", LAYER_CASES, ids=str)
def test_shufflenet_v1_layers_forward_backward(case):
    check_against_reference(case, *case.tensors(batch=2, height=3, width=5))


# float32 takes its own GEMM (csrc/cpu/small_gemm.cpp, with the bias/ReLU epilogue in
# registers) where the CPU has AVX-512; float64 always takes BLAS. 17x19 pixels and batch 3
# cover masked column and row remainders in both layouts.
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", LAYER_CASES[::2], ids=str)
def test_shufflenet_v1_layers_float32(case, layout):
    x, w, b = case.tensors(batch=3, height=17, width=19, dtype=torch.float32)
    check_against_reference(case, x.to(memory_format=layout), w, b, dtype=torch.float32)


# NCHW planes of whole 64-byte lines, where the fp32 kernel streams its output rows to memory
# (non-temporal stores; forward and grad input): 16x16 (whole 64-pixel panels), 12x12 (a
# 16-pixel tail panel stored the ordinary way) and 72x72 (two tiles per image, the second
# starting mid-plane on a line boundary); with bias/ReLU and with a residual.
@pytest.mark.parametrize("height,width", [(16, 16), (12, 12), (72, 72)])
@pytest.mark.parametrize("case", [Case("output", 24, 48, 8, 8), Case("input", 48, 24, 8, 8),
                                  Case("output", 6, 6, 3, 3, relu=False)], ids=str)
def test_streamed_output_planes(case, height, width):
    x, w, b = case.tensors(batch=2, height=height, width=width, dtype=torch.float32)
    check_against_reference(case, x, w, b, dtype=torch.float32)


@pytest.mark.parametrize("spatial", [(16, 16), (72, 72)])
def test_streamed_output_planes_with_residual(spatial):
    check_residual_epilogue("output", 3, 12, 24, 3, torch.contiguous_format, dtype=torch.float32, spatial=spatial)


# ------------------------------------------------------ layouts and odd shapes
SMALL_CASES = [
    Case(p, cin, cout, g, s, bias, relu)
    for (cin, cout, g) in ((12, 24, 3), (16, 8, 4), (24, 48, 8), (6, 10, 2), (5, 7, 1))
    for p, s in conventions(cin, cout, g)
    for bias, relu in ((True, True), (True, False), (False, True))
]


@pytest.mark.parametrize("case", SMALL_CASES, ids=str)
def test_channels_last(case):
    x, w, b = case.tensors(height=4, width=3)
    y = check_against_reference(case, x.to(memory_format=torch.channels_last), w, b)
    assert y.is_contiguous(memory_format=torch.channels_last)


NONCONTIGUOUS = {
    # name: a view of a larger tensor with the case's shape
    "channel_slice": lambda t: torch.stack([t, t], 2).flatten(1, 2)[:, ::2],
    "spatial_slice": lambda t: torch.nn.functional.pad(t, (1, 2, 2, 1))[:, :, 2:-1, 1:-2],
    "transposed_hw": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
    "batch_stride": lambda t: torch.stack([t, t], 1).flatten(0, 1)[::2],
    "channels_last_slice": lambda t: torch.stack([t, t], 2)
    .flatten(1, 2)
    .contiguous(memory_format=torch.channels_last)[:, 1::2],
}


@pytest.mark.parametrize("view", NONCONTIGUOUS, ids=str)
@pytest.mark.parametrize("case", SMALL_CASES[::3], ids=str)
def test_noncontiguous_inputs(case, view):
    x, w, b = case.tensors(height=4, width=5)
    xv = NONCONTIGUOUS[view](x)
    assert torch.equal(xv, x) and not xv.is_contiguous()
    check_against_reference(case, xv, w, b)


def test_noncontiguous_weight_and_2d_weight():
    case = Case("output", 12, 24, 3, 3)
    x, w, b = case.tensors()
    w_t = w.reshape(24, 4).t().contiguous().t()  # column-major (24, 4)
    assert not w_t.is_contiguous()
    check_against_reference(case, x, w_t, b)
    check_against_reference(case, x, w.reshape(24, 4), b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_ungrouped_column_major_weight_is_read_in_place(layout, dtype):
    """An ungrouped weight whose memory is its transpose (as the fused modules keep folded 1x1
    weights on CPU) is read without a copy: forward, grad input and grad weight, with both
    shuffle placements, the output shuffle folded into the weight rows (a row-major copy),
    and at batch 1 on a 7x7 map, where the output channels are split among threads."""
    for case, (batch, height, width) in ((Case("output", 40, 144, 1, 1), (1, 7, 7)), (Case("output", 24, 60, 1, 3),
                                          (2, 5, 6)), (Case("input", 24, 20, 1, 4), (2, 3, 5))):
        x, w, b = case.tensors(batch, height, width, dtype=torch.float64)
        w_t = w.reshape(case.cout, case.cin).t().contiguous().t().reshape(w.shape)
        assert w_t.stride()[:2] == (1, case.cout)
        x, w_t, b = x.to(dtype), w_t.to(dtype), b.to(dtype)
        check_against_reference(case, x.contiguous(memory_format=layout), w_t, b, dtype=dtype)


@pytest.mark.parametrize(
    "batch,height,width",
    [(1, 1, 1), (1, 7, 7), (3, 1, 9), (2, 17, 19), (1, 16, 32)],  # 17*19=323 spans two pixel tiles
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_odd_spatial_sizes_and_batches(batch, height, width, layout):
    for case in (Case("output", 24, 48, 8, 8), Case("input", 12, 24, 3, 4), Case("output", 15, 9, 3, 9)):
        x, w, b = case.tensors(batch, height, width)
        check_against_reference(case, x.to(memory_format=layout), w, b)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_empty_batch(layout):
    case = Case("output", 12, 24, 3, 3)
    x, w, b = case.tensors(batch=0)
    x = x.to(memory_format=layout).requires_grad_()
    w.requires_grad_()
    y = case.run(so, x, w, b)
    assert y.shape == (0, 24, 3, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w))
    assert so.channel_shuffle(x.detach(), 3).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_reduced_precision_dtypes(dtype, layout):
    for case in (Case("output", 24, 48, 3, 3), Case("input", 48, 24, 8, 6), Case("output", 16, 8, 4, 2)):
        x, w, b = case.tensors(batch=2, height=6, width=7)
        x, w, b = (t.to(dtype) for t in (x, w, b))
        check_against_reference(case, x.to(memory_format=layout), w, b, dtype=dtype)


# --------------------------------------------------------- residual epilogue
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(
    "placement,groups,cin,cout,shuffle_groups",
    [("output", 3, 12, 24, 3), ("output", 3, 12, 24, 8), ("output", 4, 16, 16, 1), ("input", 4, 16, 8, 4),
     ("input", 3, 24, 12, 8), ("output", 1, 5, 7, 1), ("output", 1, 6, 12, 3)],
)
def test_residual_epilogue(placement, groups, cin, cout, shuffle_groups, layout):
    check_residual_epilogue(placement, groups, cin, cout, shuffle_groups, layout)


# An ungrouped conv's output shuffle is folded into its weight rows (the kernel then writes in
# place): forward, grad input, grad weight and the residual's channel order, in float32 (the
# AVX-512 path) and in both layouts, at a Stage-2-like 24 -> 60 with g = 3.
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_ungrouped_output_shuffle_folded_into_the_weight(layout):
    check_residual_epilogue("output", 1, 24, 60, 3, layout, dtype=torch.float32)
    case = Case("output", 24, 60, 1, 3, True, True)
    x, w, b = case.tensors(batch=2, height=9, width=11, dtype=torch.float32)
    check_against_reference(case, x.to(memory_format=layout), w, b, dtype=torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_residual_epilogue_mixed_layouts_and_dtypes(dtype):
    for layout, residual_layout in ((torch.contiguous_format, torch.channels_last),
                                    (torch.channels_last, torch.contiguous_format)):
        check_residual_epilogue("output", 3, 12, 24, 3, layout, dtype=dtype, residual_format=residual_layout)


def test_residual_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 2, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    r = (torch.randn(2, 12, 2, 3, generator=gen, dtype=torch.float64) + 3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, r: so.group_conv1x1_shuffle(x, w, 3, relu=True, residual=r), (x, w, r), eps=1e-6, atol=1e-5
    )


# ------------------------------------------------------------------ gradcheck
GRADCHECK_CASES = [
    Case(p, cin, cout, g, s, bias, relu)
    for (cin, cout, g) in ((6, 12, 3), (8, 4, 4), (16, 16, 8), (4, 6, 2), (3, 5, 1))
    for p, s in conventions(cin, cout, g)
    for bias, relu in ((True, True), (False, False))
]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck_float64(case, layout):
    x, w, b = case.tensors(batch=2, height=2, width=3)
    if case.relu:  # keep pre-activations away from the ReLU kink, where finite differences lie
        x = x.sign() * (x.abs() + 0.5)
    inputs = [x.to(memory_format=layout).requires_grad_(), w.requires_grad_()]
    if b is not None:
        inputs.append(b.requires_grad_())

    def fn(x, w, b=None):
        return case.run(so, x, w, b)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


# -------------------------------------------------------------- channel shuffle
@pytest.mark.parametrize("channels,groups", [(12, 3), (12, 4), (240, 3), (384, 8), (7, 7), (5, 1)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_channel_shuffle(channels, groups, layout, dtype):
    x = torch.randn(2, channels, 5, 3).to(dtype=dtype, memory_format=layout)
    y = so.channel_shuffle(x, groups)
    assert torch.equal(y, torch.channel_shuffle(x.contiguous(), groups))
    assert torch.equal(y, reference.channel_shuffle(x, groups))
    assert y.is_contiguous(memory_format=layout)
    inverse = so.channel_shuffle(y, channels // groups)
    assert torch.equal(inverse, x)


def test_channel_shuffle_paper_example():
    """The paper's fact sheet: C=12, g=3 gives [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]."""
    x = torch.arange(12.0).reshape(1, 12, 1, 1)
    assert so.channel_shuffle(x, 3).flatten().tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    assert so.channel_shuffle(x, 4).flatten().tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]


def test_channel_shuffle_gradcheck_and_noncontiguous():
    x = torch.randn(2, 12, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: so.channel_shuffle(t, 3), [x])
    assert torch.autograd.gradgradcheck(lambda t: so.channel_shuffle(t, 4), [x])
    wide = torch.randn(2, 24, 3, 4)[:, 1::2]
    assert torch.equal(so.channel_shuffle(wide, 3), torch.channel_shuffle(wide.contiguous(), 3))


# ------------------------------------------------------------- determinism
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_grad_weight_is_deterministic_across_runs_and_thread_counts(layout):
    gen = torch.Generator().manual_seed(0)
    go = torch.randn(8, 240, 14, 14, generator=gen).to(memory_format=layout)
    x = torch.randn(8, 480, 14, 14, generator=gen).to(memory_format=layout)
    op = torch.ops.shufflenet_ops.conv1x1_shuffle_grad_weight
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (threads, threads, 1):
            torch.set_num_threads(n)
            results.append(op(go, x, 3, 1, 3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    # Fixed chunking: the same bits for any thread count, not just within tolerance.
    assert torch.equal(results[0], results[2])


def test_forward_matches_across_thread_counts():
    case = Case("output", 240, 60, 3, 3)
    x, w, b = case.tensors(batch=4, height=14, width=14, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = case.run(so, x, w, b)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(case.run(so, x, w, b), single, rtol=1e-5, atol=1e-5)


def test_all_conventions_enumerated():
    """The layer list covers every group count and both conventions in both placements."""
    seen = {(c.groups, c.placement, c.shuffle_groups == c.groups) for c in LAYER_CASES}
    for g, placement, paper in itertools.product((2, 3, 4, 8), ("output", "input"), (True, False)):
        assert (g, placement, paper) in seen
