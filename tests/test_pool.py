"""The pool + ReLU ops (the stem's max pool, the stride-2 units' average-pool shortcut)
against their references: every dtype and layout, odd shapes, NaN/inf, gradients and bad
inputs (opcheck: tests/test_registration.py). float32 channels_last takes the AVX-512 path where the CPU has it; float64,
bfloat16 and float16 the portable loop; NCHW aten's pool."""

from __future__ import annotations

import pytest
import torch

from shufflenet_ops import functional, reference

from _helpers import requires_extension

pytestmark = requires_extension

OPS = ("max_pool3x3s2_relu", "avg_pool3x3s2_relu")
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def check(op: str, x: torch.Tensor) -> torch.Tensor:
    y = getattr(functional, op)(x)
    expected = getattr(reference, op)(x.double()).to(x.dtype)
    assert y.shape == expected.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, expected, atol=TOLERANCE[x.dtype], rtol=TOLERANCE[x.dtype], equal_nan=True)
    return y


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("dtype", TOLERANCE, ids=str)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(2, 24, 14, 14), (3, 17, 7, 9), (1, 33, 2, 3), (2, 5, 1, 1), (1, 1, 5, 4)])
def test_matches_reference(op, dtype, layout, shape):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).contiguous(memory_format=layout)
    y = check(op, x)
    if layout == torch.channels_last and shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", OPS)
def test_nan_and_inf_propagate_as_in_aten(op, dtype):
    x = torch.randn(2, 20, 6, 7, dtype=dtype)
    x[0, 3, 2, 2] = float("nan")  # inside several windows
    x[1, 19, 0, 0] = float("inf")
    x[1, 4, 5, 6] = -float("inf")
    x[0, 17, 4, 1] = float("nan")
    check(op, x.contiguous(memory_format=torch.channels_last))


def test_empty_batch_and_strided_input():
    for op in OPS:
        assert getattr(functional, op)(torch.randn(0, 8, 5, 5)).shape == (0, 8, 3, 3)
        big = torch.randn(2, 16, 9, 11).contiguous(memory_format=torch.channels_last)
        check(op, big[:, ::2])  # a channel slice: neither layout is dense


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op, layout):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 5, generator=gen, dtype=torch.float64)
    x = (x.sign() * (x.abs() + 0.1)).contiguous(memory_format=layout).requires_grad_()
    assert torch.autograd.gradcheck(getattr(torch.ops.shufflenet_ops, op), (x,))


@pytest.mark.parametrize("op", OPS)
def test_gradients_match_reference_float32_channels_last(op):
    x = torch.randn(2, 24, 9, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    go = torch.randn(2, 24, 5, 4)
    (getattr(functional, op)(x) * go).sum().backward()
    (getattr(reference, op)(x_ref) * go).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


@pytest.mark.parametrize("op", OPS)
def test_bad_inputs_name_the_problem(op):
    fn = getattr(functional, op)
    with pytest.raises(ValueError, match="must be 4-D"):
        fn(torch.randn(3, 5, 5))
    with pytest.raises(TypeError, match="unsupported dtype"):
        fn(torch.ones(1, 2, 5, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="non-empty spatial size"):
        fn(torch.randn(1, 2, 0, 5))
    # The registered op checks the same things in C++.
    with pytest.raises(ValueError, match="must be 4-D"):
        getattr(torch.ops.shufflenet_ops, op)(torch.randn(3, 5, 5))
    with pytest.raises(ValueError, match="non-empty spatial size"):
        getattr(torch.ops.shufflenet_ops, op)(torch.randn(1, 2, 5, 0))
