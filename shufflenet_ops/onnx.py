"""ONNX export of models built on the fused ops, to standard ONNX operators only.

The exporter (``torch.onnx.export(..., dynamo=True)``) translates each op of a
``torch.export`` graph with an ONNX Script function; it has none for the custom ops of
this package, and torch 2.13 has no public way to register one globally: a library hands
its translations to ``custom_translation_table`` (as torchvision does). This module holds
them, written with ONNX Script against the default ONNX domain (opset 18 and later), so the
exported file runs in any ONNX runtime without this package:

- ``group_conv1x1_shuffle``: ``Conv`` (``group=groups``, the bias as its ``B``), the shuffle
  as ``Reshape -> Transpose -> Reshape``, then ``Add`` of the residual and ``Relu``; with
  ``interleave_with``, ``Concat`` of it and that, and the shuffle by 2;
- ``shuffle_group_conv1x1``: the shuffle, then ``Conv``, ``Add``, ``Relu``;
- ``channel_shuffle``: ``Reshape -> Transpose -> Reshape``;
- ``interleave``: ``Concat``, then the shuffle by 2; ``deinterleave``: ``Concat``, the
  inverse shuffle, ``Split``;
- ``max_pool3x3s2_relu`` / ``avg_pool3x3s2_relu``: ``MaxPool`` / ``AveragePool`` (3x3,
  stride 2, padding 1; the average counts the padding, as ``nn.AvgPool2d``), then ``Relu``;
- ``shuffle_unit`` / ``shuffle_unit_v2`` (whole units, BNs folded): layer by layer, as the
  naive units compute them.

The simplest correct use is ``export``, a thin wrapper of ``torch.onnx.export`` that adds
the table; passing ``custom_translation_table=translation_table()`` yourself is the same.
Requires the ``onnx`` and ``onnxscript`` packages (what ``torch.onnx.export`` needs anyway).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

from .ops import SPECS
from .ops.spec import LIBRARY

__all__ = ["INFERENCE_OPS", "export", "translation_table"]

# The ops of the library an inference (forward-only) graph can contain: the forward ops
# (``OpSpec.is_forward``); the others are the pieces of a backward pass. Each needs a
# translation below.
INFERENCE_OPS = tuple(spec.name for spec in SPECS if spec.is_forward)


def _opset():
    # Imported on first use: ``import shufflenet_ops`` must not need onnxscript.
    try:
        from onnxscript import opset18
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "shufflenet_ops.onnx needs the onnx and onnxscript packages: pip install onnx onnxscript"
        ) from error
    return opset18


def _dims(value, start: int) -> list:
    """The sizes of ``value`` from axis ``start`` on (ints, or None where not static)."""
    shape = value.shape
    if shape is None:
        return [None] * (4 - start)
    return [d if isinstance(d, int) else None for d in list(shape)[start:]]


def _shuffle(x, groups: int, channels: int | None, spatial: list):
    """``torch.channel_shuffle(x, groups)`` on an (N, C, H, W) value: viewed as
    (N, groups, C/groups, H*W), the two channel axes swapped, viewed back as (N, C, H, W).
    Reshape's 0 copies N and -1 takes H*W, so the batch and spatial sizes may be dynamic.

    ``channels`` is C and ``spatial`` [H, W], the static sizes where known (ints, else None;
    a value made inside a translation carries no shape of its own): with all three known
    the last target is a constant and the output's shape stays known to shape inference.
    """
    op = _opset()
    if channels is None:  # a conv's weight fixes it; only a shuffle marked dynamic in C lands here
        raise ValueError("shufflenet_ops.onnx: a channel shuffle needs a static channel count")
    if groups == 1 or groups == channels:
        return x  # the identity permutation
    split = op.Constant(value_ints=[0, groups, channels // groups, -1])
    swapped = op.Transpose(op.Reshape(x, split), perm=[0, 2, 1, 3])
    if None in spatial:
        return op.Reshape(swapped, op.Shape(x))
    return op.Reshape(swapped, op.Constant(value_ints=[0, channels, *spatial]))


def _conv1x1(x, weight, bias, groups: int):
    op = _opset()
    if weight.shape is not None and len(weight.shape) == 2:  # (Cout, Cin/groups): made 4-D
        weight = op.Unsqueeze(weight, op.Constant(value_ints=[2, 3]))
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return op.Conv(*inputs, group=groups, kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0])


def _epilogue(y, residual, relu: bool):
    # Add then Relu: relu(y + residual); ONNX Runtime's Add and Relu keep NaN and inf as torch
    # does (relu(NaN) = NaN, checked).
    op = _opset()
    if residual is not None:
        y = op.Add(y, residual)
    return op.Relu(y) if relu else y


# The translations take the op's schema arguments (csrc/ops.cpp) in order, tensors as ONNX
# values and the int/bool arguments as Python values (annotated, so the exporter passes them
# as attributes).
def group_conv1x1_shuffle(
    x, weight, bias=None, groups: int = 1, shuffle_groups: int = 1, relu: bool = False, residual=None,
    interleave_with=None,
):
    """``act(shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups) + residual)`` in ONNX;
    with ``interleave_with``, that interleaved with it as ``Concat`` and the shuffle by 2.

    Args:
        x: (N, Cin, H, W) value.
        weight: (Cout, Cin/groups, 1, 1) or (Cout, Cin/groups) value, x's dtype.
        bias: (Cout,) value or None.
        groups: the conv's group count.
        shuffle_groups: the output shuffle's group count (1: none).
        relu: whether a ReLU ends the op.
        residual: (N, Cout, H, W) value added before the ReLU, or None.
        interleave_with: (N, Cout, H, W) value or None: the even channels of the output.

    Returns:
        The (N, Cout, H, W) output value, or (N, 2*Cout, H, W) with ``interleave_with``.
    """
    cout, spatial = _dims(weight, 0)[0], _dims(x, 2)
    y = _conv1x1(x, weight, bias, groups)
    y = _epilogue(_shuffle(y, shuffle_groups, cout, spatial), residual, relu)
    if interleave_with is None:
        return y
    return _shuffle(_opset().Concat(interleave_with, y, axis=1), 2, None if cout is None else 2 * cout, spatial)


def shuffle_group_conv1x1(
    x, weight, bias=None, groups: int = 1, shuffle_groups: int = 1, relu: bool = False, residual=None
):
    """``act(conv1x1(shuffle(x, shuffle_groups), weight, groups) + bias + residual)`` in ONNX.

    Args and Returns: as ``group_conv1x1_shuffle``; here ``shuffle_groups`` shuffles the
    input's Cin channels.
    """
    shuffled = _shuffle(x, shuffle_groups, _dims(x, 1)[0], _dims(x, 2))
    return _epilogue(_conv1x1(shuffled, weight, bias, groups), residual, relu)


def channel_shuffle(x, groups: int = 1):
    """``torch.channel_shuffle(x, groups)`` in ONNX.

    Args:
        x: (N, C, H, W) value.
        groups: divides C.

    Returns:
        The shuffled (N, C, H, W) value.
    """
    return _shuffle(x, groups, _dims(x, 1)[0], _dims(x, 2))


def interleave(a, b):
    """``shuffle(cat(a, b), 2)`` in ONNX: ``Concat``, then the shuffle by 2.

    Args:
        a, b: (N, C, H, W) values of one shape.

    Returns:
        The (N, 2C, H, W) value, ``a``'s channel j at 2j and ``b``'s at 2j + 1.
    """
    op = _opset()
    channels = _dims(a, 1)[0]
    return _shuffle(op.Concat(a, b, axis=1), 2, None if channels is None else 2 * channels, _dims(a, 2))


def deinterleave(first, second):
    """The inverse of ``interleave`` in ONNX: ``Concat`` of the parts, the shuffle by half the
    channels (the inverse of the shuffle by 2), then ``Split`` into two halves.

    Args:
        first, second: (N, C1, H, W) and (N, C2, H, W) values, C1 + C2 even.

    Returns:
        The even and the odd channels of their concatenation, two (N, (C1 + C2) / 2, H, W) values.
    """
    op = _opset()
    c1, c2 = _dims(first, 1)[0], _dims(second, 1)[0]
    channels = None if c1 is None or c2 is None else c1 + c2
    if channels is None:
        raise ValueError("shufflenet_ops.onnx: deinterleave needs static channel counts")
    inverse = _shuffle(op.Concat(first, second, axis=1), channels // 2, channels, _dims(first, 2))
    even, odd = op.Split(inverse, axis=1, num_outputs=2)
    return even, odd


def max_pool3x3s2_relu(x):
    """``relu(max_pool2d(x, 3, stride=2, padding=1))`` in ONNX (MaxPool ignores its padding).

    NaN: torch's max pool returns NaN for a window holding one; ONNX Runtime 1.32's MaxPool
    does not always (seen on CPU), a property of the runtime, not of this graph.

    Args:
        x: (N, C, H, W) value.

    Returns:
        The (N, C, (H-1)//2+1, (W-1)//2+1) value.
    """
    op = _opset()
    # MaxPool's optional second output (the argmax indices) is recorded too; unused, the
    # exporter's optimizer drops it.
    pooled, _ = op.MaxPool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    return op.Relu(pooled)


def avg_pool3x3s2_relu(x):
    """``relu(avg_pool2d(x, 3, stride=2, padding=1))`` in ONNX, the zero padding counted in
    every average (``count_include_pad=1``, ``nn.AvgPool2d``'s default).

    Args:
        x: (N, C, H, W) value.

    Returns:
        The (N, C, (H-1)//2+1, (W-1)//2+1) value.
    """
    op = _opset()
    pooled = op.AveragePool(x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    return op.Relu(pooled)


def _unpacked_pointwise(packed):
    """A ``(groups, K, M)`` packed 1x1 weight (``pack_pointwise_weight``) as the
    ``(groups * M, K, 1, 1)`` Conv weight, and its group count."""
    op = _opset()
    groups, k, m = _dims(packed, 0)
    if None in (groups, k, m):
        raise ValueError("shufflenet_ops.onnx: shuffle_unit needs static weight shapes")
    weight = op.Reshape(op.Transpose(packed, perm=[0, 2, 1]), op.Constant(value_ints=[groups * m, k, 1, 1]))
    return weight, groups


def _depthwise3x3(x, weight, bias, channels: int, stride: int):
    """A 3x3 depthwise Conv (padding 1) with its bias: the units' middle layer."""
    return _opset().Conv(x, weight, bias, group=channels, kernel_shape=[3, 3], strides=[stride, stride],
                         pads=[1, 1, 1, 1])


def shuffle_unit(
    x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
    shuffle_groups: int = 1, stride: int = 1,
):
    """A ShuffleNet V1 unit with folded BNs (``shufflenet_ops.shuffle_unit``) in ONNX, layer by
    layer: Conv + Relu, depthwise Conv, the shuffle, Conv, then Add + Relu (stride 1) or
    Concat with the average-pooled input + Relu (stride 2).

    Args:
        x: (N, Cin, H, W) value.
        compress_weight, expand_weight: packed (groups, K, M) values (``pack_pointwise_weight``).
        compress_bias, depthwise_bias, expand_bias: (B,), (B,), (E,) values.
        depthwise_weight: (B, 1, 3, 3) value.
        shuffle_groups: the shuffle before the expand conv.
        stride: 1 or 2.

    Returns:
        The output value, (N, Cin, H, W) or (N, Cin + E, (H-1)//2+1, (W-1)//2+1).
    """
    op = _opset()
    compress, compress_groups = _unpacked_pointwise(compress_weight)
    expand, expand_groups = _unpacked_pointwise(expand_weight)
    bottleneck = _dims(compress_bias, 0)[0]
    h = op.Relu(_conv1x1(x, compress, compress_bias, compress_groups))
    d = _depthwise3x3(h, depthwise_weight, depthwise_bias, bottleneck, stride)
    e = _conv1x1(_shuffle(d, shuffle_groups, bottleneck, [None, None]), expand, expand_bias, expand_groups)
    if stride == 1:
        return op.Relu(op.Add(x, e))
    return op.Concat(avg_pool3x3s2_relu(x), op.Relu(e), axis=1)


def shuffle_unit_v2(
    x, compress_weight, compress_bias, depthwise_weight, depthwise_bias, expand_weight, expand_bias,
    branch1_depthwise_weight=None, branch1_depthwise_bias=None, branch1_pointwise_weight=None,
    branch1_pointwise_bias=None, stride: int = 1,
):
    """A ShuffleNet V2 unit with folded BNs (``shufflenet_ops.shuffle_unit_v2``) in ONNX, as
    torchvision's code runs it: ``Split`` of x (stride 1), each branch's Conv + Relu,
    depthwise Conv, Conv + Relu, then ``Concat`` and the shuffle by 2 (Reshape, Transpose,
    Reshape).

    Args:
        x: (N, C, H, W) value.
        compress_weight, expand_weight, branch1_pointwise_weight: packed (groups, K, M)
            values (``pack_pointwise_weight``); the last is None for stride 1.
        compress_bias, depthwise_bias, expand_bias: (B,), (B,), (E,) values.
        depthwise_weight: (B, 1, 3, 3) value.
        branch1_depthwise_weight, branch1_depthwise_bias, branch1_pointwise_bias: (C, 1, 3, 3),
            (C,), (E,) values; None for stride 1.
        stride: 1 or 2.

    Returns:
        The (N, 2E, (H-1)//stride+1, (W-1)//stride+1) value.
    """
    op = _opset()
    compress, compress_groups = _unpacked_pointwise(compress_weight)
    expand, expand_groups = _unpacked_pointwise(expand_weight)
    bottleneck, half = _dims(compress_bias, 0)[0], _dims(expand_bias, 0)[0]
    if stride == 1:
        left, branch2_input = op.Split(x, axis=1, num_outputs=2)
    else:
        channels = _dims(branch1_depthwise_bias, 0)[0]
        pointwise, groups = _unpacked_pointwise(branch1_pointwise_weight)
        d = _depthwise3x3(x, branch1_depthwise_weight, branch1_depthwise_bias, channels, 2)
        left, branch2_input = op.Relu(_conv1x1(d, pointwise, branch1_pointwise_bias, groups)), x
    h = op.Relu(_conv1x1(branch2_input, compress, compress_bias, compress_groups))
    d = _depthwise3x3(h, depthwise_weight, depthwise_bias, bottleneck, stride)
    right = op.Relu(_conv1x1(d, expand, expand_bias, expand_groups))
    return _shuffle(op.Concat(left, right, axis=1), 2, 2 * half, [None, None])


_TRANSLATIONS = {
    "group_conv1x1_shuffle": group_conv1x1_shuffle,
    "shuffle_group_conv1x1": shuffle_group_conv1x1,
    "channel_shuffle": channel_shuffle,
    "interleave": interleave,
    "deinterleave": deinterleave,
    "max_pool3x3s2_relu": max_pool3x3s2_relu,
    "avg_pool3x3s2_relu": avg_pool3x3s2_relu,
    "shuffle_unit": shuffle_unit,
    "shuffle_unit_v2": shuffle_unit_v2,
}


def translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``.

    Returns:
        A dict from each op of ``INFERENCE_OPS`` (``torch.ops.shufflenet_ops.<name>.default``)
        to its ONNX Script translation. Merge it with your own entries if you have any.

    Raises:
        RuntimeError: the C++ extension that defines the ops is not built.
    """
    from . import _extension

    _extension.require()
    library = getattr(torch.ops, LIBRARY)
    return {getattr(library, name).default: _TRANSLATIONS[name] for name in INFERENCE_OPS}


def export(
    model: torch.nn.Module | torch.export.ExportedProgram,
    args: tuple[Any, ...] = (),
    f: str | os.PathLike | None = None,
    **kwargs: Any,
) -> torch.onnx.ONNXProgram:
    """``torch.onnx.export(model, args, f, dynamo=True, **kwargs)`` with this package's
    translations added to ``custom_translation_table``.

    Args:
        model: the module (call ``.eval()`` first: a fused conv+BN module folds its BN in
            eval mode only) or an ``ExportedProgram``.
        args: example positional inputs, e.g. ``(torch.randn(1, 3, 224, 224),)``.
        f: where to save the .onnx file, or None to only return the program.
        **kwargs: any other ``torch.onnx.export`` argument: ``dynamic_shapes``,
            ``input_names``, ``opset_version`` (18 or later), ``external_data``, ... A
            ``custom_translation_table`` you pass is merged, your entries winning.

    Returns:
        The ``torch.onnx.ONNXProgram`` (``.model_proto`` is the ONNX model).

    Raises:
        ValueError: ``dynamo=False`` was passed (the TorchScript exporter has no
            translations for these ops).
        torch.onnx.OnnxExporterError: the export itself failed.
    """
    if kwargs.pop("dynamo", True) is not True:
        raise ValueError("shufflenet_ops.onnx.export uses the dynamo exporter (dynamo=True) only")
    table = translation_table()
    table.update(kwargs.pop("custom_translation_table", None) or {})
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)

