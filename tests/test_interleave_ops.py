"""The interleave and deinterleave ops (ops/interleave.py, csrc/cpu/interleave_kernel.cpp) and
the functions built on them (``functional.interleave``, ``deinterleave``, ``split_interleave``),
against the textbook definition ``shuffle(cat(a, b), 2)``: every dtype, both layouts and
strided views, channel counts on both sides of the 16-lane vector tails, odd splits, empty
tensors, NaN/inf, gradients (fp64 gradcheck and gradgradcheck), the portable loops, bad input.
The generic checks (opcheck, the kernel vs the spec's reference, the bad calls everywhere) run
for these ops as for every op (test_registration.py, test_errors.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import shufflenet_ops as so
from shufflenet_ops import functional, reference

from _helpers import requires_extension

pytestmark = requires_extension

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
ops = torch.ops.shufflenet_ops


def _pair(n, c, h, w, dtype=torch.float32, fmt=torch.channels_last, seed=0):
    gen = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(n, c, h, w, generator=gen).to(dtype).contiguous(memory_format=fmt) for _ in range(2))
    return a, b


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", [1, 2, 7, 15, 16, 17, 24, 31, 33, 58, 116])
def test_interleave_and_inverse_are_the_textbook_permutation(fmt, dtype, channels):
    """Exact (a copy): interleave = shuffle(cat(a, b), 2), in a's layout; deinterleave of the
    result, split anywhere into two parts with an even total, gives a and b back, dense."""
    a, b = _pair(2, channels, 3, 5, dtype, FORMATS[fmt])
    y = ops.interleave(a, b)
    assert torch.equal(y, reference.interleave(a, b))
    assert y.is_contiguous(memory_format=FORMATS[fmt]) or channels == 1  # (1 channel: no layout of its own)
    for split in sorted({0, 1, channels - 1, channels, channels + 1, 2 * channels} & set(range(2 * channels + 1))):
        even, odd = ops.deinterleave(y[:, :split], y[:, split:])
        assert torch.equal(even, a) and torch.equal(odd, b), split
        assert even.is_contiguous(memory_format=FORMATS[fmt]) and odd.is_contiguous(memory_format=FORMATS[fmt])


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_strided_views_and_mixed_layouts(fmt):
    """Channel slices (a V2 unit's halves), a batch-strided view and a transposed view are read
    in place or copied once; the output follows the first argument's layout."""
    x = torch.randn(4, 40, 6, 7).contiguous(memory_format=FORMATS[fmt])
    a, b = x[:, 3:20], x[:, 21:38]
    assert torch.equal(ops.interleave(a, b), reference.interleave(a, b))
    a2, b2 = x[::2, :17], x[1::2, 17:34]
    assert torch.equal(ops.interleave(a2, b2), reference.interleave(a2, b2))
    t = torch.randn(4, 17, 7, 6).transpose(2, 3)  # neither layout: copied first
    assert torch.equal(ops.interleave(t, b), reference.interleave(t, b))
    other = torch.channels_last if fmt == "nchw" else torch.contiguous_format
    y = ops.interleave(a, b.contiguous(memory_format=other))
    assert y.is_contiguous(memory_format=FORMATS[fmt]) and torch.equal(y, reference.interleave(a, b))
    even, odd = ops.deinterleave(x[:, :20], x[:, 20:].contiguous(memory_format=other))
    assert torch.equal(even, x[:, 0::2]) and torch.equal(odd, x[:, 1::2])
    assert even.is_contiguous(memory_format=FORMATS[fmt])


def test_batch_one_single_pixel_and_empty_tensors():
    for shape in ((1, 5, 1, 1), (1, 3, 1, 9), (0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3)):
        a, b = torch.randn(shape), torch.randn(shape)
        y = ops.interleave(a, b)
        assert y.shape == (shape[0], 2 * shape[1], *shape[2:]) and torch.equal(y, reference.interleave(a, b))
        even, odd = ops.deinterleave(y[:, : shape[1]], y[:, shape[1]:])
        assert torch.equal(even, a) and torch.equal(odd, b)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_special_values_are_copied_bit_for_bit(fmt):
    """NaN (with its payload), +-inf, -0.0 and subnormals pass through unchanged."""
    a, b = _pair(2, 19, 3, 4, fmt=FORMATS[fmt])
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40])
    a[0, :5, 0, 0] = special
    b[1, -5:, 2, 3] = special
    y = ops.interleave(a, b)
    expected = reference.interleave(a, b)
    assert torch.equal(y.view(torch.int32), expected.contiguous(memory_format=FORMATS[fmt]).view(torch.int32))
    even, odd = ops.deinterleave(y[:, :19], y[:, 19:])
    assert torch.equal(even.view(torch.int32), a.view(torch.int32))
    assert torch.equal(odd.view(torch.int32), b.view(torch.int32))


@pytest.mark.slow
def test_portable_loops_without_avx512():
    """SHUFFLENET_OPS_CPU_GEMM=blas turns the AVX-512 permutes off: the portable loops give
    the same result (both checked against the definition)."""
    code = (
        "import torch, shufflenet_ops as so\n"
        "from shufflenet_ops import reference\n"
        "for c in (1, 15, 16, 17, 58):\n"
        "    a = torch.randn(2, c, 5, 3).contiguous(memory_format=torch.channels_last)\n"
        "    b = torch.randn_like(a)\n"
        "    y = torch.ops.shufflenet_ops.interleave(a, b)\n"
        "    assert torch.equal(y, reference.interleave(a, b))\n"
        "    e, o = torch.ops.shufflenet_ops.deinterleave(y[:, :c + c % 2], y[:, c + c % 2:])\n"
        "    assert torch.equal(e, a) and torch.equal(o, b)\n"
    )
    for gemm in ("", "blas"):
        env = dict(os.environ, SHUFFLENET_OPS_CPU_GEMM=gemm)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                             check=False)
        assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_gradients_fp64(fmt):
    """gradcheck and gradgradcheck (each op's backward is the other op) of the three public
    functions, on channel slices of one tensor as a V2 unit hands them over."""
    x = torch.randn(2, 10, 3, 4, dtype=torch.float64).contiguous(memory_format=FORMATS[fmt])
    a, b = x[:, :5].detach().requires_grad_(), x[:, 5:].detach().requires_grad_()
    for function in (functional.interleave, functional.split_interleave):
        assert torch.autograd.gradcheck(function, (a, b))
        assert torch.autograd.gradgradcheck(function, (a, b))
    y = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(functional.deinterleave, (y,))
    assert torch.autograd.gradgradcheck(functional.deinterleave, (y,))


def test_gradients_are_dense_in_the_gradients_layout():
    """The backward hands each input a dense gradient (the layers before read it at full
    speed), from one deinterleave op: no cat, no stack."""
    a, b = _pair(2, 6, 3, 4)
    a.requires_grad_(), b.requires_grad_()
    first, second = functional.split_interleave(a, b)
    ((first * 2).sum() + second.sum()).backward()
    assert a.grad.is_contiguous(memory_format=torch.channels_last) and b.grad.is_contiguous(
        memory_format=torch.channels_last)
    # a's and b's first 3 channels went to the first half (times 2), the rest to the second
    expected = torch.ones_like(a.grad)
    expected[:, :3] = 2
    assert torch.equal(a.grad, expected) and torch.equal(b.grad, expected)


def test_unused_output_gets_a_zero_gradient():
    y = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    even, _ = functional.deinterleave(y)
    even.sum().backward()
    assert torch.equal(y.grad[:, 0::2], torch.ones_like(even)) and torch.equal(y.grad[:, 1::2], torch.zeros_like(even))


def test_reference_backend_gives_the_same_values():
    a, b = _pair(2, 7, 3, 5, torch.float64)
    with so.backend("reference"):
        expected = functional.interleave(a, b), functional.split_interleave(a, b)
    got = functional.interleave(a, b), functional.split_interleave(a, b)
    assert torch.equal(got[0], expected[0]) and all(torch.equal(g, e) for g, e in zip(got[1], expected[1]))


@pytest.mark.parametrize("bad,error,message", [
    (lambda a, b: (a, b[:, :3]), ValueError, r"interleave expects two 4-D tensors of the same shape"),
    (lambda a, b: (a[0], b[0]), ValueError, r"interleave expects two 4-D tensors"),
    (lambda a, b: (a, b.double()), ValueError, r"same shape, dtype and device"),
    (lambda a, b: (a.int(), b.int()), TypeError, r"a has unsupported dtype torch.int32"),
    (lambda a, b: (1, b), TypeError, r"interleave expects tensors, got a of type int"),
    (lambda a, b: (a, None), TypeError, r"interleave expects tensors, got b of type NoneType"),
])
def test_functional_interleave_rejects_bad_input(bad, error, message):
    a, b = _pair(2, 6, 3, 3)
    with pytest.raises(error, match=message):
        functional.interleave(*bad(a, b))
    with pytest.raises(error, match=message):
        functional.split_interleave(*bad(a, b))


@pytest.mark.parametrize("bad", [torch.randn(2, 5, 3, 3), torch.randn(2, 6, 3)], ids=["odd", "3-D"])
def test_functional_deinterleave_rejects_bad_input(bad):
    with pytest.raises(ValueError, match=r"deinterleave expects an \(N, 2C, H, W\) tensor"):
        functional.deinterleave(bad)
    with pytest.raises(TypeError, match=r"deinterleave expects a tensor, got str"):
        functional.deinterleave("y")
