"""``OpSpec``: everything about one op of the schema (csrc/ops.cpp), declared once.

From an op's spec come its torch.library registrations (fake kernel, autograd formula, the
CUDA kernel), its call path (check the arguments once, pick a backend, run its kernel or its
autograd.Function) and the tests' parametrisation (opcheck samples, bad calls). See
docs/design.md, "Adding an op".

The call path of every op (``OpSpec.__call__``)::

    check(*args)                              once, at the boundary of the kernel tables
    backend = _backend.resolve(device)        'cpp' | 'triton' | 'reference'
    'reference'             -> reference(*args)        (PyTorch's own autograd)
    no graph to record      -> kernel_table(backend).<op>(*args)
    otherwise               -> function.apply(*args, backend)
                               (forward: the table's kernel; backward: the spec's formula,
                                whose kernel calls go through the same backend's table)

Callers of ``torch.ops.shufflenet_ops.*`` get the same formula through
``torch.library.register_autograd`` (backend None: the dispatcher's table).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _backend
from .table import kernel_table

LIBRARY = "shufflenet_ops"

# (what is wrong, sample arguments -> bad arguments, exception type, regex of the message)
BadCall = tuple[str, Callable[[tuple], tuple], type, str]


def needs_autograd(*args: Any) -> bool:
    """Whether a call must record a graph: grad mode is on and a tensor argument requires grad.

    When it need not, the op calls its kernel directly and skips the autograd.Function
    machinery: host time that a small GPU kernel cannot hide.
    """
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


class _PositionalFunction(torch.autograd.Function):
    """An autograd.Function always applied with every argument positionally.

    ``Function.apply`` binds each call to ``inspect.signature(forward)`` to fill in defaults,
    host time comparable to a small GPU kernel. With nothing to fill in, eager calls go
    straight to the C++ ``apply``; under torch.compile or functorch transforms the full
    ``Function.apply`` runs as usual.
    """

    @classmethod
    def apply(cls, *args):
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)


@dataclass(frozen=True, eq=False)
class OpSpec:
    """One op of the schema.

    Attributes:
        name: the op's name in csrc/ops.cpp (``torch.ops.shufflenet_ops.<name>``), which holds
            its schema; every callable below takes the schema's arguments, positionally.
        reference: the pure-PyTorch definition: ground truth of the tests and the
            ``'reference'`` backend (differentiable by PyTorch itself).
        fake: the output's shape, dtype and memory format, for torch.compile and export.
        check: raises ValueError (shapes, group counts), TypeError (dtypes) or RuntimeError
            (devices) naming the problem, as the C++ op does (csrc/checks.h).
        triton: ``"module:function"`` of the Triton kernel in ``shufflenet_ops.triton``; None
            runs ``reference`` on CUDA (and on the Triton backend).
        setup_context, backward: the autograd formula, as ``torch.library.register_autograd``
            takes it; ``backward`` runs ops with ``OpSpec.run(ctx.backend, ...)``.
            None for an op that is not differentiable (the backward ops): it raises if a
            gradient is asked of it (double backward), on every backend, as long as its
            callers go through ``run`` (the conv's formula does).
        samples: yields argument tuples (float64) covering the op's options and layouts,
            for opcheck and the kernel-vs-reference tests.
        bad_calls: ``BadCall``s, each turning a sample's arguments into a bad call.
        inference_only: a forward op without a backward (the fused unit): a call that would
            record a graph raises, naming the op and what to do instead. Its autograd kernel
            is C++ (csrc/ops.cpp), so the dispatcher path costs no Python.
        training_only: a forward op that only a training forward calls (a BatchNorm with
            batch statistics): an inference graph never holds it (eval folds the BN), so it
            needs no ONNX translation.
    """

    name: str
    reference: Callable[..., torch.Tensor]
    fake: Callable[..., torch.Tensor]
    check: Callable[..., None]
    triton: str | None = None
    setup_context: Callable[[Any, tuple, torch.Tensor], None] | None = None
    backward: Callable[..., tuple] | None = None
    samples: Callable[[], Iterable[tuple]] = field(default=lambda: ())
    bad_calls: tuple[BadCall, ...] = ()
    inference_only: bool = False
    training_only: bool = False
    function: type[torch.autograd.Function] = field(init=False, repr=False)

    @property
    def qualname(self) -> str:
        return f"{LIBRARY}::{self.name}"

    @property
    def differentiable(self) -> bool:
        return self.backward is not None

    @property
    def is_forward(self) -> bool:
        """An op a model's inference forward calls (not a backward piece, not training-only):
        what an inference graph holds."""
        return (self.differentiable or self.inference_only) and not self.training_only

    def __call__(self, *args: Any) -> torch.Tensor:
        """Check ``args`` (the schema's, positionally) and run the op on the configured backend."""
        self.check(*args)
        return self.run(_backend.resolve(args[0].device), *args)

    def run(self, backend: str | None, *args: Any) -> torch.Tensor:
        """Run on ``backend`` (None: the dispatcher) with checked arguments, recording a graph
        if one is needed."""
        if backend == "reference":
            return self.reference(*args)
        if needs_autograd(*args):
            if self.inference_only:
                raise RuntimeError(_inference_only_message(self.qualname))
            return self.function.apply(*args, backend)
        return getattr(kernel_table(backend, args[0].device), self.name)(*args)

    def __post_init__(self) -> None:
        # Built once here, not lazily: torch.compile cannot trace a cached_property's lock.
        object.__setattr__(self, "function", self._autograd_function())

    def _autograd_function(self) -> type[torch.autograd.Function]:
        """The op as a torch.autograd.Function: ``apply(*schema_args, backend)`` (the backend
        last, so ``ctx.needs_input_grad`` indexes the schema's arguments). For an op without
        a formula its backward raises: a gradient of a gradient through the fused convs fails
        loudly on every backend instead of coming back detached."""
        # The methods close over plain functions and a str, not over the spec: torch.compile
        # traces them and cannot wrap an arbitrary object captured by a closure.
        name = self.name
        setup_op = self.setup_context or (lambda ctx, inputs, output: None)
        backward_op = self.backward or _no_double_backward(self.qualname)

        def forward(*args):
            *args, backend = args
            return getattr(kernel_table(backend, args[0].device), name)(*args)

        def setup_context(ctx, inputs, output):
            ctx.backend = inputs[-1]
            setup_op(ctx, inputs[:-1], output)

        def backward(ctx, *grads):
            return (*backward_op(ctx, *grads), None)

        methods = {"forward": forward, "setup_context": setup_context, "backward": backward}
        return type(f"{_camel(self.name)}Function", (_PositionalFunction,), {k: staticmethod(f) for k, f in methods.items()})


def _no_double_backward(qualname: str) -> Callable[..., tuple]:
    def backward(ctx, *grads):
        raise RuntimeError(
            f"double backward (create_graph=True) through {qualname} is not supported; "
            "use shufflenet_ops.backend('reference') for higher-order gradients"
        )

    return backward


def _inference_only_message(qualname: str) -> str:
    return (
        f"{qualname} is an inference op and has no backward: call it under torch.no_grad() or "
        "torch.inference_mode(), or with tensors that do not require grad (the fused modules take "
        "their per-op path when a gradient is needed)"
    )


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


# ------------------------------------------------------------------- registrations
def register(spec: OpSpec) -> None:
    """The fake kernel and the autograd formula of ``spec``'s dispatcher op.

    The fake kernel checks the arguments first: torch.compile and export then reject a bad
    call while tracing, and meta tensors get the C++ op's errors."""

    def fake(*args: Any) -> torch.Tensor:
        spec.check(*args)
        return spec.fake(*args)

    torch.library.register_fake(spec.qualname, fake)
    if spec.inference_only:
        return  # its autograd kernel is C++ (csrc/ops.cpp)

    def setup_context(ctx, inputs, output):
        ctx.backend = None  # the dispatcher's table
        if spec.setup_context is not None:
            spec.setup_context(ctx, inputs, output)

    backward = spec.backward or _no_double_backward(spec.qualname)
    torch.library.register_autograd(spec.qualname, backward, setup_context=setup_context)


def checked_cuda_kernel(spec: OpSpec) -> Callable[..., torch.Tensor]:
    """``spec``'s CUDA kernel for dispatcher callers: the check, then the Triton kernel (or the
    reference). Triton is imported on the first call, not at registration."""

    def cuda_kernel(*args: Any) -> torch.Tensor:
        from ..triton.table import TRITON

        spec.check(*args)
        return getattr(TRITON, spec.name)(*args)

    cuda_kernel.__name__ = cuda_kernel.__qualname__ = f"{spec.name}_cuda"
    return cuda_kernel


def register_cuda_kernel(spec: OpSpec) -> None:
    torch.library.register_kernel(spec.qualname, "cuda", checked_cuda_kernel(spec))
