"""A whole ShuffleNet V2 unit as one inference op (BN folded): spec and the public function.

``shuffle_unit_v2`` computes, in one pass over row bands of the image (csrc/cpu/
shuffle_unit_v2_kernel.cpp; docs/design.md, "The fused V2 unit")::

    branch2(v) = relu(conv1x1(depthwise3x3(relu(conv1x1(v) + b), stride) + b) + b)
    branch1(v) = relu(conv1x1(depthwise3x3(v, 2) + b) + b)
    y = shuffle(cat(x1, branch2(x2)), 2),  x1, x2 = x.chunk(2, 1)     stride 1
    y = shuffle(cat(branch1(x), branch2(x)), 2)                       stride 2

``shuffle(cat(a, b), 2)`` puts ``a``'s channel ``j`` at ``2j`` and ``b``'s at ``2j + 1``: the
kernel interleaves each chunk's two branch outputs while they are in cache, and reads ``x2``
in place, so no concatenated, shuffled or sliced tensor is made. The 1x1 weights come packed
as ``shuffle_unit``'s (``pack_pointwise_weight``). There is no backward: training runs the
unit's per-op path (``InvertedResidual`` does so by itself).
"""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, replace_argument
from .shuffle_unit import (
    check_bottleneck_branch,
    check_depthwise,
    check_packed,
    check_unit_input,
    pack_pointwise_weight,
    unpack_pointwise_weight,
)
from .spec import OpSpec

Tensor = torch.Tensor

_BRANCH2 = ("compress_weight", "compress_bias", "depthwise_weight", "depthwise_bias", "expand_weight", "expand_bias")
_BRANCH1 = ("branch1_depthwise_weight", "branch1_depthwise_bias", "branch1_pointwise_weight", "branch1_pointwise_bias")


def _check(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
           branch1_depthwise_weight=None, branch1_depthwise_bias=None, branch1_pointwise_weight=None,
           branch1_pointwise_bias=None, stride=1) -> None:
    """The C++ op's checks (csrc/cpu/shuffle_unit_v2_kernel.cpp: check_shuffle_unit_v2), same messages."""
    check_unit_input(x, stride, "shuffle_unit_v2")
    branch2 = dict(zip(_BRANCH2, (compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight,
                                  expand_bias)))
    branch1 = dict(zip(_BRANCH1, (branch1_depthwise_weight, branch1_depthwise_bias, branch1_pointwise_weight,
                                  branch1_pointwise_bias)))
    for name, t in (*branch2.items(), *branch1.items()):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"shuffle_unit_v2: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if any(t is None for t in branch2.values()):
        raise TypeError("shuffle_unit_v2: every branch2 weight and bias must be a torch.Tensor, got None")
    cin = x.shape[1]
    if stride == 1:
        if any(t is not None for t in branch1.values()):
            raise ValueError("shuffle_unit_v2: a stride-1 unit has no branch1: its four tensors must be None")
        if cin % 2:
            raise ValueError(
                "shuffle_unit_v2: a stride-1 unit splits x's channels in half: x must have an even channel count, "
                f"got {cin}"
            )
    elif any(t is None for t in branch1.values()):
        raise TypeError("shuffle_unit_v2: a stride-2 unit needs all four branch1 tensors, got None")
    _, half = check_bottleneck_branch(
        compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias, "C2",
        cin // 2 if stride == 1 else cin, "E",
    )
    if stride == 1:
        if 2 * half != cin:
            raise ValueError(
                f"shuffle_unit_v2: a stride-1 unit interleaves x1 with branch2: its {half} output channels must "
                f"equal half of x's {cin}"
            )
    else:
        check_depthwise(branch1_depthwise_weight, "branch1_depthwise_weight", cin)
        _checks.check_vector(branch1_depthwise_bias, "branch1_depthwise_bias", cin)
        left = check_packed(branch1_pointwise_weight, "branch1_pointwise_weight", "Cin", cin, "E")
        _checks.check_vector(branch1_pointwise_bias, "branch1_pointwise_bias", left)
        if left != half:
            raise ValueError(
                f"shuffle_unit_v2: the branches interleave channel by channel: branch1's {left} output channels "
                f"must equal branch2's {half}"
            )
    for name, t in (*branch2.items(), *(branch1.items() if stride == 2 else ())):
        _checks.check_same(t, x, name, "x")


def _fake(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
          branch1_depthwise_weight=None, branch1_depthwise_bias=None, branch1_pointwise_weight=None,
          branch1_pointwise_bias=None, stride=1):
    n, _, h, w = x.shape
    half = expand_weight.shape[0] * expand_weight.shape[2]
    return empty_like_format(x, (n, 2 * half, (h - 1) // stride + 1, (w - 1) // stride + 1))


def _reference(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
               branch1_depthwise_weight=None, branch1_depthwise_bias=None, branch1_pointwise_weight=None,
               branch1_pointwise_bias=None, stride=1):
    has_branch1 = branch1_pointwise_weight is not None
    y = reference.shuffle_unit_v2(
        x, unpack_pointwise_weight(compress_weight), compress_bias, depthwise_weight, depthwise_bias,
        unpack_pointwise_weight(expand_weight), expand_bias, branch1_depthwise_weight, branch1_depthwise_bias,
        unpack_pointwise_weight(branch1_pointwise_weight) if has_branch1 else None, branch1_pointwise_bias, stride,
        compress_groups=compress_weight.shape[0], expand_groups=expand_weight.shape[0],
        branch1_groups=branch1_pointwise_weight.shape[0] if has_branch1 else 1,
    )
    return in_format_of(x, y)


def _samples():
    """float64 units on odd sizes (5x7), NCHW and channels_last: stride 1 and 2 with
    ungrouped 1x1 convs (the paper's), a stride-2 unit whose input is not twice its branch
    width (Stage 2's first: 24 -> 2 x 58 in 1x), grouped 1x1 convs, and 20-channel branches
    (not a multiple of the 16-lane vectors)."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def branch2(inputs, bottleneck, half, compress_groups=1, expand_groups=1):
        return (
            pack_pointwise_weight(randn(bottleneck, inputs // compress_groups), compress_groups), randn(bottleneck),
            randn(bottleneck, 1, 3, 3), randn(bottleneck),
            pack_pointwise_weight(randn(half, bottleneck // expand_groups), expand_groups), randn(half),
        )

    def branch1(cin, half, groups=1):
        return (randn(cin, 1, 3, 3), randn(cin), pack_pointwise_weight(randn(half, cin // groups), groups),
                randn(half))

    x = randn(2, 12, 5, 7)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        yield (xl, *branch2(6, 6, 6), None, None, None, None, 1)
        yield (xl, *branch2(6, 4, 6, 2, 2), None, None, None, None, 1)
        yield (xl, *branch2(12, 20, 20), *branch1(12, 20), 2)
        yield (xl, *branch2(12, 6, 6, 3, 3), *branch1(12, 6, 2), 2)



# Against the first sample (stride 1, x (2, 12, 5, 7), bottleneck 6, E 6) unless said.
_BAD_CALLS = (
    ("3-D x", replace_argument(0, lambda x: x[0]), ValueError, r"x must be 4-D"),
    ("bfloat16 x", lambda a: (a[0].bfloat16(), *(t.bfloat16() for t in a[1:7]), *a[7:]), TypeError,
     r"shuffle_unit_v2 supports float32 and float64"),
    ("empty spatial size", replace_argument(0, lambda x: x[:, :, :0]), ValueError, r"x must have a non-empty spatial size"),
    ("no channels", replace_argument(0, lambda x: x[:, :0]), ValueError, r"x must have at least one channel"),
    ("odd channels", replace_argument(0, lambda x: x[:, :11]), ValueError, r"x must have an even channel count, got 11"),
    ("compress_weight", replace_argument(1, lambda w: w[:, :3]), ValueError, r"compress_weight must have shape"),
    ("compress_bias", replace_argument(2, lambda b: b[:5]), ValueError, r"compress_bias must have shape \(6,\)"),
    ("depthwise_weight", replace_argument(3, lambda w: w[:, :, :2]), ValueError,
     r"depthwise_weight must have shape \(6, 1, 3, 3\)"),
    ("depthwise_bias", replace_argument(4, lambda b: b[:5]), ValueError, r"depthwise_bias must have shape \(6,\)"),
    ("expand_weight", replace_argument(5, lambda w: w[:, :1]), ValueError, r"expand_weight must have shape"),
    ("expand_bias", replace_argument(6, lambda b: b[:5]), ValueError, r"expand_bias must have shape \(6,\)"),
    ("stride-1 width", lambda a: (*a[:5], a[5][:, :, :4], a[6][:4], *a[7:]), ValueError,
     r"its 4 output channels must equal half of x's 12"),
    ("branch1 on stride 1", replace_argument(7, lambda _: torch.zeros(12, 1, 3, 3, dtype=torch.float64)), ValueError,
     r"a stride-1 unit has no branch1"),
    ("stride 2 without branch1", replace_argument(11, lambda _: 2), TypeError, r"needs all four branch1 tensors"),
    ("stride", replace_argument(11, lambda _: 3), ValueError, r"stride must be 1 or 2, got 3"),
    ("weight dtype", replace_argument(5, lambda w: w.float()), TypeError, r"expand_weight dtype .* does not match x dtype"),
    ("weight device", replace_argument(3, lambda w: w.to("meta")), RuntimeError,
     r"depthwise_weight is on meta but x is on cpu"),
)

SHUFFLE_UNIT_V2 = OpSpec(
    name="shuffle_unit_v2",
    reference=_reference,
    fake=_fake,
    check=_check,
    inference_only=True,
    samples=_samples,
    bad_calls=_BAD_CALLS,
)


def shuffle_unit_v2(
    x: Tensor,
    compress_weight: Tensor,
    compress_bias: Tensor,
    depthwise_weight: Tensor,
    depthwise_bias: Tensor,
    expand_weight: Tensor,
    expand_bias: Tensor,
    branch1_depthwise_weight: Tensor | None = None,
    branch1_depthwise_bias: Tensor | None = None,
    branch1_pointwise_weight: Tensor | None = None,
    branch1_pointwise_bias: Tensor | None = None,
    stride: int = 1,
) -> Tensor:
    """A ShuffleNet V2 unit with folded BNs in one inference call (formula: module docstring).

    Args:
        x: ``(N, C, H, W)``, ``H, W >= 1``, float32 or float64 (float32 runs the AVX-512
            kernels where the CPU has them; float64 portable loops); C even for stride 1.
        compress_weight: ``(g, C2/g, B/g)``: branch2's first 1x1 conv ``(B, C2/g, 1, 1)``
            through ``pack_pointwise_weight(weight, g)`` (``g = 1`` in ShuffleNet V2); C2 is
            ``C/2`` for stride 1, ``C`` for stride 2.
        compress_bias: ``(B,)``.
        depthwise_weight: ``(B, 1, 3, 3)``; depthwise_bias: ``(B,)``.
        expand_weight: ``(g, B/g, E/g)`` from ``pack_pointwise_weight``: branch2's last 1x1
            conv; ``E == C/2`` for stride 1. expand_bias: ``(E,)``.
        branch1_depthwise_weight, branch1_depthwise_bias: ``(C, 1, 3, 3)``, ``(C,)``
            (stride 2; None for stride 1).
        branch1_pointwise_weight, branch1_pointwise_bias: ``(g, C/g, E/g)`` from
            ``pack_pointwise_weight``, ``(E,)`` (stride 2; None for stride 1).
        stride: 1 (x1 passes through) or 2 (both branches downsample).

    Returns:
        ``(N, 2E, (H-1)//stride+1, (W-1)//stride+1)``, x's dtype and memory format. Not
        differentiable: a gradient through it raises.

    Raises:
        TypeError: a branch2 tensor is missing, a stride-2 call lacks a branch1 tensor, x is
            not float32/float64, or the dtypes differ.
        ValueError: a shape above does not hold, branch1 tensors given for stride 1,
            ``stride`` is not 1 or 2.
        RuntimeError: tensors on different devices, or CPU tensors without the C++ extension.
    """
    return SHUFFLE_UNIT_V2(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight,
                           expand_bias, branch1_depthwise_weight, branch1_depthwise_bias, branch1_pointwise_weight,
                           branch1_pointwise_bias, stride)
