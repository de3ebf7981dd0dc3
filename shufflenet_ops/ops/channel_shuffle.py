"""The standalone channel shuffle: spec and public function."""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, sample_tensors
from .spec import OpSpec


def _check(x: torch.Tensor, groups: int) -> None:
    _checks.check_input(x)
    _checks.check_groups(groups, "groups", x.shape[1], "channels")


def _setup_context(ctx, inputs, output) -> None:
    x, groups = inputs
    ctx.inverse_groups = x.shape[1] // groups or 1  # no channels: any group count is the identity


def _backward(ctx, grad: torch.Tensor) -> tuple:
    # The inverse of shuffle(., g) is shuffle(., C/g); running it as the op itself keeps it
    # differentiable (double backward).
    return CHANNEL_SHUFFLE.run(ctx.backend, grad, ctx.inverse_groups), None


def _samples():
    t = sample_tensors()
    for x in t.x:
        yield x, 3
        yield x, 4


CHANNEL_SHUFFLE = OpSpec(
    name="channel_shuffle",
    reference=lambda x, groups: in_format_of(x, reference.channel_shuffle(x, groups)),
    fake=lambda x, groups: empty_like_format(x, tuple(x.shape)),
    check=_check,
    triton="shuffle:channel_shuffle",
    setup_context=_setup_context,
    backward=_backward,
    samples=_samples,
    bad_calls=(
        ("channels not divisible by groups", lambda a: (a[0], 7), ValueError, r"channels \(12\) must be divisible by groups \(7\)"),
        ("groups 0", lambda a: (a[0], 0), ValueError, r"groups must be >= 1, got 0"),
        ("2-D input", lambda a: (a[0][0, 0], 2), ValueError, r"4-D"),
        ("bool input", lambda a: (a[0] > 0, 3), TypeError, r"unsupported dtype"),
    ),
)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle, as ``torch.channel_shuffle(x, groups)``, in one copy.

    Output channel ``j * groups + i`` is input channel ``i * (C // groups) + j`` (ShuffleNet,
    Zhang et al. 2018, Sec. 3.1: reshape to (groups, C/groups), transpose, flatten).

    Args:
        x: ``(N, C, H, W)``, float32, float64, bfloat16 or float16, any strides.
        groups: an int >= 1 that divides ``C``.

    Returns:
        ``(N, C, H, W)``, ``x``'s dtype and device, in ``x``'s memory format (NCHW or
        channels_last). Differentiable (also twice: the gradient is a shuffle too).

    Raises:
        TypeError: ``x`` is not a tensor or has another dtype; ``groups`` is not an int.
        ValueError: ``x`` is not 4-D; ``groups < 1`` or does not divide ``C``.
        RuntimeError: the configured backend cannot run on ``x``'s device, or the C++
            extension is not built.
    """
    return CHANNEL_SHUFFLE(x, groups)
