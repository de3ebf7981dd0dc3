"""Shared helpers: the reference comparison every fast path goes through."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings


import shufflenet_ops

# CI (CI=true) explores a fixed sequence of examples so a submission's result is
# reproducible; locally hypothesis keeps exploring new random examples.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

GROUPS = (1, 2, 3, 4, 8)

# Tolerances per dtype, relative to a float64 reference.
TOLERANCES = {
    torch.float64: dict(rtol=1e-7, atol=1e-7),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}

requires_extension = pytest.mark.skipif(
    not shufflenet_ops._extension.available(), reason="C++ extension not built"
)


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """Compare a result computed in ``dtype`` with a float64 reference."""
    tol = TOLERANCES[dtype]
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=tol["rtol"], atol=tol["atol"] * scale
    )


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
    """``act(... + residual)`` and the gradients of all four tensors vs the float64 reference."""
    import contextlib

    from shufflenet_ops import reference

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, *spatial, generator=gen, dtype=torch.float64).to(memory_format=memory_format)
    w = torch.randn(cout, cin // groups, 1, 1, generator=gen, dtype=torch.float64)
    b = torch.randn(cout, generator=gen, dtype=torch.float64)
    r = torch.randn(2, cout, *spatial, generator=gen, dtype=torch.float64)
    r = r.to(memory_format=residual_format or memory_format)
    leaves = [t.to(dtype).requires_grad_() for t in (x, w, b, r)]
    ref_leaves = [t.detach().clone().requires_grad_() for t in (x, w, b, r)]

    def run(impl, x, w, b, r):
        if placement == "output":
            return impl.group_conv1x1_shuffle(x, w, groups, bias=b, shuffle_groups=shuffle_groups, relu=True, residual=r)
        return impl.shuffle_group_conv1x1(x, w, groups, shuffle_groups, bias=b, relu=True, residual=r)

    with shufflenet_ops.backend(backend) if backend else contextlib.nullcontext():
        y = run(shufflenet_ops, *leaves)
        y_ref = run(reference, *ref_leaves)
        assert_close_to(y, y_ref, dtype)
        go = torch.randn(y.shape, generator=gen, dtype=torch.float64)
        y.backward(go.to(dtype))
    y_ref.backward(go)
    for leaf, ref in zip(leaves, ref_leaves):
        assert_close_to(leaf.grad, ref.grad, dtype)


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
    tol = TOLERANCES[dtype]
    scale = max(1.0, e[finite].abs().max().item()) if finite.any() else 1.0
    torch.testing.assert_close(
        a[finite], e[finite], rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{what} ({dtype}): {m}"
    )
