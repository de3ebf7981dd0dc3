"""The fused grouped 1x1 conv with a channel shuffle on its output or its input, and its
backward ops: specs and public functions.

The forward is ``y = act(Pout(conv1x1(Pin(x), W, groups) + bias) + residual)`` with
``P = channel_shuffle`` by ``out_shuffle`` / ``in_shuffle`` groups (1 = none); exactly one of
them is 1 in the two public placements. Backward (docs/design.md, "Backward"), with
``go = dL/dy`` masked by the ReLU as torch masks it (threshold_backward: 0 where y <= 0, so a
NaN output passes its gradient)::

    grad_x = Pin^-1(conv_transpose(Pout^-1(go), W))
    grad_W = sum over pixels of Pout^-1(go) (x) Pin(x), per group
    grad_b = channel sums of Pout^-1(go)
    grad_residual = go                      (the residual is added in output order)

``group_conv1x1_shuffle`` may also write an interleaved output, ``y = interleave(a, f)`` with
``f`` the above and ``a = interleave_with`` (channel 2j = a[:, j], 2j+1 = f[:, j]: a
ShuffleNet V2 unit's ``shuffle(cat(a, f), 2)``); the kernels write f straight into y's odd
channels. Its backward splits dL/dy once into two dense tensors (``functional.deinterleave``):
the even half is grad_a, the odd half is ``go`` above (masked by y's odd channels).

The kernels read and write through the permuted channel indices, so no shuffled tensor is
ever materialised; the references below write the same formulas with explicit shuffles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _checks, reference
from ._samples import empty_like_format, in_format_of, sample_tensors
from .interleave import DEINTERLEAVE
from .spec import OpSpec
from .table import kernel_table

Tensor = torch.Tensor


def _inverse(t: Tensor, shuffle_groups: int) -> Tensor:
    """``P^-1(t)`` for ``P = channel_shuffle(., shuffle_groups)``."""
    return reference.channel_shuffle(t, t.shape[1] // shuffle_groups)


# ----------------------------------------------------------------------- forward
def _conv_fake(x, weight, bias, groups, shuffle_groups, relu, residual=None, interleave_with=None):
    n, _, h, w = x.shape
    channels = weight.shape[0] * (1 if interleave_with is None else 2)
    return empty_like_format(x, (n, channels, h, w))


def _conv_setup_context(in_shuffle_of, out_shuffle_of):
    def setup_context(ctx, inputs, output) -> None:
        # shuffle_group_conv1x1 has 7 arguments, group_conv1x1_shuffle 8 (interleave_with).
        x, weight, bias, groups, shuffle_groups, relu, residual, *interleave_with = inputs
        ctx.save_for_backward(x, weight, output if relu else None)
        ctx.groups, ctx.relu = groups, relu
        ctx.in_shuffle, ctx.out_shuffle = in_shuffle_of(shuffle_groups), out_shuffle_of(shuffle_groups)
        ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
        ctx.arguments = len(inputs)
        ctx.interleaved = bool(interleave_with) and interleave_with[0] is not None

    return setup_context


def _fused_triton_backward(backend: str | None, device: torch.device):
    """The Triton backward in one call (``triton/conv_backward.py:conv1x1_shuffle_backward``:
    the ReLU mask and the bias gradient folded into the grad kernels), or None where the
    backward must run op by op: any backend but the Triton table called directly (the C++
    ops, the dispatcher, torch.compile's graphs), and with create_graph=True (grad mode on
    inside backward), where each op's result must carry its double-backward node."""
    if backend != "triton" or torch.is_grad_enabled():
        return None
    from ..triton.table import TRITON, conv1x1_shuffle_backward

    return conv1x1_shuffle_backward if kernel_table(backend, device) is TRITON else None


def _conv_backward(ctx, grad: Tensor) -> tuple:
    """The gradients of (x, weight, bias, groups, shuffle_groups, relu, residual[,
    interleave_with]).

    The backward ops run through ``OpSpec.run`` on the forward's backend: with
    create_graph=True their results then carry a node that raises on double backward,
    instead of silently coming back detached. Eager Triton without create_graph takes the
    fused Triton backward instead (``_fused_triton_backward``)."""
    x, weight, output = ctx.saved_tensors
    grad_passthrough = None
    if ctx.interleaved:
        # One copy of dL/dy into two dense tensors in its memory format: the passthrough's
        # gradient must be dense (the ReLU backward before it walks a strided channels_last
        # view ~10x slower), and the conv's grad kernels then read a dense go too (in
        # channels_last the C++ kernels would copy a strided view once per kernel). The ReLU
        # mask, y's odd channels, is made dense too: aten's threshold_backward reading it as
        # a strided view took 1.8 ms against 0.38 ms with this copy ((16, 116, 28, 28)
        # channels_last fp32, 2 threads; deinterleave included).
        half = grad.shape[1] // 2
        grad_passthrough, grad = DEINTERLEAVE.run(ctx.backend, grad[:, :half], grad[:, half:])
        if output is not None:
            # Only the odd half is needed: one strided copy, as fast as the deinterleave op
            # here, which would write the even half too ((16, 116, 28, 28): 94 vs 121 us).
            channels_last = grad.is_contiguous(memory_format=torch.channels_last) and not grad.is_contiguous()
            output = output[:, 1::2].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    grads = _conv_gradients(ctx, grad, x, weight, output)
    return grads + ((grad_passthrough,) if ctx.arguments == 8 else ())


def _conv_gradients(ctx, grad: Tensor, x: Tensor, weight: Tensor, output: Tensor | None) -> tuple:
    """The gradients of the first 7 arguments, given dL/df (f: the conv's own output)."""
    backend, groups, in_shuffle, out_shuffle = ctx.backend, ctx.groups, ctx.in_shuffle, ctx.out_shuffle
    need_residual = ctx.has_residual and ctx.needs_input_grad[6]
    fused = _fused_triton_backward(backend, grad.device)
    if ctx.relu and (need_residual or not fused):  # the masked gradient is needed as a tensor
        grad = RELU_GRAD.run(backend, grad, output)
        output = None
    if fused:
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2])
        grad_x, grad_weight, grad_bias = fused(grad, x, weight, output, groups, in_shuffle, out_shuffle, needs)
        if grad_weight is not None:
            grad_weight = grad_weight.reshape(weight.shape)
        return grad_x, grad_weight, grad_bias, None, None, None, grad if need_residual else None
    grad_x = grad_weight = grad_bias = grad_residual = None
    if ctx.needs_input_grad[0]:
        grad_x = GRAD_INPUT.run(backend, grad, weight, groups, in_shuffle, out_shuffle)
    if ctx.needs_input_grad[1]:
        grad_weight = GRAD_WEIGHT.run(backend, grad, x, groups, in_shuffle, out_shuffle).reshape(weight.shape)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = GRAD_BIAS.run(backend, grad, out_shuffle)
    if ctx.has_residual and ctx.needs_input_grad[6]:
        grad_residual = grad
    return grad_x, grad_weight, grad_bias, None, None, None, grad_residual


def _conv_samples(placement: str):
    t = sample_tensors()
    for layout, x in enumerate(t.x):
        w, b, r = t.w, t.b, t.residual[layout]
        if placement == "output":  # shuffle_groups divides Cout = 24
            yield x, w, b, 3, 3, True
            yield x, w, None, 3, 8, False
            yield x, w, b, 3, 3, True, r
            # an interleaved output, y = interleave(a, f): 48 channels
            a = t.passthrough[layout]
            yield x, w, b, 3, 3, True, None, a
            yield x, w, None, 3, 8, False, r, a
        else:  # shuffle_groups divides Cin = 12
            yield x, w, b, 3, 4, True
            yield x, w, None, 3, 4, True, r
            yield x, w.reshape(24, 4), None, 3, 3, False


_CONV_BAD_CALLS = (
    ("groups 0", lambda a: (a[0], a[1], a[2], 0, 1, False), ValueError, r"groups must be >= 1"),
    ("weight mismatch", lambda a: (a[0], a[1][:, :3], a[2], 3, 3, False), ValueError,
     r"expected weight.shape\[1\] == 4"),
    ("3x3 kernel", lambda a: (a[0], a[1].expand(24, 4, 3, 3), a[2], 3, 3, False), ValueError, r"1x1 kernel"),
    ("integer input", lambda a: (a[0].int(), a[1].int(), None, 3, 3, False), TypeError, r"unsupported dtype"),
    ("bias dtype", lambda a: (a[0], a[1], a[2].float(), 3, 3, False), TypeError,
     r"bias dtype .* does not match input dtype"),
    ("bias length", lambda a: (a[0], a[1], a[2][:5], 3, 3, False), ValueError, r"bias must have shape \(24,\)"),
    ("weight device", lambda a: (a[0], a[1].to("meta"), a[2], 3, 3, False), RuntimeError,
     r"weight is on meta but input is on cpu"),
    ("residual shape", lambda a: (a[0], a[1], a[2], 3, 3, True, a[0]), ValueError,
     r"residual must have the output's shape \(2, 24, 3, 5\), got .2, 12, 3, 5."),
    ("shuffle_groups 0", lambda a: (a[0], a[1], a[2], 3, 0, False), ValueError, r"shuffle_groups must be >= 1"),
)


_INTERLEAVE_BAD_CALLS = (
    ("interleave_with shape", lambda a: (*a[:6], None, a[0]), ValueError,
     r"interleave_with must have the conv output's shape \(2, 24, 3, 5\), got .2, 12, 3, 5."),
    ("interleave_with dtype", lambda a: (*a[:6], None, torch.zeros(2, 24, 3, 5)), TypeError,
     r"interleave_with dtype .* does not match input dtype"),
    ("interleave_with device", lambda a: (*a[:6], None, torch.zeros(2, 24, 3, 5, dtype=a[0].dtype, device="meta")),
     RuntimeError, r"interleave_with is on meta but input is on cpu"),
)


def _reference_output_shuffled(x, weight, bias, groups, shuffle_groups, relu, residual=None, interleave_with=None):
    y = reference.group_conv1x1_shuffle(
        x, weight, groups, bias=bias, shuffle_groups=shuffle_groups, relu=relu, residual=residual,
        interleave_with=interleave_with,
    )
    return in_format_of(x, y)


def _reference_input_shuffled(x, weight, bias, groups, shuffle_groups, relu, residual=None):
    y = reference.shuffle_group_conv1x1(x, weight, groups, shuffle_groups, bias=bias, relu=relu, residual=residual)
    return in_format_of(x, y)


GROUP_CONV1X1_SHUFFLE = OpSpec(
    name="group_conv1x1_shuffle",
    reference=_reference_output_shuffled,
    fake=_conv_fake,
    check=lambda x, weight, bias, groups, shuffle_groups, relu, residual=None, interleave_with=None: (
        _checks.check_conv1x1(x, weight, bias, groups, 1, shuffle_groups, relu, residual, interleave_with)
    ),
    triton="conv_forward:group_conv1x1_shuffle",
    setup_context=_conv_setup_context(lambda s: 1, lambda s: s),
    backward=_conv_backward,
    samples=lambda: _conv_samples("output"),
    bad_calls=_CONV_BAD_CALLS + _INTERLEAVE_BAD_CALLS,
)

SHUFFLE_GROUP_CONV1X1 = OpSpec(
    name="shuffle_group_conv1x1",
    reference=_reference_input_shuffled,
    fake=_conv_fake,
    check=lambda x, weight, bias, groups, shuffle_groups, relu, residual=None: _checks.check_conv1x1(
        x, weight, bias, groups, shuffle_groups, 1, relu, residual
    ),
    triton="conv_forward:shuffle_group_conv1x1",
    setup_context=_conv_setup_context(lambda s: s, lambda s: 1),
    backward=_conv_backward,
    samples=lambda: _conv_samples("input"),
    bad_calls=_CONV_BAD_CALLS
    + (("input channels not divisible by shuffle_groups", lambda a: (a[0], a[1], a[2], 3, 5, False), ValueError,
        r"input channels \(12\) must be divisible by shuffle_groups \(5\)"),),
)


# ---------------------------------------------------------------------- backward
def _check_grad_output(grad_output: Tensor, out_shuffle: int) -> None:
    _checks.check_input(grad_output, "grad_output")
    _checks.check_groups(out_shuffle, "out_shuffle", grad_output.shape[1], "output channels")


def _check_grad_input(grad_output, weight, groups, in_shuffle, out_shuffle) -> None:
    _checks.check_input(grad_output, "grad_output")
    _checks.check_weight_shape(weight)
    cout = weight.shape[0]
    _checks.check_groups(groups, "groups", cout, "output channels (weight.shape[0])")
    if grad_output.shape[1] != cout:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels, weight expects {cout}")
    _checks.check_groups(in_shuffle, "in_shuffle", weight.shape[1] * groups, "input channels")
    _checks.check_groups(out_shuffle, "out_shuffle", cout, "output channels")
    _checks.check_same(weight, grad_output, "weight", "grad_output")


def _check_grad_weight(grad_output, x, groups, in_shuffle, out_shuffle) -> None:
    _checks.check_input(grad_output, "grad_output")
    _checks.check_input(x, "input")
    _checks.check_same(grad_output, x, "grad_output")
    _checks.check_groups(groups, "groups", x.shape[1], "input channels")
    _checks.check_groups(groups, "groups", grad_output.shape[1], "output channels")
    _checks.check_groups(in_shuffle, "in_shuffle", x.shape[1], "input channels")
    _checks.check_groups(out_shuffle, "out_shuffle", grad_output.shape[1], "output channels")
    if grad_output.shape[0] != x.shape[0] or grad_output.shape[2:] != x.shape[2:]:
        raise ValueError(f"grad_output shape {list(grad_output.shape)} does not match input shape {list(x.shape)}")


def _check_relu_grad(grad_output, output) -> None:
    _checks.check_input(grad_output, "grad_output")
    _checks.check_tensor(output, "output")
    if grad_output.shape != output.shape:
        raise ValueError(
            f"relu_grad: grad_output shape {list(grad_output.shape)} does not match output shape {list(output.shape)}"
        )
    _checks.check_same(output, grad_output, "output", "grad_output")


def _reference_grad_input(grad_output, weight, groups, in_shuffle, out_shuffle):
    w = weight if weight.dim() == 4 else weight[:, :, None, None]
    grad_x = _inverse(F.conv_transpose2d(_inverse(grad_output, out_shuffle), w, groups=groups), in_shuffle)
    return in_format_of(grad_output, grad_x)


def _reference_grad_weight(grad_output, x, groups, in_shuffle, out_shuffle):
    go = _inverse(grad_output, out_shuffle)
    shape = (go.shape[1], x.shape[1] // groups, 1, 1)
    return torch.nn.grad.conv2d_weight(reference.channel_shuffle(x, in_shuffle), shape, go, groups=groups)


def _grad_samples():
    t = sample_tensors()
    for layout in range(2):
        go, x, w = t.go[layout], t.x[layout].detach(), t.w.detach()
        yield "grad_input", (go, w, 3, 4, 1)
        yield "grad_input", (go, w, 3, 1, 3)
        yield "grad_weight", (go, x, 3, 1, 8)
        yield "grad_weight", (go, x, 3, 3, 1)
        yield "grad_bias", (go, 3)
        yield "grad_bias", (go, 1)
        yield "relu_grad", (go, t.y[layout])


def _samples_of(kind: str):
    return lambda: (args for k, args in _grad_samples() if k == kind)


GRAD_INPUT = OpSpec(
    name="conv1x1_shuffle_grad_input",
    reference=_reference_grad_input,
    fake=lambda grad_output, weight, groups, in_shuffle, out_shuffle: empty_like_format(
        grad_output, (grad_output.shape[0], weight.shape[1] * groups, *grad_output.shape[2:])
    ),
    check=_check_grad_input,
    triton="conv_backward:conv1x1_grad_input",
    samples=_samples_of("grad_input"),
    bad_calls=(
        ("channels", lambda a: (a[0][:, :12], a[1], 3, 1, 3), ValueError, r"grad_output has 12 channels, weight expects 24"),
        ("in_shuffle", lambda a: (a[0], a[1], 3, 5, 1), ValueError,
         r"input channels \(12\) must be divisible by in_shuffle \(5\)"),
        ("3x3 weight", lambda a: (a[0], a[1].expand(24, 4, 3, 3), 3, 1, 3), ValueError, r"1x1 kernel"),
        ("1-D weight", lambda a: (a[0], a[1].reshape(-1), 3, 1, 3), ValueError, r"weight must have shape"),
        ("weight dtype", lambda a: (a[0], a[1].float(), 3, 1, 3), TypeError,
         r"weight dtype .* does not match grad_output dtype"),
    ),
)

GRAD_WEIGHT = OpSpec(
    name="conv1x1_shuffle_grad_weight",
    reference=_reference_grad_weight,
    fake=lambda grad_output, x, groups, in_shuffle, out_shuffle: grad_output.new_empty(
        (grad_output.shape[1], x.shape[1] // groups, 1, 1)
    ),
    check=_check_grad_weight,
    triton="conv_backward:conv1x1_grad_weight",
    samples=_samples_of("grad_weight"),
    bad_calls=(
        ("spatial size", lambda a: (a[0][:, :, :2], a[1], 3, 1, 3), ValueError, r"does not match input shape"),
        ("dtype", lambda a: (a[0].float(), a[1], 3, 1, 3), TypeError, r"grad_output dtype .* does not match"),
    ),
)

GRAD_BIAS = OpSpec(
    name="conv1x1_shuffle_grad_bias",
    reference=lambda grad_output, out_shuffle: _inverse(grad_output, out_shuffle).sum((0, 2, 3)),
    fake=lambda grad_output, out_shuffle: grad_output.new_empty((grad_output.shape[1],)),
    check=_check_grad_output,
    triton="conv_backward:conv1x1_grad_bias",
    samples=_samples_of("grad_bias"),
    bad_calls=(
        ("out_shuffle", lambda a: (a[0], 5), ValueError, r"output channels \(24\) must be divisible by out_shuffle \(5\)"),
    ),
)

RELU_GRAD = OpSpec(
    name="relu_grad",
    reference=lambda grad_output, output: in_format_of(
        grad_output, torch.ops.aten.threshold_backward(grad_output, output, 0)
    ),
    fake=lambda grad_output, output: torch.empty_like(grad_output),
    check=_check_relu_grad,
    triton="conv_backward:relu_grad",
    samples=_samples_of("relu_grad"),
    bad_calls=(
        ("shape", lambda a: (a[0], a[1][:, :3]), ValueError, r"does not match output shape"),
        ("3-D", lambda a: (a[0][0], a[1][0]), ValueError, r"grad_output must be 4-D"),
        ("dtype", lambda a: (a[0], a[1].float()), TypeError, r"output dtype .* does not match grad_output dtype"),
    ),
)


# ------------------------------------------------------------------ public functions
_CONV_ARGS = """
    Args:
        x: ``(N, Cin, H, W)``, float32, float64, bfloat16 or float16, any strides.
        weight: ``(Cout, Cin // groups, 1, 1)`` or ``(Cout, Cin // groups)``, ``x``'s dtype
            and device.
        groups: the conv's group count, an int >= 1 dividing ``Cin`` and ``Cout``.
        shuffle_groups: {shuffle_groups}
        bias: ``(Cout,)`` or None; a BatchNorm folds into ``weight`` and ``bias``
            (``shufflenet_ops.fold_batchnorm``).
        relu: apply ``max(0, .)`` last (NaN stays NaN, as ``torch.relu``).
        residual: ``(N, Cout, H, W)`` or None, added in output channel order before the ReLU
            (a ShuffleNet unit's ``relu(x + branch)``).{interleave_arg}

    Returns:
        ``(N, Cout, H, W)`` in ``x``'s dtype, device and memory format (NCHW or
        channels_last). Differentiable in ``x``, ``weight``, ``bias`` and ``residual``, once
        (double backward raises; the reference backend supports it).{interleave_returns}

    Raises:
        TypeError: a non-tensor operand, an unsupported or mismatched dtype, a non-int group
            count.
        ValueError: ``x`` not 4-D, a weight that is not 1x1 or does not match ``x`` and
            ``groups``, a group count < 1 or not dividing its channels, a bias or residual of
            the wrong shape{interleave_shape}.
        RuntimeError: an operand on another device; the configured backend cannot run on
            ``x``'s device; the C++ extension is not built (CPU).
"""


def group_conv1x1_shuffle(
    x: Tensor,
    weight: Tensor,
    groups: int,
    *,
    bias: Tensor | None = None,
    shuffle_groups: int | None = None,
    relu: bool = False,
    residual: Tensor | None = None,
    interleave_with: Tensor | None = None,
) -> Tensor:
    s = groups if shuffle_groups is None else shuffle_groups
    if interleave_with is None:  # the schema's 7 arguments: nothing new on the common path
        return GROUP_CONV1X1_SHUFFLE(x, weight, bias, groups, s, relu, residual)
    return GROUP_CONV1X1_SHUFFLE(x, weight, bias, groups, s, relu, residual, interleave_with)


def shuffle_group_conv1x1(
    x: Tensor,
    weight: Tensor,
    groups: int,
    shuffle_groups: int,
    *,
    bias: Tensor | None = None,
    relu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    return SHUFFLE_GROUP_CONV1X1(x, weight, bias, groups, shuffle_groups, relu, residual)


group_conv1x1_shuffle.__doc__ = (
    """``act(channel_shuffle(conv1x1(x, weight, groups) + bias, shuffle_groups) + residual)`` in one pass.

    The shuffle on the conv's output: ShuffleNet's first GConv followed by its channel shuffle
    (Zhang et al. 2018, Fig. 2). ``shuffle_groups=1`` is a plain grouped 1x1 conv with the
    fused epilogue.
"""
    + _CONV_ARGS.format(
        shuffle_groups="shuffles the output; None (default) = ``groups``, as in the paper. An\n"
        "            int >= 1 dividing ``Cout``.",
        interleave_arg="""
        interleave_with: ``(N, Cout, H, W)`` or None, ``x``'s dtype and device, any strides
            (a channel slice such as ``x.chunk(2, 1)[0]`` is read in place). Given, the
            result is ``interleave(interleave_with, f)`` with ``f`` the conv's output as
            above: channel ``2j`` is ``interleave_with[:, j]``, untouched (the bias, residual
            and ReLU apply to ``f`` only; NaN and inf pass as they are), channel ``2j + 1``
            is ``f[:, j]``: a ShuffleNet V2 unit's ``shuffle(cat(a, f), 2)``, with ``f``
            written straight into its place and no concatenated tensor made.""",
        interleave_returns="""
        With ``interleave_with``: ``(N, 2 * Cout, H, W)``, also differentiable in it (its
        gradient is a dense tensor in the output gradient's memory format).""",
        interleave_shape=" (or an ``interleave_with`` not of the conv output's shape)",
    )
)

shuffle_group_conv1x1.__doc__ = (
    """``act(conv1x1(channel_shuffle(x, shuffle_groups), weight, groups) + bias + residual)`` in one pass.

    The shuffle on the conv's input, for a shuffle placed right before a grouped conv. The
    official ShuffleNet code's shuffle is the inverse permutation: ``shuffle_groups =
    Cin // groups`` here.
"""
    + _CONV_ARGS.format(
        shuffle_groups="shuffles the input; an int >= 1 dividing ``Cin``.",
        interleave_arg="", interleave_returns="", interleave_shape="",
    )
)
