"""A whole ShuffleNet V1 unit as one inference op (BN folded): spec, weight packing and the
public function.

``shuffle_unit`` computes, in one pass over row bands of the image (csrc/cpu/
shuffle_unit_kernel.cpp; docs/design.md, "The fused unit")::

    h = relu(conv1x1(x, compress, groups) + compress_bias)
    d = depthwise3x3(h, stride, padding=1) + depthwise_bias
    e = conv1x1(shuffle(d, shuffle_groups), expand, groups) + expand_bias
    y = relu(x + e)                                       stride 1
    y = cat(relu(avg_pool3x3s2(x)), relu(e))              stride 2

The 1x1 weights come group-transposed (``pack_pointwise_weight``): per group, the GEMM's
B operand as the kernel reads it, so a call repacks nothing. There is no backward: training
runs the unit's per-op path (``ShuffleUnit`` does so by itself).
"""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, replace_argument
from .spec import OpSpec

Tensor = torch.Tensor


def pack_pointwise_weight(weight: Tensor, groups: int) -> Tensor:
    """A 1x1 conv weight in the layout ``shuffle_unit`` takes.

    Args:
        weight: ``(Cout, Cin/groups, 1, 1)`` or ``(Cout, Cin/groups)``, any dtype.
        groups: the conv's groups, dividing ``Cout``.

    Returns:
        ``(groups, Cin/groups, Cout/groups)``, contiguous: group ``i``'s weight transposed,
        ``packed[i, k, m] == weight[i * Cout/groups + m, k]``.

    Raises:
        TypeError: ``weight`` is not a tensor or ``groups`` not an int.
        ValueError: ``weight`` is not a 1x1 conv weight, or ``groups`` < 1 or does not divide
            ``Cout``.
    """
    _checks.check_weight_shape(weight)
    _checks.check_groups(groups, "groups", weight.shape[0], "output channels (weight.shape[0])")
    cout, k = weight.shape[:2]
    return weight.reshape(groups, cout // groups, k).transpose(1, 2).contiguous()


def unpack_pointwise_weight(packed: Tensor) -> Tensor:
    """The ``(Cout, Cin/groups, 1, 1)`` conv weight of a ``pack_pointwise_weight`` result."""
    groups, k, m = packed.shape
    return packed.transpose(1, 2).reshape(groups * m, k, 1, 1)


def _check(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
           shuffle_groups, stride) -> None:
    """The C++ op's checks (csrc/cpu/shuffle_unit_kernel.cpp: check_shuffle_unit), same messages."""
    check_unit_input(x, stride, "shuffle_unit")
    operands = {
        "compress_weight": compress_weight, "compress_bias": compress_bias, "depthwise_weight": depthwise_weight,
        "depthwise_bias": depthwise_bias, "expand_weight": expand_weight, "expand_bias": expand_bias,
    }
    for name, t in operands.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"shuffle_unit: {name} must be a torch.Tensor, got {type(t).__name__}")
    cin = x.shape[1]
    bottleneck, branch = check_bottleneck_branch(
        compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias, "Cin", cin, "Cout"
    )
    _checks.check_groups(shuffle_groups, "shuffle_groups", bottleneck, "bottleneck channels")
    if stride == 1 and branch != cin:
        raise ValueError(
            f"shuffle_unit: a stride-1 unit adds x to the expand output: its {branch} channels must equal x's {cin}"
        )
    for name, t in operands.items():
        _checks.check_same(t, x, name, "x")


def check_unit_input(x: Tensor, stride: int, op: str) -> None:
    """x of the whole-unit op ``op``: 4-D float32/float64 with channels and pixels; ``stride`` 1 or 2
    (csrc/checks.h: check_unit_input, same messages)."""
    _checks.check_input(x, "x")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{op} supports float32 and float64, got x of dtype {x.dtype} (other dtypes: run the unit's per-op path)"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{op}: x must have at least one channel, got {list(x.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{op}: x must have a non-empty spatial size, got {list(x.shape)}")
    if isinstance(stride, bool) or not isinstance(stride, int):
        raise TypeError(f"{op}: stride must be an int, got {type(stride).__name__}")
    if stride not in (1, 2):
        raise ValueError(f"{op}: stride must be 1 or 2, got {stride}")


def check_bottleneck_branch(compress_weight: Tensor, compress_bias: Tensor, depthwise_weight: Tensor,
                            depthwise_bias: Tensor, expand_weight: Tensor, expand_bias: Tensor, inputs_name: str,
                            inputs: int, outputs_name: str) -> tuple[int, int]:
    """A unit's bottleneck branch (packed 1x1 + bias for ``inputs`` channels, 3x3 depthwise +
    bias, packed 1x1 + bias); returns (bottleneck, output channels). csrc/checks.h:
    check_bottleneck_branch, same messages."""
    bottleneck = check_packed(compress_weight, "compress_weight", inputs_name, inputs, "bottleneck")
    _checks.check_vector(compress_bias, "compress_bias", bottleneck)
    check_depthwise(depthwise_weight, "depthwise_weight", bottleneck)
    _checks.check_vector(depthwise_bias, "depthwise_bias", bottleneck)
    outputs = check_packed(expand_weight, "expand_weight", "bottleneck", bottleneck, outputs_name)
    _checks.check_vector(expand_bias, "expand_bias", outputs)
    return bottleneck, outputs


def check_depthwise(weight: Tensor, name: str, channels: int) -> None:
    """A ``(channels, 1, 3, 3)`` depthwise weight."""
    if tuple(weight.shape) != (channels, 1, 3, 3):
        raise ValueError(f"{name} must have shape ({channels}, 1, 3, 3), got {list(weight.shape)}")


def check_packed(weight: Tensor, name: str, inputs_name: str, inputs: int, outputs_name: str) -> int:
    """A ``pack_pointwise_weight`` result for ``inputs`` input channels; returns its outputs."""
    if weight.dim() != 3 or weight.shape[0] < 1 or weight.shape[0] * weight.shape[1] != inputs or weight.shape[2] < 1:
        raise ValueError(
            f"{name} must have shape (groups, {inputs_name}/groups, {outputs_name}/groups) with {inputs_name} = "
            f"{inputs}, got {list(weight.shape)}"
        )
    return weight.shape[0] * weight.shape[2]


def _fake(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
          shuffle_groups, stride):
    n, cin, h, w = x.shape
    branch = expand_weight.shape[0] * expand_weight.shape[2]
    channels = branch if stride == 1 else cin + branch
    return empty_like_format(x, (n, channels, (h - 1) // stride + 1, (w - 1) // stride + 1))


def _reference(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
               shuffle_groups, stride):
    y = reference.shuffle_unit(
        x, unpack_pointwise_weight(compress_weight), compress_bias, depthwise_weight, depthwise_bias,
        unpack_pointwise_weight(expand_weight), expand_bias, compress_weight.shape[0], expand_weight.shape[0],
        shuffle_groups, stride,
    )
    return in_format_of(x, y)


def _samples():
    """float64 units on odd sizes (5x7), NCHW and channels_last: stride 1 with both shuffle
    conventions (groups; bottleneck/groups, as the official code), stride 2 with an
    ungrouped compress (Stage 2's first unit) and with a grouped one."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def unit(cin, bottleneck, branch, compress_groups, expand_groups):
        return (
            pack_pointwise_weight(randn(bottleneck, cin // compress_groups), compress_groups), randn(bottleneck),
            randn(bottleneck, 1, 3, 3), randn(bottleneck),
            pack_pointwise_weight(randn(branch, bottleneck // expand_groups), expand_groups), randn(branch),
        )

    x = randn(2, 12, 5, 7)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        yield (xl, *unit(12, 6, 12, 3, 3), 3, 1)
        yield (xl, *unit(12, 6, 12, 3, 3), 2, 1)
        yield (xl, *unit(12, 6, 18, 1, 3), 3, 2)
        yield (xl, *unit(12, 8, 8, 4, 2), 4, 2)



_BAD_CALLS = (
    ("3-D x", replace_argument(0, lambda x: x[0]), ValueError, r"x must be 4-D"),
    ("bfloat16 x", lambda a: (a[0].bfloat16(), *(t.bfloat16() for t in a[1:7]), *a[7:]), TypeError,
     r"shuffle_unit supports float32 and float64"),
    ("empty spatial size", replace_argument(0, lambda x: x[:, :, :0]), ValueError, r"x must have a non-empty spatial size"),
    ("no channels", replace_argument(0, lambda x: x[:, :0]), ValueError, r"x must have at least one channel"),
    ("compress_weight", replace_argument(1, lambda w: w[:, :3]), ValueError, r"compress_weight must have shape"),
    ("compress_bias", replace_argument(2, lambda b: b[:5]), ValueError, r"compress_bias must have shape \(6,\)"),
    ("depthwise_weight", replace_argument(3, lambda w: w[:, :, :2]), ValueError, r"depthwise_weight must have shape \(6, 1, 3, 3\)"),
    ("depthwise_bias", replace_argument(4, lambda b: b[:5]), ValueError, r"depthwise_bias must have shape \(6,\)"),
    ("expand_weight", replace_argument(5, lambda w: w[:, :1]), ValueError, r"expand_weight must have shape"),
    ("expand_bias", replace_argument(6, lambda b: b[:11]), ValueError, r"expand_bias must have shape \(12,\)"),
    ("shuffle_groups", replace_argument(7, lambda s: 4), ValueError,
     r"bottleneck channels \(6\) must be divisible by shuffle_groups \(4\)"),
    ("stride", replace_argument(8, lambda s: 3), ValueError, r"stride must be 1 or 2, got 3"),
    ("stride-1 channels", lambda a: (*a[:5], a[5][:, :, :3], a[6][:9], *a[7:]), ValueError,
     r"its 9 channels must equal x's 12"),
    ("weight dtype", replace_argument(5, lambda w: w.float()), TypeError, r"expand_weight dtype .* does not match x dtype"),
    ("weight device", replace_argument(3, lambda w: w.to("meta")), RuntimeError, r"depthwise_weight is on meta but x is on cpu"),
)

SHUFFLE_UNIT = OpSpec(
    name="shuffle_unit",
    reference=_reference,
    fake=_fake,
    check=_check,
    inference_only=True,
    samples=_samples,
    bad_calls=_BAD_CALLS,
)


def shuffle_unit(
    x: Tensor,
    compress_weight: Tensor,
    compress_bias: Tensor,
    depthwise_weight: Tensor,
    depthwise_bias: Tensor,
    expand_weight: Tensor,
    expand_bias: Tensor,
    shuffle_groups: int,
    stride: int,
) -> Tensor:
    """A ShuffleNet V1 unit with folded BNs in one inference call (formula: module docstring).

    Args:
        x: ``(N, Cin, H, W)``, ``H, W >= 1``, float32 or float64 (float32 runs the AVX-512
            kernels where the CPU has them; float64 portable loops).
        compress_weight: ``(g1, Cin/g1, B/g1)``: the compress GConv's ``(B, Cin/g1, 1, 1)``
            weight through ``pack_pointwise_weight(weight, g1)``; B is the bottleneck width.
        compress_bias: ``(B,)``.
        depthwise_weight: ``(B, 1, 3, 3)``, indexed like the compress output (a model whose
            depthwise conv follows the shuffle permutes it first: ``ShuffleUnit`` does).
        depthwise_bias: ``(B,)``.
        expand_weight: ``(g2, B/g2, E/g2)`` from ``pack_pointwise_weight``; ``E == Cin`` for
            stride 1.
        expand_bias: ``(E,)``.
        shuffle_groups: the shuffle between the depthwise conv and the expand GConv,
            dividing B (``g2`` as the paper; ``B // g2`` as the official code's).
        stride: 1 (residual add) or 2 (concat with the pooled input).

    Returns:
        ``(N, Cin, H, W)`` for stride 1, ``(N, Cin + E, (H-1)//2+1, (W-1)//2+1)`` for stride
        2, x's dtype and memory format. Not differentiable: a gradient through it raises.

    Raises:
        TypeError: a tensor argument is missing, x is not float32/float64, or the dtypes differ.
        ValueError: a shape above does not hold, ``shuffle_groups`` does not divide B,
            ``stride`` is not 1 or 2.
        RuntimeError: tensors on different devices, or CPU tensors without the C++ extension.
    """
    return SHUFFLE_UNIT(x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight,
                        expand_bias, shuffle_groups, stride)
