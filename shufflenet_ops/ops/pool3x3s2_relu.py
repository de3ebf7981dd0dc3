"""relu(pool(x, 3, stride=2, padding=1)) for max and average pooling: specs and public functions.

The ShuffleNet stem's max pool (followed by ReLU when BN+ReLU move after it) and the
stride-2 unit's average-pool shortcut (whose concat is followed by ReLU). The C++ kernel
(CPU, channels_last) reads x once; there is no Triton kernel: on CUDA the reference (aten's
pool, then ReLU) runs.
"""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import empty_like_format, sample_tensors
from .spec import OpSpec

Tensor = torch.Tensor
_POOL = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]}


def _check(name: str):
    def check(x: Tensor) -> None:
        _checks.check_input(x, "x")
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"shufflenet_ops {name}: x must have a non-empty spatial size, got {list(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"shufflenet_ops {name}: x must have at least one channel, got {list(x.shape)}")

    return check


def _fake(x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    return empty_like_format(x, (n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output)


# The backward masks the gradient by the saved output as torch's ReLU does (threshold_backward:
# 0 where y <= 0, so a NaN output passes its gradient and an inf gradient where y <= 0 gives 0,
# not inf * 0), then runs aten's pool backward. The max pool's argmax is recomputed from x: the
# forward does not store indices.
def _max_pool_backward(ctx, grad: Tensor) -> tuple:
    x, y = ctx.saved_tensors
    grad = torch.ops.aten.threshold_backward(grad, y, 0)
    _, indices = torch.ops.aten.max_pool2d_with_indices(x, **_POOL)
    return (torch.ops.aten.max_pool2d_with_indices_backward(grad, x, **_POOL, dilation=[1, 1], ceil_mode=False,
                                                              indices=indices),)


def _avg_pool_backward(ctx, grad: Tensor) -> tuple:
    x, y = ctx.saved_tensors
    grad = torch.ops.aten.threshold_backward(grad, y, 0)
    return (torch.ops.aten.avg_pool2d_backward(grad, x, **_POOL, ceil_mode=False, count_include_pad=True,
                                               divisor_override=None),)


def _samples():
    for x in sample_tensors().x:
        yield (x,)


def _bad_calls(name: str):
    return (
        ("empty spatial size", lambda a: (a[0][:, :, :0],), ValueError, rf"{name}: x must have a non-empty spatial size"),
        ("3-D input", lambda a: (a[0][0],), ValueError, r"x must be 4-D"),
        ("no channels", lambda a: (a[0][:, :0],), ValueError, rf"{name}: x must have at least one channel"),
    )


def _pool_spec(name: str, backward) -> OpSpec:
    return OpSpec(
        name=name,
        reference=lambda x: getattr(reference, name)(x),  # looked up per call: tests patch it
        fake=_fake,
        check=_check(name),
        setup_context=_setup_context,
        backward=backward,
        samples=_samples,
        bad_calls=_bad_calls(name),
    )


MAX_POOL3X3S2_RELU = _pool_spec("max_pool3x3s2_relu", _max_pool_backward)
AVG_POOL3X3S2_RELU = _pool_spec("avg_pool3x3s2_relu", _avg_pool_backward)

_POOL_DOC = """``relu({kind}_pool2d(x, 3, stride=2, padding=1))`` in one pass over ``x``{extra}.

    One pass on CPU with channels_last ``x`` (the C++ kernel); aten's pool then ReLU in other
    layouts and on other devices.

    Args:
        x: ``(N, C, H, W)`` with ``H, W >= 1``; float32, float64, bfloat16 or float16.

    Returns:
        ``(N, C, (H - 1) // 2 + 1, (W - 1) // 2 + 1)``, ``x``'s dtype, device and memory
        format. Differentiable.

    Raises:
        TypeError: ``x`` is not a tensor or has an unsupported dtype.
        ValueError: ``x`` is not 4-D, has no channels or an empty spatial size.
        RuntimeError: the C++ extension is not built (CPU, backend 'cpp').
"""


def max_pool3x3s2_relu(x: Tensor) -> Tensor:
    return MAX_POOL3X3S2_RELU(x)


def avg_pool3x3s2_relu(x: Tensor) -> Tensor:
    return AVG_POOL3X3S2_RELU(x)


max_pool3x3s2_relu.__doc__ = _POOL_DOC.format(kind="max", extra=": the ShuffleNet stem's pool")
avg_pool3x3s2_relu.__doc__ = _POOL_DOC.format(
    kind="avg", extra=" (padding counted, as ``nn.AvgPool2d``): the stride-2 unit's shortcut"
)
