"""The ShuffleNet V2 unit's channel interleave and its inverse: specs.

``interleave(a, b)`` is ``shuffle(cat(a, b), 2)`` (a V2 unit's ending) and
``deinterleave(first, second)`` splits ``y = cat(first, second)`` back into its even and odd
channels (the gradient of ``interleave``; ``first`` and ``second`` are the two halves a
following stride-1 unit splits ``y`` into, so their gradients need no concatenation). Each is
the other's backward. The public functions are ``shufflenet_ops.functional.interleave``,
``deinterleave`` and ``split_interleave``."""

from __future__ import annotations

import torch
from torch._prims_common import suggest_memory_format

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, replace_argument, sample_tensors
from .spec import OpSpec


def _check_interleave(a: torch.Tensor, b: torch.Tensor) -> None:
    _checks.check_input(a, "a")
    _checks.check_input(b, "b")
    _checks.check_same(b, a, "b", "a")
    if a.shape != b.shape:
        raise ValueError(f"shufflenet_ops interleave: a and b must have the same shape, got {list(a.shape)} and "
                         f"{list(b.shape)}")


def _check_deinterleave(first: torch.Tensor, second: torch.Tensor) -> None:
    _checks.check_input(first, "first")
    _checks.check_input(second, "second")
    _checks.check_same(second, first, "second", "first")
    if (second.shape[0], *second.shape[2:]) != (first.shape[0], *first.shape[2:]):
        raise ValueError(
            "shufflenet_ops deinterleave: second and first must have the same batch and spatial sizes, got "
            f"{list(second.shape)} and {list(first.shape)}"
        )
    if (first.shape[1] + second.shape[1]) % 2:
        raise ValueError(
            "shufflenet_ops deinterleave: first and second must hold an even number of channels together, got "
            f"{first.shape[1]} + {second.shape[1]}"
        )


def _interleave_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``reference.interleave`` in one copy (torch's stack; the CUDA kernel), in ``a``'s
    memory format (as every op: its first tensor argument's)."""
    n, c, h, w = a.shape
    if suggest_memory_format(a) == torch.channels_last:
        # (N, H, W, C, 2) contiguous is (N, 2C, H, W) channels_last with the channels interleaved.
        y = torch.stack((a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)), dim=4).reshape(n, h, w, 2 * c)
        return in_format_of(a, y.permute(0, 3, 1, 2))
    return in_format_of(a, torch.stack((a, b), dim=2).reshape(n, 2 * c, h, w))


def _deinterleave_reference(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference.deinterleave`` with each part's pairs copied straight into the two outputs
    (the CUDA kernel), in ``first``'s memory format (``_layout_source``)."""
    like = _layout_source(first, second)
    if first.shape[1] % 2:  # a pair straddles the parts
        return tuple(in_format_of(like, half).clone() for half in reference.deinterleave(first, second))
    even, odd = _deinterleave_fake(first, second)
    channels_last = suggest_memory_format(like) == torch.channels_last
    offset = 0
    for part in (first, second):
        n, k, h, w = part.shape[0], part.shape[1] // 2, part.shape[2], part.shape[3]
        if channels_last:
            pairs = part.permute(0, 2, 3, 1).reshape(n, h, w, k, 2).permute(4, 0, 3, 1, 2)
        else:
            pairs = part.reshape(n, k, 2, h, w).permute(2, 0, 1, 3, 4)
        even[:, offset:offset + k].copy_(pairs[0])
        odd[:, offset:offset + k].copy_(pairs[1])
        offset += k
    return even, odd


def _interleave_fake(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, c, h, w = a.shape
    return empty_like_format(a, (n, 2 * c, h, w))


def _layout_source(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The part whose layout deinterleave's outputs take: ``first`` (as every op, its first
    argument), or ``second`` when ``first`` holds no channel (and so has no layout)."""
    return first if first.shape[1] > 0 else second


def _deinterleave_fake(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, h, w = first.shape
    shape, like = (n, (first.shape[1] + second.shape[1]) // 2, h, w), _layout_source(first, second)
    return empty_like_format(like, shape), empty_like_format(like, shape)


def _interleave_setup(ctx, inputs, output) -> None:
    ctx.split = inputs[0].shape[1]  # a's channels: the gradient's first half interleaves a's and b's first halves


def _interleave_backward(ctx, grad: torch.Tensor) -> tuple:
    return DEINTERLEAVE.run(ctx.backend, grad[:, :ctx.split], grad[:, ctx.split:])


def _deinterleave_setup(ctx, inputs, output) -> None:
    ctx.split = inputs[0].shape[1]


def _deinterleave_backward(ctx, grad_even: torch.Tensor | None, grad_odd: torch.Tensor | None) -> tuple:
    # An output that does not reach the loss has no gradient: zeros then (one buffer, not two).
    grad_even = torch.zeros_like(grad_odd) if grad_even is None else grad_even
    grad_odd = torch.zeros_like(grad_even) if grad_odd is None else grad_odd
    grad = INTERLEAVE.run(ctx.backend, grad_even, grad_odd)
    return grad[:, :ctx.split], grad[:, ctx.split:]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values and strides as a leaf that requires grad (opcheck differentiates every
    sample several times: a sample must not share a graph with another)."""
    return t.detach().requires_grad_()


def _interleave_samples():
    t = sample_tensors()
    for x, y in zip(t.x, t.residual):
        yield _leaf(x), _leaf(x * 2)
        yield _leaf(y[:, 1:6]), _leaf(y[:, 6:11])  # channel slices (a V2 unit's halves), odd channel counts
        yield _leaf(y[:, :12]), _leaf(x)  # a slice and a dense tensor
    yield _leaf(t.x[1]), _leaf(t.x[0])  # mixed layouts: the output follows a's


def _deinterleave_samples():
    t = sample_tensors()
    for y in t.residual:
        yield _leaf(y[:, :12]), _leaf(y[:, 12:])  # the halves of a V2 unit's output
        yield _leaf(y[:, :7]), _leaf(y[:, 7:16])  # odd split: a pair straddles the parts
        yield _leaf(y[:, :24]), _leaf(y[:, 24:])  # an empty second part
    yield _leaf(t.residual[0][:, :12]), _leaf(t.residual[1][:, 12:])  # mixed layouts: the outputs follow first's


INTERLEAVE = OpSpec(
    name="interleave",
    reference=_interleave_reference,
    fake=_interleave_fake,
    check=_check_interleave,
    setup_context=_interleave_setup,
    backward=_interleave_backward,
    samples=_interleave_samples,
    bad_calls=(
        ("shapes differ", replace_argument(1, lambda b: b[:, :3]), ValueError,
         r"a and b must have the same shape, got \[2, 12, 3, 5\] and \[2, 3, 3, 5\]"),
        ("3-D b", replace_argument(1, lambda b: b[0]), ValueError, r"b must be 4-D"),
        ("dtype mismatch", replace_argument(1, lambda b: b.float()), TypeError,
         r"b dtype .* does not match a dtype"),
        ("int a", replace_argument(0, lambda a: a.long()), TypeError, r"a has unsupported dtype"),
    ),
)

DEINTERLEAVE = OpSpec(
    name="deinterleave",
    reference=_deinterleave_reference,
    fake=_deinterleave_fake,
    check=_check_deinterleave,
    setup_context=_deinterleave_setup,
    backward=_deinterleave_backward,
    samples=_deinterleave_samples,
    bad_calls=(
        ("odd channel total", replace_argument(1, lambda s: s[:, :3]), ValueError,
         r"must hold an even number of channels together, got 12 \+ 3"),
        ("spatial sizes differ", replace_argument(1, lambda s: s[:, :, :2]), ValueError,
         r"second and first must have the same batch and spatial sizes, got \[2, 12, 2, 5\] and \[2, 12, 3, 5\]"),
        ("dtype mismatch", replace_argument(1, lambda s: s.float()), TypeError,
         r"second dtype .* does not match first dtype"),
        ("2-D first", replace_argument(0, lambda f: f[0, 0]), ValueError, r"first must be 4-D"),
    ),
)
