"""BatchNorm with batch statistics (training) and an optional ReLU as one op, and its backward
op: specs and the public function; also the pieces the stem's BN + ReLU + max pool op shares
(argument checks, sample inputs, bad calls, BN's backward written out).

In training a BN cannot fold into the conv before it. aten runs it as BN (statistics, then
the normalized tensor), the ReLU, and in backward the ReLU mask and BN's backward. The C++
kernel (csrc/cpu/batch_norm_relu_kernel.cpp) writes act(z) in the pass after the statistics,
and its backward masks the gradient inside its reduction and dx pass. There is no Triton
kernel: on CUDA the reference (aten's batch_norm and relu) runs.
"""

from __future__ import annotations

import torch

from .. import _checks, reference
from ._samples import in_format_of, replace_argument, sample_tensors
from .spec import OpSpec

Tensor = torch.Tensor
_NAME = "batch_norm_relu"


def check_affine(x: Tensor, weight: Tensor, bias: Tensor, eps: float, op: str) -> None:
    """A BN op's forward arguments (csrc/cpu/batch_norm.h and the kernels, same messages)."""
    _checks.check_batch_norm_input(x, weight, eps, op)
    _checks.check_vector(bias, "bias", x.shape[1])
    _checks.check_same(bias, x, "bias", "x")


def check_saved(x: Tensor, mean: Tensor, var: Tensor, named_like: dict[str, tuple[Tensor, list[int]]], op: str) -> None:
    """A BN backward's saved tensors: ``named_like`` maps a name to (tensor, expected shape)."""
    for name, (t, shape) in named_like.items():
        _checks.check_tensor(t, name)
        if list(t.shape) != shape:
            raise ValueError(f"shufflenet_ops {op}: {name} must have shape {shape}, got {list(t.shape)}")
        _checks.check_same(t, x, name, "x")
    for t, name in ((mean, "mean"), (var, "var")):
        _checks.check_vector(t, name, x.shape[1])
        _checks.check_same(t, x, name, "x")


def _check_backward(grad_out, x, weight, mean, var, out, eps, relu) -> None:
    op = f"{_NAME}_backward"
    _checks.check_batch_norm_input(x, weight, eps, op)
    check_saved(x, mean, var, {"grad_out": (grad_out, list(x.shape)), "out": (out, list(x.shape))}, op)


def _fake(x, weight, bias, eps, relu):
    c = x.shape[1]
    return torch.empty_like(x), x.new_empty((c,)), x.new_empty((c,))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _, eps, relu = inputs
    out, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.set_materialize_grads(False)  # no zero gradients made for the statistics
    ctx.save_for_backward(x, weight, mean, var, out)
    ctx.eps, ctx.relu = eps, relu


def _backward(ctx, grad_out, *_statistics) -> tuple:
    if grad_out is None:  # only the statistics were used
        return None, None, None, None, None
    x, weight, mean, var, out = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = BATCH_NORM_RELU_BACKWARD.run(
        ctx.backend, grad_out, x, weight, mean, var, out, ctx.eps, ctx.relu
    )
    return grad_x, grad_weight, grad_bias, None, None


def batch_norm_backward_reference(dz: Tensor, x: Tensor, weight: Tensor, mean: Tensor, var: Tensor, eps: float):
    """``(grad_x, grad_weight, grad_bias)`` of BatchNorm with batch statistics from ``dz``, the
    gradient of its output: ``grad_x = gamma * invstd * (dz - mean(dz) - xhat * mean(dz * xhat))``
    (the formula of aten's ``native_batch_norm_backward`` in training), written out."""
    c = x.shape[1]
    invstd = (var + eps).rsqrt().view(1, c, 1, 1)
    xhat = (x - mean.view(1, c, 1, 1)) * invstd
    grad_bias, grad_weight = dz.sum((0, 2, 3)), (dz * xhat).sum((0, 2, 3))
    count = x.numel() // c
    grad_x = weight.view(1, c, 1, 1) * invstd * (
        dz - (grad_bias / count).view(1, c, 1, 1) - xhat * (grad_weight / count).view(1, c, 1, 1)
    )
    return in_format_of(x, grad_x), grad_weight, grad_bias


def _reference_backward(grad_out, x, weight, mean, var, out, eps, relu):
    dz = torch.ops.aten.threshold_backward(grad_out, out, 0) if relu else grad_out
    return batch_norm_backward_reference(dz, x, weight, mean, var, eps)


def affine_inputs():
    """(x, weight, bias, eps) per layout, float64: 12 channels on 3x5 and on 6x7 pixels."""
    t = sample_tensors()
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(12, generator=gen, dtype=torch.float64).requires_grad_()
    bias = torch.randn(12, generator=gen, dtype=torch.float64).requires_grad_()
    odd = torch.randn(2, 12, 6, 7, generator=gen, dtype=torch.float64)
    for layout, x in enumerate(t.x):
        yield x, weight, bias, 1e-5
        fmt = torch.channels_last if layout else torch.contiguous_format
        yield odd.to(memory_format=fmt).requires_grad_(), weight, bias, 0.1


def _samples():
    for i, args in enumerate(affine_inputs()):
        yield (*args, i % 2 == 0)  # with and without the ReLU, both layouts


def _backward_samples():
    gen = torch.Generator().manual_seed(2)
    for x, weight, bias, eps, relu in _samples():
        out, mean, var = reference.batch_norm_relu(x.detach(), weight.detach(), bias.detach(), eps, relu)
        grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
        yield in_format_of(out, grad_out), x.detach(), weight.detach(), mean, var, out, eps, relu


# Bad forward calls shared with the stem's op: (x, weight, bias, eps, ...) arguments.
AFFINE_BAD_CALLS = (
    ("3-D input", lambda a: (a[0][0], *a[1:]), ValueError, r"x must be 4-D"),
    ("no channels", lambda a: (a[0][:, :0], a[1][:0], *a[2:]), ValueError, r"x must have at least one channel"),
    ("one value per channel", lambda a: (a[0][:1, :, :1, :1], *a[1:]), ValueError,
     r"batch statistics need more than one value per channel"),
    ("weight shape", replace_argument(1, lambda w: w[:5]), ValueError, r"weight must have shape \(12,\)"),
    ("weight dtype", replace_argument(1, lambda w: w.float()), TypeError, r"weight dtype .* does not match x dtype"),
    ("bias shape", replace_argument(2, lambda b: b[:5]), ValueError, r"bias must have shape \(12,\)"),
    ("negative eps", replace_argument(3, lambda e: -1.0), ValueError, r"eps must be finite and > 0"),
    ("zero eps", replace_argument(3, lambda e: 0.0), ValueError, r"eps must be finite and > 0"),
)

def batch_norm_specs(name: str, fake, setup_context, backward, samples, backward_parts) -> tuple[OpSpec, OpSpec]:
    """A training BN op's spec and its backward op's (``<name>_backward``): the reference is
    ``reference.<name>`` (looked up per call: tests patch it), the shared checks, bad calls
    and fake outputs; ``backward_parts``: (reference, check, samples, extra bad calls) of
    the backward op."""
    backward_reference, backward_check, backward_samples, backward_bad_calls = backward_parts
    forward = OpSpec(
        name=name,
        reference=lambda *args: getattr(reference, name)(*args),
        fake=fake,
        check=lambda x, weight, bias, eps, *_: check_affine(x, weight, bias, eps, name),
        setup_context=setup_context,
        backward=backward,
        samples=samples,
        training_only=True,
        bad_calls=AFFINE_BAD_CALLS,
    )
    grads = OpSpec(
        name=f"{name}_backward",
        reference=backward_reference,
        fake=lambda grad_out, x, weight, *_: (torch.empty_like(x), weight.new_empty(weight.shape),
                                               weight.new_empty(weight.shape)),
        check=backward_check,
        samples=backward_samples,
        bad_calls=(
            ("grad_out shape", replace_argument(0, lambda g: g[:, :, :1]), ValueError, r"grad_out must have shape"),
            ("mean shape", replace_argument(3, lambda m: m[:3]), ValueError, r"mean must have shape \(12,\)"),
            *backward_bad_calls,
        ),
    )
    return forward, grads


BATCH_NORM_RELU, BATCH_NORM_RELU_BACKWARD = batch_norm_specs(
    _NAME, _fake, _setup_context, _backward, _samples,
    (_reference_backward, _check_backward, _backward_samples, (
        ("out dtype", replace_argument(5, lambda o: o.float()), TypeError, r"out dtype .* does not match x dtype"),
    )),
)


def batch_norm_relu(
    x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5, relu: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """``relu(batch_norm(x, weight, bias, training=True, eps=eps))`` (the ReLU if ``relu``):
    BatchNorm with the batch's statistics and the ReLU after it as one op forward and one
    backward (C++ on CPU; aten's ops elsewhere).

    Args:
        x: ``(N, C, H, W)`` with ``C >= 1``, ``H, W >= 1`` and ``N * H * W >= 2``; float32,
            float64, bfloat16 or float16; NCHW or channels_last (other layouts are copied).
        weight, bias: the BN's affine parameters, ``(C,)``, ``x``'s dtype and device.
        eps: added to the variance (``nn.BatchNorm2d.eps``), finite, > 0.
        relu: apply the ReLU (torch's: NaN stays NaN).

    Returns:
        ``(out, mean, var)``: ``out`` has ``x``'s shape, dtype and memory format,
        differentiable in ``x``, ``weight`` and ``bias``; ``mean`` and ``var`` are the
        batch's per-channel mean and biased variance ``(C,)``, not differentiable, for the
        caller's running statistics (``nn.BatchNorm2d`` keeps ``var * n / (n - 1)``,
        ``n = N * H * W``).

    Raises:
        TypeError: a tensor argument is not a tensor, or has an unsupported or mismatched dtype.
        ValueError: a shape above does not hold (including one value per channel, where
            the batch variance is undefined), or ``eps`` is not a finite number > 0.
        RuntimeError: tensors on different devices; the C++ extension is not built (CPU).
    """
    return BATCH_NORM_RELU(x, weight, bias, float(eps), bool(relu))
