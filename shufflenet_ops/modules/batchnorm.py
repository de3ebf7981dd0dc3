"""BatchNorm folding: the math, when a BN may fold, and the cache of folded weights.

An eval-mode ``nn.BatchNorm2d`` with running statistics is a fixed per-channel affine map
``bn(z) = z * scale + shift``, so ``bn(conv(x))`` is one conv with weight ``W * scale``
and bias ``shift + b * scale`` (``folded_conv_bn``). ``can_fold`` says when that holds,
``FoldCache`` keeps the folded pair while its sources are unchanged, and
``batchnorm_folding(False)`` turns folding off (every conv and BN then runs as itself).
``batch_norm_permuted`` is BatchNorm on a tensor whose channels are a permutation of the
BN's, for a BN that meets its channels shuffled. ``batch_norm_act`` and
``batch_norm_relu_max_pool`` run a train-mode BN with its ReLU (and the stem's max pool) as
one op.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import _extension, functional
from ._common import global_hooks, has_hooks

T = TypeVar("T")


def is_plain_batchnorm(bn: nn.Module) -> bool:
    """True for an ``nn.BatchNorm2d`` whose forward is the standard one (foldable)."""
    return isinstance(bn, nn.BatchNorm2d) and type(bn).forward is nn.BatchNorm2d.forward


def batchnorm_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``bn(z) == z * scale + shift`` per channel, in eval mode."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def batch_norm_permuted(bn: nn.BatchNorm2d, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``bn`` applied to ``z`` whose channel j holds BN channel ``index[j]``.

    Equals ``bn(z[:, inverse])[:, index]`` exactly: the same per-channel statistics, the same
    running-stat update (momentum or cumulative average, num_batches_tracked) as
    ``nn.BatchNorm2d.forward``, written back in the BN's own channel order.
    """
    bn._check_input_dim(z)
    momentum = _average_factor(bn)
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    pass_buffers = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean.index_select(0, index) if pass_buffers and bn.running_mean is not None else None
    running_var = bn.running_var.index_select(0, index) if pass_buffers and bn.running_var is not None else None
    weight = bn.weight.index_select(0, index) if bn.weight is not None else None
    bias = bn.bias.index_select(0, index) if bn.bias is not None else None
    out = F.batch_norm(z, running_mean, running_var, weight, bias, use_batch_stats, momentum, bn.eps)
    if bn.training and running_mean is not None:  # F.batch_norm updated the permuted copies
        with torch.no_grad():
            bn.running_mean.index_copy_(0, index, running_mean)
            bn.running_var.index_copy_(0, index, running_var)
    return out


def _average_factor(bn: nn.BatchNorm2d) -> float:
    """The weight of this batch in ``bn``'s running statistics, the batch counted in
    ``num_batches_tracked`` in training, as ``nn.BatchNorm2d.forward`` does: the momentum,
    or with ``momentum=None`` one over the batches seen (the cumulative average)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return momentum


def _update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """``bn``'s running statistics after a training batch of ``count`` values per channel
    with mean ``mean`` and biased variance ``var``, as ``nn.BatchNorm2d.forward`` (and
    aten's kernel) updates them; ``running_var`` takes the unbiased variance."""
    if not (bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None):
        return
    momentum = _average_factor(bn)
    with torch.no_grad():
        bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var, alpha=momentum * count / (count - 1))


def _is_stem_pool(pool: nn.Module) -> bool:
    """``pool`` is a plain ``nn.MaxPool2d(3, stride=2, padding=1)`` without hooks."""
    return (
        type(pool) is nn.MaxPool2d and not has_hooks(pool) and not pool.return_indices and not pool.ceil_mode
        and all(_pair(v) == want for v, want in ((pool.kernel_size, (3, 3)), (pool.stride, (2, 2)),
                                                  (pool.padding, (1, 1)), (pool.dilation, (1, 1))))
    )


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _trains_as_one_op(x: torch.Tensor, bn: nn.Module, relu: nn.Module | None) -> bool:
    """``bn`` (and ``relu``) compute what the training BN ops compute, on ``x``: a plain,
    affine ``nn.BatchNorm2d`` in train mode and no ReLU or an ``nn.ReLU``, without hooks
    (a fused call would skip them), and ``x`` a 4-D tensor of
    ``bn``'s width, dtype and device with more than one value per channel (else ``bn``
    raises its own error). Hooks registered for every module count too."""
    return (
        is_plain_batchnorm(bn) and bn.training and bn.affine and not has_hooks(bn) and not global_hooks()
        and (relu is None or (type(relu) is nn.ReLU and not has_hooks(relu)))
        and x.dim() == 4 and x.shape[1] == bn.num_features and x.dtype == bn.weight.dtype
        and x.device == bn.weight.device and x.shape[0] * x.shape[2] * x.shape[3] > 1
    )


def batch_norm_act(x: torch.Tensor, bn: nn.Module, relu: nn.Module | None = None) -> torch.Tensor:
    """``relu(bn(x))`` as the modules compute it: output, gradients, and ``bn``'s running
    statistics and ``num_batches_tracked``.

    In training (see ``_trains_as_one_op``) one ``batch_norm_relu`` op, the ReLU applied in
    the pass that writes the normalized tensor and its mask applied inside the backward;
    otherwise the modules as written (an eval-mode BN, other layers, hooks, their errors).

    One difference: the running statistics are updated after the op returns. Under
    ``torch.utils.checkpoint(..., use_reentrant=False)``, whose recomputation stops once the
    last saved tensor is recomputed, a BN that ends the checkpointed region is therefore
    updated once per step, where ``nn.BatchNorm2d`` (which updates them inside its op) is
    updated again by the recomputation; BNs before it are updated twice by both.

    Args:
        x: ``(N, C, H, W)``, ``bn``'s dtype and device.
        relu: None: no ReLU; a module: that module after the BN (one op only for a plain
            ``nn.ReLU``).
    Returns:
        ``x``'s shape and memory format.
    """
    if not _trains_as_one_op(x, bn, relu):
        return bn(x) if relu is None else relu(bn(x))
    out, mean, var = functional.batch_norm_relu(x, bn.weight, bn.bias, bn.eps, relu is not None)
    _update_running_stats(bn, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
    return out


def batch_norm_relu_max_pool(x: torch.Tensor, bn: nn.Module, relu: nn.Module, pool: nn.Module) -> torch.Tensor:
    """``pool(relu(bn(x)))``, a ShuffleNet stem's tail, as ``nn.Sequential(bn, relu, pool)``
    computes it: output, gradients, and ``bn``'s running statistics and
    ``num_batches_tracked``.

    In training (see ``_trains_as_one_op``; ``relu`` an ``nn.ReLU``, ``pool`` an
    ``nn.MaxPool2d(3, stride=2, padding=1)`` without hooks) one
    ``batch_norm_relu_max_pool3x3s2`` op; otherwise the three modules as written. (Under
    non-reentrant checkpointing: as ``batch_norm_act``.)

    Args:
        x: ``(N, C, H, W)``, ``bn``'s dtype and device.
    Returns:
        ``(N, C, (H - 1) // 2 + 1, (W - 1) // 2 + 1)`` in ``x``'s memory format.
    """
    if not (_trains_as_one_op(x, bn, relu) and _is_stem_pool(pool)):
        return pool(relu(bn(x)))
    out, mean, var = functional.batch_norm_relu_max_pool3x3s2(x, bn.weight, bn.bias, bn.eps)
    _update_running_stats(bn, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
    return out


_folding_enabled = threading.local()


def folding_enabled() -> bool:
    return getattr(_folding_enabled, "value", True)


@contextlib.contextmanager
def batchnorm_folding(enabled: bool) -> Iterator[None]:
    """Turn eval-mode BN folding off (or on) inside a ``with`` block, e.g. so that hooks see
    every conv module called (``count_flops``); the results are the same either way."""
    previous = folding_enabled()
    _folding_enabled.value = enabled
    try:
        yield
    finally:
        _folding_enabled.value = previous


def can_fold(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` acts as a fixed per-channel affine map now: eval mode with running
    statistics (and folding not turned off by ``batchnorm_folding(False)``). The BN's own
    mode decides, as in the unfused model: a frozen BN inside a training model folds too."""
    return folding_enabled() and not bn.training and bn.running_mean is not None and bn.running_var is not None


def folded_conv_bn(
    conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_index: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``conv`` with the eval-mode ``bn`` folded in.

    With ``s = gamma / sqrt(var + eps)``: ``W' = W * s`` and ``b' = beta + (b - mean) * s``
    per output channel. ``bn_index[c]`` is the BN channel that conv output channel ``c``
    meets (a BN applied after a shuffle); None: the same channel. Differentiable.
    """
    scale, shift = batchnorm_scale_shift(bn)
    if bn_index is not None:
        scale, shift = scale.index_select(0, bn_index), shift.index_select(0, bn_index)
    weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return weight, bias.to(conv.weight.dtype)


def fold_sources(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    """The tensors that ``folded_conv_bn(conv, bn)`` reads (the conv's weight and bias, the
    BN's affine parameters and running statistics), as ``TensorCache`` keys on them."""
    # Straight from the modules' dicts: nn.Module's __getattr__ (or walking parameters() and
    # buffers()) is Python work that a batch-1 forward would pay once per conv+BN pair on
    # every call.
    params, bn_params, bn_buffers = conv._parameters, bn._parameters, bn._buffers
    if "weight" in params:
        direct = (
            params["weight"], params.get("bias"), bn_params.get("weight"), bn_params.get("bias"),
            bn_buffers.get("running_mean"), bn_buffers.get("running_var"),
        )
    else:  # a parametrized weight (e.g. weight norm): computed from tensors held elsewhere
        direct = (*conv.parameters(), *bn.parameters(), *bn.buffers())
    return tuple(t for t in direct if t is not None)


def foldable_sources(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...] | None:
    """``fold_sources(conv, bn)`` where ``can_fold(bn)`` (folding on: check
    ``folding_enabled()`` once), else None: both in one look at the modules' dicts."""
    buffers = bn._buffers
    if bn.training or buffers.get("running_mean") is None or buffers.get("running_var") is None:
        return None
    return fold_sources(conv, bn)


class TensorCache:
    """One value derived from some tensors (a folded weight, a packed one), reused in inference
    until any source tensor is replaced or changed in place (which bumps its version counter),
    or one of the non-tensor ``attributes`` it was computed with changes (a BN's ``eps``).
    Derived data: never pickled or deep-copied."""

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def clear(self) -> None:
        self._entry = None

    def get(self, sources: tuple[torch.Tensor, ...], compute: Callable[[], T], attributes: tuple = ()) -> T:
        """``compute()``, or its result from an earlier call with the same, unchanged sources
        and equal ``attributes``. Not cached (computed every call) where the result must carry
        a graph (grad mode and a source requiring grad), under torch.compile, or for inference
        tensors (no version)."""
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(t.requires_grad for t in sources)):
            return compute()
        # In-place updates bump _version; `.data =` (as in module.to()) swaps the storage.
        stamps = _extension.tensor_stamps(sources)
        if stamps is None:
            return compute()
        entry = self._entry
        if entry is not None and entry[2] == stamps and entry[3] == attributes:
            return entry[4]  # type: ignore[return-value]
        with torch.no_grad():
            value = compute()
        # The entry keeps the sources and their storages alive, so neither an id nor a data
        # pointer in its stamps can be reused by another tensor while it is cached (`.data =`
        # does not bump the version: only the new storage's address tells it apart).
        storages = tuple(t.untyped_storage() for t in sources)
        self._entry = (sources, storages, stamps, attributes, value)
        return value

    def __deepcopy__(self, memo: dict) -> TensorCache:
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


class FoldCache(TensorCache):
    """The last folded ``(weight, bias)`` of one conv+BN pair (``TensorCache``)."""

    def folded(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_index: torch.Tensor | None = None,
        transposed_memory: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``folded_conv_bn(conv, bn, bn_index)``, cached. ``transposed_memory``: the weight of
        an ungrouped 1x1 conv, same shape, laid out in memory as its ``(K, Cout)`` transpose:
        the C++ kernel's pixel-major GEMM reads that as is, where a row-major weight is
        transposed on every call (csrc/cpu/conv1x1_shuffle_kernel.cpp: ``weight_matrix``;
        V2's conv5, 1024 x 464: 253 -> 125 us at batch 1 on 2 threads). Only for a weight
        without a graph (inference): the cached one."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = folded_conv_bn(conv, bn, bn_index)
            if transposed_memory and not weight.requires_grad:  # with a graph: a copy node each call
                cout, k = weight.shape[:2]
                weight = weight.reshape(cout, k).t().contiguous().t().reshape(weight.shape)
            return weight, bias

        return self.get(fold_sources(conv, bn), compute, (bn.eps,))

