"""Complexity of a model: multiply-adds and parameters, by layer type.

FLOPs here are multiply-adds (the ShuffleNet paper's "FLOPs"), counted for every
convolution and linear layer: ``nn.Conv*`` / ``nn.ConvTranspose*``, ``nn.Linear`` and the
fused ``shufflenet_ops`` modules (whose conv counts once, under the fused module's type).
BatchNorm, activations, pooling, additions, bias additions and shuffles are not counted.
The paper's Table 1 complexity row is the conv layers only:
``flops["total"] - flops.get("Linear", 0)``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from typing import Sequence

import torch
import torch.nn as nn

from ._backend import backend
from .fuse import original_forwards
from .modules import FUSED_MODULE_TYPES, batchnorm_folding


def _conv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # each input element is multiplied into out_channels/groups * kernel outputs
        return inputs[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _fused_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    weight = module.conv.weight if hasattr(module, "conv") else module.weight
    return output.numel() * weight.shape[1]  # weight is (Cout, Cin/groups, 1, 1)


def _linear_macs(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> int:
    return output.numel() * module.in_features


def _macs_rule(module: nn.Module):
    if isinstance(module, FUSED_MODULE_TYPES):
        return _fused_macs
    if isinstance(module, nn.modules.conv._ConvNd):
        return _conv_macs
    if isinstance(module, nn.Linear):
        return _linear_macs
    return None


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers live on the meta device (shapes
    only: no memory, no arithmetic). The deepcopy memo maps each tensor to its meta twin,
    so the real tensors are never copied."""
    memo: dict[int, object] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        if isinstance(tensor, nn.Parameter):
            meta = nn.Parameter(meta, requires_grad=tensor.requires_grad)
        memo[id(tensor)] = meta
    return copy.deepcopy(model, memo)


def _count(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    # Count only the outermost counted module when one calls another (a fused module's
    # conv child is normally not called at all).
    active: list[nn.Module] = []

    def pre_hook(module, inputs):
        active.append(module)

    def hook(module, inputs, output):
        active.pop()
        if not active:
            counts[type(module).__name__] += int(_macs_rule(module)(module, inputs, output))

    handles = []
    for module in model.modules():
        if _macs_rule(module) is not None:
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(hook))
    training = {module: module.training for module in model.modules()}
    try:
        model.eval()
        # Unfolded and with fuse()'s rewritten forwards off, so that every conv module runs
        # (a folded BN calls F.conv2d directly; a fuse()d forward reads the conv's weights).
        with torch.no_grad(), batchnorm_folding(False), original_forwards(model):
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training.items():
            module.training = mode
    return counts


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> dict[str, int]:
    """Multiply-adds of one forward pass on an input of ``input_size``, by layer type.

    Returns ``{type name: multiply-adds, ..., "total": sum}``. The count comes from the
    layers' output shapes in one forward pass in eval mode: first on a shape-only (meta)
    copy of the model, which costs no arithmetic; if the model cannot run on meta tensors
    (data-dependent code), one real forward of a zero input without autograd, after which
    the training flags are restored (nothing else changes, BN statistics included).
    The batch size in ``input_size`` multiplies every count.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_flops expects an nn.Module, got {type(model).__name__}")
    if isinstance(input_size, (str, bytes)) or not isinstance(input_size, Sequence) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_size
    ):
        raise ValueError(f"input_size must be a sequence of positive ints, got {input_size!r}")
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.get_default_dtype()
    device = first.device if first is not None else torch.device("cpu")
    try:
        # The reference backend is the one defined for every device, meta included.
        with backend("reference"):
            counts = _count(_meta_copy(model), torch.zeros(tuple(input_size), dtype=dtype, device="meta"))
    except Exception:  # noqa: BLE001  (any failure on meta tensors: count with real ones)
        counts = _count(model, torch.zeros(tuple(input_size), dtype=dtype, device=device))
    result = dict(sorted(counts.items()))
    result["total"] = sum(counts.values())
    return result


def count_params(model: nn.Module) -> dict[str, int]:
    """Number of parameters by the type of the module that owns them, plus ``"total"``.

    A parameter shared by several modules counts once (under its first owner). In the
    fused conv+BN modules the parameters belong to their ``conv`` (``Conv2d``) and ``bn``
    (``BatchNorm2d``) children, as in the unfused model.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_params expects an nn.Module, got {type(model).__name__}")
    counts: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for module in model.modules():
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                counts[type(module).__name__] += parameter.numel()
    result = dict(sorted(counts.items()))
    result["total"] = sum(counts.values())
    return result
