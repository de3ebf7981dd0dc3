"""``fuse(model)``: run the 1x1 convs of an existing model next to a channel shuffle on the
fused ``shufflenet_ops`` kernels, by torch.fx graph rewriting, keeping the model as it is.

What is rewritten, for every plain 1x1 ``nn.Conv2d`` (stride 1, no padding) of the model:

- output shuffle: the conv followed by a chain of BatchNorm2d, ReLU and one channel
  shuffle, in any order with BN before ReLU, each value used only by the next (a BN after
  the shuffle is indexed in shuffled order and is folded through the inverse permutation);
- input shuffle: the conv's input is a channel shuffle (its output may be used elsewhere
  too), the conv optionally followed by BN and/or ReLU;
- otherwise a grouped (groups > 1) 1x1 conv with its BN/ReLU also runs on the fused
  kernels (no shuffle); so does an ungrouped one followed by a ReLU (after its BN, if any)
  when the graph holds one of the other patterns (ShuffleNet V2's 1x1 convs: the BN folded
  and the ReLU in the epilogue; while its BN cannot fold, in train mode, it runs as
  torch's conv, BN and ReLU, as in ``models.shufflenet_v2``). Other ungrouped 1x1 convs
  without a shuffle are left alone;
- ShuffleNet V2's unit ending ``shuffle(cat((a, b), 1), 2)`` becomes one interleaving copy
  (``fused_cat_shuffle``, ``functional.interleave``), the shuffle written in any form
  recognised below; its output may feed anything (a stride-2 unit's two branches, the
  next unit's ``chunk`` / slices / ``split``, which stay views);
- epilogues: a residual add after such a conv (``x + branch``, ``branch + x``,
  ``torch.add``, ``.add``), with or without a ReLU after it, moves into the conv's
  epilogue (when the conv has no ReLU of its own); so does the ReLU after a concat of the
  conv's output with a 3x3/2 average-pooled shortcut (a stride-2 ShuffleNet unit), the
  pool then running as ``avg_pool3x3s2_relu``;
- whole units: a ShuffleNet V1 unit (compress 1x1 conv + BN + ReLU, 3x3 depthwise conv +
  BN, expand 1x1 conv + BN, the shuffle after the compress conv or before the expand conv,
  ending ``relu(x + .)`` or ``relu(cat(avg_pool3x3s2(x), .))``) becomes one ``fused_unit``
  call: in inference the whole-unit op ``shuffle_unit``, otherwise the three fused calls;
  a ShuffleNet V2 unit (``shuffle(cat(x1, branch2(x2)), 2)`` with ``x1``, ``x2`` the channel
  halves of ``x``, or ``shuffle(cat(branch1(x), branch2(x)), 2)``; branch2 = 1x1 conv + BN +
  ReLU, 3x3 depthwise conv + BN, 1x1 conv + BN + ReLU; branch1 = 3x3/2 depthwise conv + BN,
  1x1 conv + BN + ReLU) becomes one ``fused_unit_v2`` call: in inference the whole-unit op
  ``shuffle_unit_v2``, as ``models.shufflenet_v2`` runs it, otherwise the per-op calls.

A channel shuffle is recognised by what it computes, not by how it is written: any chain
of layout operations (``nn.ChannelShuffle``, ``torch.channel_shuffle``,
``F.channel_shuffle``, ``view``/``reshape``/``flatten``, ``transpose``/``permute``,
``contiguous``, einops' ``Rearrange`` layer and ``rearrange`` function, ...) whose sizes
depend only on its input is run on probe tensors whose elements are all distinct; if it
returns ``torch.channel_shuffle(x, g)`` for some ``1 < g < C``, it is that shuffle (either
convention: the official code's reshape to (C/g, g) is found as ``g' = C/g``).

**The model stays the user's model.** Nothing in the module tree changes: no module is
added, moved or renamed, so ``state_dict()`` keys, checkpoints (both ways), indexing of
``nn.Sequential`` / ``nn.ModuleList`` / ``nn.ModuleDict``, ``.train()``, ``.eval()``
and ``.to()`` behave as before. What changes is the ``forward`` of each module whose own
trace contained a pattern: it is replaced, on that instance, by the rewritten code
(``FusedForward``), in which each fused conv is one call of ``fused_conv1x1(x, conv,
bn, ...)`` reading the conv's and BN's live parameters. Every traceable module gets the
rewrite of its own subtree, so ``model.features(x)`` is fused as well as ``model(x)``.
Eval-mode BN folds into the conv (the ReLU and residual into the epilogue); train mode
computes exactly the original conv -> BN -> ReLU -> shuffle (see ``modules.conv1x1_bn``).
``fused_convs(model)`` lists what ``model(x)`` runs fused (a whole unit's convs as they run
op by op). A torchvision-style ShuffleNet V2 ends up running the ops of
``models.shufflenet_v2(fused=True)``, given channels_last input on CPU (that model converts
its input itself; a ``fuse()``d one keeps the caller's).

Modules that torch.fx cannot trace (data-dependent control flow, ...) keep their own code
and are searched submodule by submodule instead. Everything that could not be traced or
fused is listed in one ``FuseWarning``.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dataclasses
import dis
import functools
import hashlib
import importlib
import inspect
import itertools
import linecache
import math
import operator
import types
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import functional, reference
from .models.shufflenet_v2 import shuffle_unit_v2_arguments
from .modules import (
    FUSED_MODULE_TYPES,
    FoldCache,
    TensorCache,
    can_fold,
    conv1x1_bn,
    conv2d_bn,
    is_foldable_conv,
    is_plain_batchnorm,
    is_pointwise_conv,
)
from .modules._common import has_hooks
from .modules.batchnorm import batch_norm_act, batch_norm_relu_max_pool
from .modules.unit import shuffle_unit_arguments

__all__ = [
    "FuseWarning", "FusedConv", "FusedForward", "fuse", "fused_cat_shuffle", "fused_conv1x1", "fused_conv_bn",
    "fused_convs", "fused_stem", "fused_unit", "fused_unit_v2", "original_forwards",
]


class FuseWarning(UserWarning):
    """Parts of a model that ``fuse`` left as they were."""


# Operations that only rearrange elements: candidates for a channel shuffle.
_LAYOUT_METHODS = frozenset(
    {"view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten", "swapaxes", "swapdims", "movedim"}
)
_LAYOUT_FUNCTIONS = frozenset(
    {
        torch.reshape, torch.transpose, torch.permute, torch.flatten, torch.unflatten, torch.swapaxes,
        torch.swapdims, torch.movedim, torch.channel_shuffle, torch.native_channel_shuffle, F.channel_shuffle,
    }
)
_LAYOUT_MODULES = (nn.ChannelShuffle, nn.Flatten, nn.Unflatten)
# A residual add that can move into the epilogue (no alpha, no out=).
_ADD_FUNCTIONS = frozenset({operator.add, torch.add})
_CONCAT_FUNCTIONS = frozenset({torch.cat, torch.concat, torch.concatenate})
_EXPLICIT_SHUFFLE_FUNCTIONS = frozenset({torch.channel_shuffle, torch.native_channel_shuffle, F.channel_shuffle})
# A layout chain with one of these next to a 1x1 conv looks like a hand-written shuffle.
_TRANSPOSE_METHODS = frozenset({"transpose", "permute", "swapaxes", "swapdims", "movedim"})
_TRANSPOSE_FUNCTIONS = frozenset({torch.transpose, torch.permute, torch.swapaxes, torch.swapdims, torch.movedim})
# Queries that read only a tensor's shape: they may keep reading a fused value's shape.
_SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim"})
_RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_})
_RELU_METHODS = frozenset({"relu", "relu_"})
# The size arithmetic a shuffle idiom may compute from its input (b, c // g, h * w, ...).
_SIZE_ARITHMETIC = frozenset(
    {operator.getitem, operator.floordiv, operator.mul, operator.add, operator.sub, operator.mod, builtins.getattr}
)
# Views that take part of a tensor: how a V2 unit's halves are written (with getitem).
_SLICING_METHODS = frozenset({"chunk", "split", "tensor_split", "narrow"})
_SLICING_FUNCTIONS = frozenset({torch.chunk, torch.split, torch.tensor_split, torch.narrow})
_MAX_LAYOUT_CHAIN = 8
# Probe shapes (N, H, W): two, so a rearrangement that only happens to match one fails.
_PROBE_SHAPES = ((2, 3, 5), (3, 1, 4))
# Probe channel counts where the graph does not say the width (a shuffle after a concat, a
# V2 unit's input split in halves): even, and C/2 != 2, so that the 2-group shuffle differs
# from its inverse (C/2 groups); two, so that constant sizes (x[:, :58]) match neither.
_CONCAT_PROBE_CHANNELS = (6, 10)


@functools.cache
def _einops() -> tuple[types.ModuleType | None, tuple[type, ...], frozenset]:
    """einops (optional): the module, its layout layers and its layout functions. Its
    layers are fx leaves and its functions fx-wrapped calls (einops cannot run on fx
    proxies); the probe then runs them on real tensors like any other layout op."""
    try:
        import einops
        from einops.layers.torch import Rearrange
    except ImportError:
        return None, (), frozenset()
    return einops, (Rearrange,), frozenset({einops.rearrange})


def _layout_modules() -> tuple[type, ...]:
    return _LAYOUT_MODULES + _einops()[1]


def _layout_functions() -> frozenset:
    return _LAYOUT_FUNCTIONS | _einops()[2]


# ------------------------------------------------------------------------------ report
@dataclass
class _Report:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def warn(self) -> None:
        if self.items:
            lines = "\n".join(f"  - {item}" for item in self.items)
            warnings.warn(
                f"shufflenet_ops.fuse left {len(self.items)} part(s) of the model as they were:\n{lines}",
                FuseWarning,
                stacklevel=3,
            )


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------- tracing
def _is_assert_condition(frame: types.FrameType | None) -> bool:
    """Whether ``frame`` is evaluating the condition of an ``assert`` statement: a
    jump-if-true followed by LOAD_ASSERTION_ERROR (CPython 3.11+; 3.13 puts a TO_BOOL
    first). fx's own ``trace_asserts`` only knows the 3.7-3.10 opcodes."""
    if frame is None:
        return False
    instructions = list(dis.get_instructions(frame.f_code))
    index = next((i for i, inst in enumerate(instructions) if inst.offset == frame.f_lasti), None)
    if index is None:
        return False
    if instructions[index].opname == "TO_BOOL" and index + 1 < len(instructions):
        index += 1
    jump = instructions[index]
    following = instructions[index + 1] if index + 1 < len(instructions) else None
    return (
        jump.opname.startswith("POP_JUMP")
        and jump.opname.endswith("IF_TRUE")
        and following is not None
        and following.opname == "LOAD_ASSERTION_ERROR"
    )


class _Tracer(fx.Tracer):
    def to_bool(self, obj: fx.Proxy) -> bool:
        # `assert` on a traced value (the official ShuffleNet code asserts C % g == 0)
        # becomes a torch._assert node instead of a tracing error. Called from
        # Proxy.__bool__, whose caller is the traced code.
        frame = inspect.currentframe()
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        if _is_assert_condition(caller):
            self.create_proxy("call_function", torch._assert, (obj, "assertion in traced code"), {})
            return True
        return super().to_bool(obj)

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (
            isinstance(module, FUSED_MODULE_TYPES)
            or type(module).__module__.startswith("einops.")
            or _opaque(module)  # hooks, a wrapper set on the instance: call it, never inline it
            or super().is_leaf_module(module, qualified_name)
        )


def _tracer() -> _Tracer:
    einops = _einops()[0]
    return _Tracer(autowrap_modules=(math,) if einops is None else (math, einops))


def _trace(module: nn.Module) -> tuple[fx.Graph, dict[str, Any]]:
    """The graph of ``type(module).forward`` (the class's own code, also when ``fuse``
    installed a rewritten forward on the instance before), submodules inlined, and the
    plain tensor constants the tracer stored on the module for it. They are taken off the
    module here; ``_install`` puts them back when the rewritten forward needs them."""
    before = set(vars(module))
    try:
        graph = _tracer().trace(module)
    finally:
        added = {name: vars(module).pop(name) for name in set(vars(module)) - before}
    return graph, added


# ------------------------------------------------------------------------ node helpers
def _opaque(module: nn.Module) -> bool:
    """A module fuse() must call as it is and never fold into a neighbour: it has hooks, a
    forward set on the instance (a wrapper), or parameters not initialised yet (lazy)."""
    return has_hooks(module) or "forward" in vars(module) or isinstance(module, nn.modules.lazy.LazyModuleMixin)


def _submodule(root: nn.Module, node: fx.Node) -> nn.Module | None:
    """The module a call_module node calls, unless it is opaque (then no pattern matches it)."""
    if node.op != "call_module":
        return None
    module = root.get_submodule(node.target)
    return None if _opaque(module) else module


def _is_shape_query(node: fx.Node) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is builtins.getattr and len(node.args) == 2:
        if node.args[1] in _SHAPE_ATTRIBUTES:
            return True
        if node.args[1] == "data":  # x.data.size(), as the official ShuffleNet code writes it
            return all(_is_shape_query(user) for user in node.users)
    return False


def _value_users(node: fx.Node) -> list[fx.Node]:
    return [user for user in node.users if not _is_shape_query(user)]


def _first_argument_is(node: fx.Node, source: fx.Node) -> bool:
    return bool(node.args) and node.args[0] is source


def _is_relu_of(root: nn.Module, node: fx.Node, source: fx.Node) -> bool:
    if node.op == "call_module":
        module = _submodule(root, node)
        return type(module) is nn.ReLU and node.args == (source,) and not node.kwargs
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return _first_argument_is(node, source) and len(node.args) <= 2 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return node.args == (source,) and not node.kwargs
    return False


def _batchnorm_of(root: nn.Module, node: fx.Node, source: fx.Node, channels: int) -> nn.BatchNorm2d | None:
    module = _submodule(root, node)
    if module is not None and is_plain_batchnorm(module) and module.num_features == channels:
        if node.args == (source,) and not node.kwargs:
            return module
    return None


def _pointwise_conv(root: nn.Module, node: fx.Node) -> nn.Conv2d | None:
    module = _submodule(root, node)
    if module is not None and is_pointwise_conv(module) and len(node.args) == 1 and not node.kwargs:
        if isinstance(node.args[0], fx.Node):
            return module
    return None


def _is_layout_op(root: nn.Module, node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        return node.target in _LAYOUT_METHODS
    if node.op == "call_function":
        return node.target in _layout_functions()
    if node.op == "call_module":
        return isinstance(_submodule(root, node), _layout_modules()) and len(node.args) == 1
    return False


def _is_explicit_shuffle(root: nn.Module, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_submodule(root, node), nn.ChannelShuffle)
    return node.op == "call_function" and node.target in _EXPLICIT_SHUFFLE_FUNCTIONS


# ------------------------------------------------------------------- shuffle detection
class _NotPure(Exception):
    """The candidate depends on something other than its input tensor's shape."""


def _evaluate(root: nn.Module, end: fx.Node, source: fx.Node, probe: torch.Tensor, slicing: bool = False) -> object:
    """The value of ``end`` when ``source`` is ``probe``: the layout chain runs, and the
    size arithmetic it reads (``b, c, h, w = x.size()``, ``c // g``, ...) is recomputed.
    ``slicing``: chunk / split / tensor_split / narrow run too. Raises ``_NotPure`` at any
    other node (one that is not ``source`` nor computed from it alone)."""
    values: dict[fx.Node, object] = {source: probe}

    def value(node: fx.Node) -> object:
        if node in values:
            return values[node]
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if _is_layout_op(root, node) and node.op == "call_module":
            result = _submodule(root, node)(*args, **kwargs)
        elif _is_layout_op(root, node) and node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "call_function" and (node.target in _SIZE_ARITHMETIC or node.target in _layout_functions()):
            result = node.target(*args, **kwargs)
        elif node.op == "call_method" and (node.target in _SHAPE_METHODS or slicing and node.target in _SLICING_METHODS):
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif slicing and node.op == "call_function" and node.target in _SLICING_FUNCTIONS:
            result = node.target(*args, **kwargs)
        else:
            raise _NotPure(node.format_node())
        values[node] = result
        return result

    return value(end)


def _shuffle_groups_of(root: nn.Module, source: fx.Node, end: fx.Node, channels: int) -> int | None:
    """``g`` if the nodes from ``source`` to ``end`` compute ``channel_shuffle(source, g)``
    with ``1 < g < channels``, else None."""
    found = None
    divisors = [g for g in range(2, channels) if channels % g == 0]
    for batch, height, width in _PROBE_SHAPES:
        shape = (batch, channels, height, width)
        probe = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)  # all elements distinct
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = _evaluate(root, end, source, probe)
        except Exception:  # noqa: BLE001  (not a pure rearrangement of this input: no match)
            return None
        if not isinstance(result, torch.Tensor) or result.shape != probe.shape:
            return None
        groups = next((g for g in divisors if torch.equal(result, reference.channel_shuffle(probe, g))), None)
        if groups is None or (found is not None and groups != found):
            return None
        found = groups
    return found


def _match_shuffle_after(root: nn.Module, source: fx.Node, channels: int) -> tuple[int, list[fx.Node]] | None:
    """A channel shuffle applied to ``source`` (its only value user): ``(groups, nodes)``.
    Nodes inside the shuffle must have no other user; the last one may have any."""
    chain: list[fx.Node] = []
    node = source
    while len(chain) < _MAX_LAYOUT_CHAIN:
        users = _value_users(node) if node is source else list(node.users)
        if len(users) != 1 or not _is_layout_op(root, users[0]) or users[0].args[0] is not node:
            break
        node = users[0]
        chain.append(node)
    for length in range(len(chain), 0, -1):  # the longest match absorbs a trailing .contiguous()
        groups = _shuffle_groups_of(root, source, chain[length - 1], channels)
        if groups is not None:
            return groups, chain[:length]
    return None


def _match_shuffle_before(root: nn.Module, conv_node: fx.Node, channels: int) -> tuple[fx.Node, int] | None:
    """``(unshuffled tensor, groups)`` if the conv's input is a channel shuffle of it."""
    chain: list[fx.Node] = []  # layout nodes, from the conv's input backwards
    node = conv_node.args[0]
    while len(chain) < _MAX_LAYOUT_CHAIN and isinstance(node, fx.Node) and _is_layout_op(root, node):
        chain.append(node)
        node = node.args[0]
    for length in range(len(chain), 0, -1):
        source = chain[length - 1].args[0]
        groups = _shuffle_groups_of(root, source, chain[0], channels)
        if groups is not None:
            return source, groups
    return None


def _is_transpose(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _TRANSPOSE_METHODS) or (
        node.op == "call_function" and node.target in _TRANSPOSE_FUNCTIONS
    )


def _next_to_unrecognised_transpose(root: nn.Module, conv_node: fx.Node, pattern: "_Pattern | None") -> bool:
    """Whether a layout chain with a transpose follows the conv (after its BN/ReLU) or
    feeds it: a shuffle written in a form the probe could not verify."""
    after = pattern.consumed[-1] if pattern is not None and pattern.consumed else conv_node
    node, steps = after, 0
    while steps < _MAX_LAYOUT_CHAIN and len(users := _value_users(node)) == 1 and _is_layout_op(root, users[0]):
        node, steps = users[0], steps + 1
        if _is_transpose(node):
            return True
    node, steps = conv_node.args[0], 0
    while steps < _MAX_LAYOUT_CHAIN and isinstance(node, fx.Node) and _is_layout_op(root, node):
        if _is_transpose(node):
            return True
        node, steps = node.args[0], steps + 1
    return False


# ------------------------------------------------------------------------ conv patterns
@dataclass
class _Pattern:
    conv_node: fx.Node
    conv: nn.Conv2d
    consumed: list[fx.Node] = field(default_factory=list)  # nodes after the conv it replaces
    bn_node: fx.Node | None = None
    relu: bool = False
    output_shuffle_groups: int = 1
    bn_after_shuffle: bool = False
    input_source: fx.Node | None = None
    input_shuffle_groups: int = 1

    @property
    def bn_target(self) -> str | None:
        return None if self.bn_node is None else self.bn_node.target

    @property
    def has_shuffle(self) -> bool:
        return self.output_shuffle_groups > 1 or self.input_source is not None

    @property
    def needs_shufflenet_graph(self) -> bool:
        """An ungrouped conv with a ReLU and no shuffle (ShuffleNet V2's 1x1 convs): worth
        the fused kernel (its ReLU in the epilogue) only in a graph that holds a ShuffleNet
        pattern; elsewhere (a ResNet, ...) it stays torch's conv."""
        return not self.has_shuffle and self.conv.groups == 1


def _match_conv(root: nn.Module, conv_node: fx.Node, conv: nn.Conv2d) -> _Pattern | None:
    pattern = _Pattern(conv_node, conv)
    channels = conv.out_channels
    current = conv_node
    while True:
        users = _value_users(current)
        if len(users) != 1:
            break
        successor = users[0]
        # BN must come before the ReLU to fold; at most one of each and one shuffle.
        if pattern.bn_node is None and not pattern.relu and _batchnorm_of(root, successor, current, channels):
            pattern.bn_node = successor
            pattern.bn_after_shuffle = pattern.output_shuffle_groups > 1
            nodes = [successor]
        elif not pattern.relu and _is_relu_of(root, successor, current):
            pattern.relu = True
            nodes = [successor]
        elif pattern.output_shuffle_groups == 1 and (found := _match_shuffle_after(root, current, channels)):
            pattern.output_shuffle_groups, nodes = found
        else:
            break
        pattern.consumed.extend(nodes)
        current = nodes[-1]

    if pattern.output_shuffle_groups == 1:
        before = _match_shuffle_before(root, conv_node, conv.in_channels)
        if before is not None:
            pattern.input_source, pattern.input_shuffle_groups = before
        elif conv.groups == 1 and not pattern.relu:
            return None  # a plain 1x1 conv with no shuffle and no ReLU: nothing to gain
    return pattern



# ---------------------------------------------------------------- what the graph calls
# Folded conv+BN weights per (BN, conv, BN channel order), reused until a source tensor
# changes (FoldCache). Weak on the BN: the cache never keeps a model alive.
_fold_caches: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, FoldCache]]" = weakref.WeakKeyDictionary()


def _fold_cache(conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_order: int) -> FoldCache | None:
    """The cache of one (conv, BN, BN channel order) triple; ``bn_order``: the output
    shuffle the BN is indexed by (1: the conv's own order)."""
    if torch.compiler.is_compiling():
        return None  # folded in the graph (FoldCache does not cache under compile either)
    caches = _fold_caches.get(bn)
    if caches is None:
        caches = _fold_caches[bn] = {}
    # FoldCache checks tensor identities, so a reused id() never matches a stale entry.
    key = (id(conv), bn_order)
    cache = caches.get(key)
    if cache is None:  # not setdefault: that would build a FoldCache on every call
        cache = caches[key] = FoldCache()
    return cache


def _fits_epilogue(residual: object, x: torch.Tensor, out_channels: int) -> bool:
    return (
        isinstance(residual, torch.Tensor)
        and residual.shape == (x.shape[0], out_channels, *x.shape[2:])
        and residual.dtype == x.dtype
        and residual.device == x.device
    )


def fused_conv1x1(
    x: torch.Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d | None = None,
    residual: torch.Tensor | None = None,
    *,
    input_shuffle: int = 1,
    output_shuffle: int = 1,
    relu: bool = False,
    bn_after_shuffle: bool = False,
) -> torch.Tensor:
    """One fused conv of a ``fuse()``d forward: ``act(bn(P_out(conv(P_in(x)))) + residual)``.

    Args:
        x: ``(N, Cin, H, W)`` input (any memory format, any float dtype the ops take).
        conv: the model's own 1x1 ``nn.Conv2d`` (read live: weight, bias, groups).
        bn: the model's own ``nn.BatchNorm2d`` after it, or None. Eval mode: folded into
            the conv; train mode: batch statistics and running-stat updates as usual (an
            ungrouped conv without a shuffle then runs as torch's ``bn(conv(x))``).
        residual: added before the ReLU. When it cannot go into the kernel's epilogue (a
            broadcasting shape, another dtype or device) it is added after the fused conv
            exactly as the original ``y + residual`` was.
        input_shuffle / output_shuffle: shuffle groups of the channel shuffle before /
            after the conv (1: none; at most one of them > 1).
        relu: ReLU at the end. bn_after_shuffle: the BN is indexed in shuffled order.
    Returns:
        ``(N, Cout, H, W)`` in ``x``'s memory format.
    Raises:
        What the fused ops raise for inconsistent shapes, dtypes or devices.
    """
    if conv.groups == 1 and input_shuffle == output_shuffle == 1 and bn is not None and not can_fold(bn):
        # No shuffle, and the BN (train mode) keeps the ReLU out of the epilogue: torch's conv,
        # as shufflenet_v2 runs it in train mode (its backward is much faster on large
        # ungrouped shapes, V2's conv5), then the BN with the ReLU as one op (batch_norm_act).
        if residual is None:
            return _train_conv_bn(x, conv, bn, relu)
        y = _train_conv_bn(x, conv, bn, False)
    elif residual is not None and not _fits_epilogue(residual, x, conv.out_channels):
        y = fused_conv1x1(
            x, conv, bn, input_shuffle=input_shuffle, output_shuffle=output_shuffle, bn_after_shuffle=bn_after_shuffle
        )
    elif bn is not None:
        return conv1x1_bn(
            x, conv, bn, input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu,
            bn_after_shuffle=bn_after_shuffle, residual=residual,
            fold_cache=_fold_cache(conv, bn, output_shuffle if bn_after_shuffle else 1),
        )
    elif input_shuffle > 1:
        return functional.shuffle_group_conv1x1(
            x, conv.weight, conv.groups, input_shuffle, bias=conv.bias, relu=relu, residual=residual
        )
    else:
        return functional.group_conv1x1_shuffle(
            x, conv.weight, conv.groups, bias=conv.bias, shuffle_groups=output_shuffle, relu=relu, residual=residual
        )
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def fused_conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))`` of a ``fuse()``d forward for a conv the fused kernels do not run (the
    3x3 depthwise conv, the stem): BN folded into one ``F.conv2d`` in eval mode, exactly
    ``bn(conv(x))`` otherwise (``modules.conv2d_bn``)."""
    return conv2d_bn(x, conv, bn, _fold_cache(conv, bn, 1))


# The whole-unit ops' packed arguments per unit, reused until a source tensor changes
# (TensorCache). Weak on the unit's last BN: the cache never keeps a model alive.
_unit_caches: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, TensorCache]]" = weakref.WeakKeyDictionary()


def _unit_cache(bn: nn.BatchNorm2d, key: tuple) -> TensorCache:
    """The ``TensorCache`` of one unit: ``bn`` one of its BNs, ``key`` what else tells the
    unit apart (its convs' ids, its form). A stale id is harmless: ``TensorCache`` checks the
    tensors themselves."""
    caches = _unit_caches.get(bn)
    if caches is None:
        caches = _unit_caches[bn] = {}
    cache = caches.get(key)
    if cache is None:  # not setdefault: that would build a TensorCache on every call
        cache = caches[key] = TensorCache()
    return cache


def fused_unit(
    x: torch.Tensor,
    compress_conv: nn.Conv2d,
    compress_bn: nn.BatchNorm2d,
    depthwise_conv: nn.Conv2d,
    depthwise_bn: nn.BatchNorm2d,
    expand_conv: nn.Conv2d,
    expand_bn: nn.BatchNorm2d,
    *,
    shuffle_groups: int,
    shuffle_before_depthwise: bool,
    compress_bn_after_shuffle: bool,
    stride: int,
) -> torch.Tensor:
    """One ShuffleNet V1 unit of a ``fuse()``d forward, from the model's own layers:
    ``relu(x + e)`` (stride 1) or ``cat(relu(avg_pool3x3s2(x)), relu(e))`` (stride 2) with
    ``e = bn(expand(P(bn(depthwise(P(relu(bn(compress(x)))))))))``, the shuffle ``P`` (by
    ``shuffle_groups``) in one of the two places.

    In inference (every BN in eval mode, no gradient needed, CPU float32/float64, backend
    ``cpp``) one ``shuffle_unit`` call with the folded weights (cached); otherwise the three
    fused calls it replaced (``fused_conv1x1``, ``fused_conv_bn``, ``fused_conv1x1``).

    Shape: x ``(N, Cin, H, W)`` -> ``(N, Cin, H, W)`` (stride 1) or
    ``(N, Cin + E, (H-1)//2+1, (W-1)//2+1)`` (stride 2), x's dtype and memory format.
    """
    cache = _unit_cache(
        expand_bn, (id(compress_conv), id(depthwise_conv), id(expand_conv), shuffle_groups, shuffle_before_depthwise)
    )
    arguments = shuffle_unit_arguments(
        x, (compress_conv, compress_bn), (depthwise_conv, depthwise_bn), (expand_conv, expand_bn),
        shuffle_groups=shuffle_groups, shuffle_before_depthwise=shuffle_before_depthwise, stride=stride, cache=cache,
        compress_bn_after_shuffle=compress_bn_after_shuffle,
    )
    if arguments is not None:
        return torch.ops.shufflenet_ops.shuffle_unit.default(x, *arguments)
    before, after = (shuffle_groups, 1) if shuffle_before_depthwise else (1, shuffle_groups)
    h = fused_conv1x1(x, compress_conv, compress_bn, output_shuffle=before, relu=True,
                      bn_after_shuffle=compress_bn_after_shuffle)
    h = fused_conv_bn(h, depthwise_conv, depthwise_bn)
    if stride == 1:
        return fused_conv1x1(h, expand_conv, expand_bn, x, input_shuffle=after, relu=True)
    branch = fused_conv1x1(h, expand_conv, expand_bn, input_shuffle=after, relu=True)
    return functional.cat_channels(functional.avg_pool3x3s2_relu(x), branch)  # (dense gradients back)


def fused_unit_v2(
    x: torch.Tensor,
    compress_conv: nn.Conv2d,
    compress_bn: nn.BatchNorm2d,
    depthwise_conv: nn.Conv2d,
    depthwise_bn: nn.BatchNorm2d,
    expand_conv: nn.Conv2d,
    expand_bn: nn.BatchNorm2d,
    branch1_depthwise_conv: nn.Conv2d | None = None,
    branch1_depthwise_bn: nn.BatchNorm2d | None = None,
    branch1_conv: nn.Conv2d | None = None,
    branch1_bn: nn.BatchNorm2d | None = None,
    *,
    stride: int,
) -> torch.Tensor:
    """One ShuffleNet V2 unit of a ``fuse()``d forward, from the model's own layers:
    ``shuffle(cat(x1, branch2(x2)), 2)`` with ``x1, x2 = x.chunk(2, 1)`` (stride 1) or
    ``shuffle(cat(branch1(x), branch2(x)), 2)`` (stride 2), where ``branch2(v) =
    relu(bn(expand(bn(depthwise(relu(bn(compress(v))))))))`` and ``branch1(v) =
    relu(bn(branch1_conv(bn(branch1_depthwise(v)))))`` (stride 2 only: its four layers are
    None for stride 1).

    In inference (every BN in eval mode, no gradient needed, CPU float32/float64, backend
    ``cpp``, channels_last x for stride 1: ``models.shufflenet_v2.shuffle_unit_v2_arguments``)
    one ``shuffle_unit_v2`` call with the folded, packed weights (cached per unit), as
    ``models.shufflenet_v2`` runs it; otherwise the calls it replaced (``fused_conv1x1``,
    ``fused_conv_bn``, ``fused_cat_shuffle``), with their results and errors, except that
    with the expand BN folded the expand conv writes the unit's output itself
    (``group_conv1x1_shuffle``'s ``interleave_with``), as the package's model does.

    Shape: x ``(N, C, H, W)`` -> ``(N, 2E, H, W)`` (stride 1, ``E = C/2``) or
    ``(N, 2E, (H-1)//2+1, (W-1)//2+1)`` (stride 2), ``E`` the expand conv's output channels;
    x's dtype; channels_last from the whole-unit op, else ``fused_cat_shuffle``'s format.
    """
    pairs = [(compress_conv, compress_bn), (depthwise_conv, depthwise_bn), (expand_conv, expand_bn)]
    if stride == 2:
        pairs += [(branch1_depthwise_conv, branch1_depthwise_bn), (branch1_conv, branch1_bn)]
    cache = _unit_cache(expand_bn, ("v2", stride, *(id(conv) for conv, _ in pairs)))
    arguments = shuffle_unit_v2_arguments(x, pairs, stride, cache)
    if arguments is not None:
        return torch.ops.shufflenet_ops.shuffle_unit_v2.default(x, *arguments)
    if not any(can_fold(bn) for _, bn in pairs):  # training, as models.shufflenet_v2 trains
        return _train_unit_v2(x, pairs, stride)
    if stride == 1:
        x1, x2 = x.chunk(2, 1)  # the halves the graph pass proved the code takes
    else:
        x1 = fused_conv1x1(fused_conv_bn(x, branch1_depthwise_conv, branch1_depthwise_bn), branch1_conv, branch1_bn,
                           relu=True)
        x2 = x
    branch2 = fused_conv1x1(x2, compress_conv, compress_bn, relu=True)
    branch2 = fused_conv_bn(branch2, depthwise_conv, depthwise_bn)
    n, _, h, w = branch2.shape
    if (can_fold(expand_bn) and x1.shape == (n, expand_conv.out_channels, h, w) and x1.dtype == branch2.dtype
            and x1.device == branch2.device):
        # As models.shufflenet_v2 runs it: the expand conv writes its output straight into
        # the odd channels of the unit's output, x1 into the even ones (interleave_with).
        return conv1x1_bn(branch2, expand_conv, expand_bn, relu=True, interleave_with=x1,
                          fold_cache=_fold_cache(expand_conv, expand_bn, 1))
    branch2 = fused_conv1x1(branch2, expand_conv, expand_bn, relu=True)
    return fused_cat_shuffle(x1, branch2)


# The ReLU and max pool that the training BN ops run with the BN as one op (plain modules:
# the ops' rule, modules/batchnorm.py:_trains_as_one_op).
_RELU = nn.ReLU()
_STEM_POOL = nn.MaxPool2d(3, stride=2, padding=1)


def fused_stem(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``max_pool3x3s2(relu(bn(conv(x))))``, a ShuffleNet stem, of a ``fuse()``d forward, as
    the package's models run it: in eval the BN folded into one ``F.conv2d``
    (``fused_conv_bn``), then the ``max_pool3x3s2_relu`` op; in training torch's conv, then
    the BN (batch statistics, running-stat updates as ``nn.BatchNorm2d``), the ReLU and the
    pool as one op (``modules.batchnorm.batch_norm_relu_max_pool``).

    Shape: x ``(N, Cin, H, W)`` -> ``(N, Cout, (H2 - 1) // 2 + 1, (W2 - 1) // 2 + 1)``, the
    conv's ``H2 x W2`` output pooled 3x3 with stride 2 and padding 1; x's dtype.
    """
    if can_fold(bn):
        return functional.max_pool3x3s2_relu(fused_conv_bn(x, conv, bn))
    return batch_norm_relu_max_pool(conv(x), bn, _RELU, _STEM_POOL)


def _train_conv_bn(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool) -> torch.Tensor:
    """``act(bn(conv(x)))`` in training: torch's conv, then the BN (batch statistics,
    running-stat updates as ``nn.BatchNorm2d``) and the ReLU as one op (``batch_norm_act``)."""
    return batch_norm_act(conv(x), bn, _RELU if relu else None)


def _train_unit_v2(x: torch.Tensor, pairs: list, stride: int) -> torch.Tensor:
    """A ShuffleNet V2 unit of a ``fuse()``d forward in training, as the package's model trains
    it (``models.shufflenet_v2._training_branch``): each conv torch's, each BN with the ReLU
    after it as one op, the ending one ``interleave`` op. ``pairs``: (conv, BN) of branch2's
    compress, depthwise, expand, then (stride 2) branch1's depthwise and pointwise."""
    (compress, compress_bn), (depthwise, depthwise_bn), (expand, expand_bn) = pairs[:3]
    if stride == 1:
        x1, x2 = x.chunk(2, 1)  # the halves the graph pass proved the code takes
    else:
        (shortcut_depthwise, shortcut_depthwise_bn), (shortcut, shortcut_bn) = pairs[3:]
        x1 = _train_conv_bn(_train_conv_bn(x, shortcut_depthwise, shortcut_depthwise_bn, False), shortcut,
                            shortcut_bn, True)
        x2 = x
    y = _train_conv_bn(x2, compress, compress_bn, True)
    y = _train_conv_bn(y, depthwise, depthwise_bn, False)
    return fused_cat_shuffle(x1, _train_conv_bn(y, expand, expand_bn, True))


@dataclass(frozen=True)
class FusedConv:
    """One conv that a ``fuse()``d forward runs fused (paths from the module ``fused_convs``
    was asked about)."""

    conv: str  # qualified name of the nn.Conv2d
    bn: str | None  # qualified name of the BatchNorm2d folded into it, if any
    kernel: str = "conv1x1_shuffle"  # or "conv2d_bn": torch's conv with the BN folded in
    input_shuffle: int = 1  # shuffle groups before the conv (1: none)
    output_shuffle: int = 1  # shuffle groups after the conv (1: none)
    relu: bool = False
    residual: bool = False  # a residual add in the epilogue
    bn_after_shuffle: bool = False


@contextlib.contextmanager
def original_forwards(model: nn.Module) -> Iterator[None]:
    """Inside this block the modules of ``model`` that ``fuse`` rewrote run their class's own
    forward (the unfused code, every submodule called): e.g. for forward hooks on each conv.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"original_forwards expects an nn.Module, got {type(model).__name__}")
    taken = [(m, vars(m).pop("forward")) for m in model.modules() if isinstance(vars(m).get("forward"), FusedForward)]
    try:
        yield
    finally:
        for module, forward in taken:
            module.forward = forward


def _compile_forward(source: str, namespace: dict[str, Any]) -> types.FunctionType:
    # A linecache entry under a unique name, so tracebacks and inspect show the code.
    filename = f"<shufflenet_ops.fuse {hashlib.sha1(source.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    scope = dict(namespace)
    exec(compile(source, filename, "exec"), scope)  # noqa: S102  (code generated by torch.fx)
    return scope["forward"]


def _forward_function(module_type: type, codes: dict[str, str], namespace: dict[str, Any], optional: tuple[str, ...]):
    """The function ``FusedForward`` binds: the generated code of one graph, or of one per
    mode (``codes`` keyed "any", or "train" and "eval") chosen by ``self.training``.

    The trace fixed what Python evaluated while tracing; two things it may have fixed are
    checked at run time, with the class's own (unfused) forward as the fallback: which
    ``training`` flags were read (mode-dependent code runs only when every module of the
    subtree is in the same mode), and arguments that default to None (``if mask is not
    None`` was traced with a tensor: a None ``optional`` argument runs the original code).
    """
    functions = {mode: _compile_forward(code, namespace) for mode, code in codes.items()}
    signature = inspect.signature(next(iter(functions.values())))
    if set(functions) == {"any"} and not optional:
        return functions["any"]

    def forward(self, *args, **kwargs):
        if optional:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            if any(bound.arguments[name] is None for name in optional):
                return module_type.forward(self, *args, **kwargs)
        if "any" in functions:
            return functions["any"](self, *args, **kwargs)
        mode = self.training
        if any(m.training != mode for m in self.modules()):
            return module_type.forward(self, *args, **kwargs)
        return functions["train" if mode else "eval"](self, *args, **kwargs)

    forward.__signature__ = signature
    return forward


class FusedForward(functools.partial):
    """The forward that ``fuse`` installed on one module instance: torch.fx's code for the
    rewritten graph (``code``; per mode when the forward reads ``training`` flags) bound to
    the module as ``self``. ``sites`` lists its fused convs (paths relative to the module).
    A ``functools.partial`` of the generated function, so ``inspect.signature``,
    torch.export and torch.compile see the real signature and code; it deep-copies and
    pickles with its module (``copy.deepcopy``, ``torch.save``)."""

    codes: dict[str, str]
    sites: tuple[FusedConv, ...]

    def __new__(cls, module: nn.Module, codes: dict[str, str], namespace: dict[str, Any],
                sites: tuple[FusedConv, ...], optional: tuple[str, ...] = ()):
        self = super().__new__(cls, _forward_function(type(module), codes, namespace, optional), module)
        self.codes, self.sites, self._namespace, self._optional = codes, sites, namespace, optional
        return self

    @property
    def module(self) -> nn.Module:
        return self.args[0]

    @property
    def code(self) -> str:
        """The generated code (both modes' when they differ)."""
        return "\n".join(self.codes.values())

    def __deepcopy__(self, memo: dict) -> "FusedForward":
        # The module's copy is already in the memo (deepcopy creates it before its state).
        return FusedForward(copy.deepcopy(self.module, memo), self.codes, self._namespace, self.sites, self._optional)

    def __reduce__(self):
        # Modules in fx's namespace (torch, ...) pickle by name; functions by reference.
        names = {k: ("module", v.__name__) if isinstance(v, types.ModuleType) else ("object", v)
                 for k, v in self._namespace.items()}
        return (_rebuild_forward, (self.module, self.codes, names, self.sites, self._optional))

    def __repr__(self) -> str:
        return f"FusedForward({type(self.module).__name__}, {len(self.sites)} fused conv(s))"


def _rebuild_forward(module: nn.Module, codes: dict, names: dict, sites: tuple, optional: tuple) -> FusedForward:
    namespace = {k: importlib.import_module(v) if kind == "module" else v for k, (kind, v) in names.items()}
    return FusedForward(module, codes, namespace, sites, optional)


# ------------------------------------------------------------------------ graph rewrite
def _is_fused_call(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is fused_conv1x1


def _apply(root: nn.Module, graph: fx.Graph, pattern: _Pattern) -> set[fx.Node]:
    """Replace the pattern by one ``fused_conv1x1`` call; returns the erased nodes."""
    conv_node = pattern.conv_node
    source = pattern.input_source if pattern.input_source is not None else conv_node.args[0]
    with graph.inserting_before(conv_node):
        conv = graph.get_attr(conv_node.target)
        bn = graph.get_attr(pattern.bn_target) if pattern.bn_node is not None else None
        fused_node = graph.call_function(
            fused_conv1x1,
            (source, conv, bn),
            {
                "input_shuffle": pattern.input_shuffle_groups,
                "output_shuffle": pattern.output_shuffle_groups,
                "relu": pattern.relu,
                "bn_after_shuffle": pattern.bn_after_shuffle,
            },
        )
    return _replace(root, [conv_node, *pattern.consumed], fused_node, also_erase=[conv_node.args[0]])


def _replace(root: nn.Module, chain: list[fx.Node], new: fx.Node, also_erase: list[fx.Node]) -> set[fx.Node]:
    """Let ``new`` stand for ``chain`` (a node and the shape-keeping ops after it, each the
    only reader of the one before, so that only the first and last may have shape queries)
    and erase what nothing reads any more; returns the erased nodes."""
    for node in chain:  # shape queries of replaced values read the same shape from the new node
        for user in list(node.users):
            if _is_shape_query(user):
                user.replace_input_with(node, new)
    chain[-1].replace_all_uses_with(new)
    size_inputs = [n for node in chain[1:] for n in node.all_input_nodes if _is_size_node(n)]
    # The replaced nodes (erased last one first), then ``also_erase`` (an input shuffle)
    # and the size arithmetic of a replaced shuffle, when nothing else reads them.
    return _erase_dead(root, [*size_inputs, *also_erase, *chain])


def _erase_dead(root: nn.Module, candidates: list[fx.Node]) -> set[fx.Node]:
    """Erase the candidates that nothing reads any more, from the last of the list, then
    the layout ops and size arithmetic that only they read. (Not graph.eliminate_dead_code:
    that would also drop unused in-place method calls of the user's code.)"""
    pending = list(candidates)
    erased: set[fx.Node] = set()
    while pending:
        node = pending.pop()
        if node in erased or node.users or node.op in ("placeholder", "output", "get_attr"):
            continue
        inputs = list(node.all_input_nodes)
        node.graph.erase_node(node)
        erased.add(node)
        pending.extend(n for n in inputs if _is_size_node(n) or _is_layout_op(root, n))
    return erased


def _is_size_node(node: fx.Node) -> bool:
    return _is_shape_query(node) or (node.op == "call_function" and node.target in _SIZE_ARITHMETIC)


def _epilogue_free(node: fx.Node) -> bool:
    """A fused call whose output can still take a residual and a ReLU: no ReLU, no
    residual, and nothing but one value user reads it (not even its shape)."""
    return (
        _is_fused_call(node)
        and not node.kwargs["relu"]
        and node.args[3:] in ((), (None,))
        and len(node.users) == 1
    )


def _residual_of(add: fx.Node, branch: fx.Node) -> fx.Node | None:
    """The other operand if ``add`` is ``branch + other`` or ``other + branch`` (no alpha)."""
    if add.kwargs or len(add.args) != 2:
        return None
    is_add = (add.op == "call_function" and add.target in _ADD_FUNCTIONS) or (
        add.op == "call_method" and add.target == "add"
    )
    if not is_add:
        return None
    first, second = add.args
    other = second if first is branch else first if second is branch else None
    return other if isinstance(other, fx.Node) and other is not branch else None


def _fuse_residual_adds(root: nn.Module, graph: fx.Graph) -> bool:
    """``[relu](fused(x) + r)`` -> ``fused(x, residual=r, relu=...)``: the add (and ReLU)
    run in the conv's epilogue. The new call sits where the add was, after ``r`` exists."""
    changed = False
    for node in list(graph.nodes):
        if not _epilogue_free(node):
            continue
        add = next(iter(node.users))
        residual = _residual_of(add, node)
        if residual is None:
            continue
        users = _value_users(add)
        relu = users[0] if len(users) == 1 and _is_relu_of(root, users[0], add) else None
        end = relu if relu is not None else add
        with graph.inserting_before(add):
            fused = graph.call_function(
                fused_conv1x1, (*node.args[:3], residual), {**node.kwargs, "relu": relu is not None}
            )
        for user in list(add.users):  # shape queries of the sum read the fused output's shape
            if user is not relu:
                user.replace_input_with(add, fused)
        end.replace_all_uses_with(fused)
        for dead in (relu, add, node):
            if dead is not None:
                graph.erase_node(dead)
        changed = True
    return changed


# 3x3 pools with stride 2 and padding 1, the other arguments at their defaults: what
# avg_pool3x3s2_relu / max_pool3x3s2_relu compute before their ReLU. Per kind: the module
# type, the function, its parameters in order, the values each may take.
_POOL_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "count_include_pad": True,
                  "divisor_override": None, "return_indices": False}
_POOL3X3S2 = {"kernel_size": (3, (3, 3)), "stride": (2, (2, 2)), "padding": (1, (1, 1)), "ceil_mode": (False,)}
_AVG_POOL3X3S2 = (
    nn.AvgPool2d, F.avg_pool2d,
    ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    {**_POOL3X3S2, "count_include_pad": (True,), "divisor_override": (None,)},
)
_MAX_POOL3X3S2 = (
    nn.MaxPool2d, F.max_pool2d,
    ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    {**_POOL3X3S2, "dilation": (1, (1, 1)), "return_indices": (False,)},
)


def _is_pool3x3s2(root: nn.Module, node: fx.Node, kind: tuple) -> bool:
    """Whether ``node`` is the pool ``kind`` (``_AVG_POOL3X3S2`` / ``_MAX_POOL3X3S2``), as a
    module call or a function call with positional or keyword arguments."""
    module_type, function, names, wanted = kind
    module = _submodule(root, node)
    if module is not None:
        return (
            type(module) is module_type and len(node.args) == 1 and not node.kwargs
            and all(getattr(module, name) in values for name, values in wanted.items())
        )
    if node.op != "call_function" or node.target is not function:
        return False
    if len(node.args) > len(names) or set(node.kwargs) - set(names[len(node.args):]):
        return False
    given = {**dict(zip(names, node.args)), **node.kwargs}
    return all(given.get(name, _POOL_DEFAULTS.get(name)) in values for name, values in wanted.items())


def _channel_concat_pair(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """``(a, b)`` if ``node`` is ``torch.cat((a, b), 1)`` (or ``concat``/``concatenate``, a
    list or tuple, ``dim`` positional or keyword) of two traced values."""
    if node.op != "call_function" or node.target not in _CONCAT_FUNCTIONS or set(node.kwargs) - {"dim"}:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    parts = node.args[0] if node.args else None
    if dim != 1 or not isinstance(parts, (list, tuple)) or len(parts) != 2:
        return None
    return tuple(parts) if all(isinstance(p, fx.Node) for p in parts) else None


def fused_cat_shuffle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``shuffle(torch.cat((a, b), 1), 2)`` of a ``fuse()``d forward (the ShuffleNet V2 unit's
    ending, however its shuffle was written): one ``functional.interleave`` copy when ``a``
    and ``b`` are 4-D tensors of the same shape, dtype and device. Otherwise the halves do
    not interleave (or torch's cat would promote), and the cat and the shuffle run as the
    original code ran them (its errors too, e.g. for an odd channel count).

    Returns ``(N, Ca + Cb, H, W)``, in ``b``'s memory format when interleaved (see
    ``interleave``); the original view/transpose shuffle returns contiguous NCHW."""
    if a.dim() == 4 and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device:
        return functional.interleave(a, b)
    return reference.channel_shuffle(torch.cat((a, b), 1), 2)


def _fuse_concat_shuffles(root: nn.Module, graph: fx.Graph) -> bool:
    """``shuffle(cat((a, b), 1), 2)``, the shuffle written in any form that
    ``_match_shuffle_after`` recognises, -> ``fused_cat_shuffle(a, b)``: one copy instead
    of two. The shuffle's output may have any readers (a stride-2 unit's two branches, a
    chunk). The concat's width is not in the graph: the shuffle is probed at two widths
    (``_CONCAT_PROBE_CHANNELS``), so an idiom whose sizes are constants is not matched."""
    changed = False
    for concat in list(graph.nodes):
        pair = _channel_concat_pair(concat)
        if pair is None:
            continue
        found = [_match_shuffle_after(root, concat, channels) for channels in _CONCAT_PROBE_CHANNELS]
        if any(match is None or match[0] != 2 for match in found) or found[0][1] != found[-1][1]:
            continue
        with graph.inserting_before(concat):
            fused = graph.call_function(fused_cat_shuffle, pair)
        _replace(root, [concat, *found[0][1]], fused, also_erase=[])
        changed = True
    return changed


def _fuse_pooled_concats(root: nn.Module, graph: fx.Graph) -> bool:
    """``relu(cat([avg_pool3x3s2(x), fused(h)], 1))`` -> ``cat([avg_pool3x3s2_relu(x),
    fused(h, relu=True)], 1)`` (either order): the stride-2 unit's ending, each half's ReLU
    in its own one-pass kernel."""
    changed = False
    for relu in list(graph.nodes):
        concat = relu.args[0] if relu.args and isinstance(relu.args[0], fx.Node) else None
        if concat is None or not _is_relu_of(root, relu, concat) or len(concat.users) != 1:
            continue
        parts = _channel_concat_pair(concat)
        if parts is None:
            continue
        fused = next((p for p in parts if _epilogue_free(p)), None)
        pool = next((p for p in parts if p is not fused), None)
        if fused is None or not isinstance(pool, fx.Node) or len(pool.users) != 1:
            continue
        if not _is_pool3x3s2(root, pool, _AVG_POOL3X3S2):
            continue
        with graph.inserting_before(pool):
            pooled = graph.call_function(functional.avg_pool3x3s2_relu, (pool.args[0],))
        pool.replace_all_uses_with(pooled)
        graph.erase_node(pool)
        fused.kwargs = {**fused.kwargs, "relu": True}
        relu.replace_all_uses_with(concat)
        graph.erase_node(relu)
        changed = True
    return changed


def _fold_conv_batchnorms(root: nn.Module, graph: fx.Graph) -> bool:
    """``bn(conv(x))`` for the other convs (3x3 depthwise, stem, ungrouped 1x1 without a
    shuffle) -> ``fused_conv_bn``: the BN folds into the conv in eval mode."""
    changed = False
    for node in list(graph.nodes):
        conv = _submodule(root, node)
        if conv is None or not is_foldable_conv(conv) or len(node.args) != 1 or node.kwargs:
            continue
        users = _value_users(node)
        if len(users) != 1 or _batchnorm_of(root, users[0], node, conv.out_channels) is None:
            continue
        bn = users[0]
        with graph.inserting_before(node):
            conv_attr, bn_attr = graph.get_attr(node.target), graph.get_attr(bn.target)
            fused = graph.call_function(fused_conv_bn, (node.args[0], conv_attr, bn_attr))
        for user in list(node.users):  # shape queries of the conv output: same shape
            if user is not bn:
                user.replace_input_with(node, fused)
        bn.replace_all_uses_with(fused)
        graph.erase_node(bn)
        graph.erase_node(node)
        changed = True
    return changed


def _fuse_max_pool_relus(root: nn.Module, graph: fx.Graph) -> bool:
    """``max_pool3x3s2(relu(y))`` -> ``max_pool3x3s2_relu(y)`` (the stem): ReLU is monotone,
    so it commutes with the max; one pass, and no int64 indices written."""
    changed = False
    for pool in list(graph.nodes):
        relu = pool.args[0] if pool.args and isinstance(pool.args[0], fx.Node) else None
        if relu is None or len(relu.users) != 1 or not _is_pool3x3s2(root, pool, _MAX_POOL3X3S2):
            continue
        if not relu.args or not isinstance(relu.args[0], fx.Node) or not _is_relu_of(root, relu, relu.args[0]):
            continue
        with graph.inserting_before(pool):
            fused = graph.call_function(functional.max_pool3x3s2_relu, (relu.args[0],))
        pool.replace_all_uses_with(fused)
        graph.erase_node(pool)
        graph.erase_node(relu)
        changed = True
    return changed


def _fuse_stems(graph: fx.Graph) -> bool:
    """``max_pool3x3s2_relu(fused_conv_bn(x, conv, bn))`` -> ``fused_stem(x, conv, bn)`` (a
    ShuffleNet stem): the same ops in eval, one BN + ReLU + pool op in training."""
    changed = False
    for pool in list(graph.nodes):
        conv_bn = pool.args[0] if _is_call(pool, functional.max_pool3x3s2_relu) else None
        if not _is_call(conv_bn, fused_conv_bn) or len(conv_bn.users) != 1:
            continue
        with graph.inserting_before(pool):
            fused = graph.call_function(fused_stem, conv_bn.args)
        pool.replace_all_uses_with(fused)
        graph.erase_node(pool)
        graph.erase_node(conv_bn)
        changed = True
    return changed


def _is_call(node: object, function: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is function


def _depthwise3x3_stride(root: nn.Module, node: fx.Node) -> int | None:
    """The stride of the conv of a ``fused_conv_bn`` call if it is a ShuffleNet unit's 3x3
    depthwise conv (padding 1, stride 1 or 2, one channel per group), else None."""
    conv = root.get_submodule(node.args[1].target)
    channels = conv.in_channels
    if not (
        conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == channels == conv.out_channels and conv.stride in ((1, 1), (2, 2))
    ):
        return None
    return conv.stride[0]


def _fuse_whole_units(root: nn.Module, graph: fx.Graph) -> bool:
    """``fused_conv1x1`` (compress) -> ``fused_conv_bn`` (3x3 depthwise) -> ``fused_conv1x1``
    (expand) with the unit's ending -> one ``fused_unit`` call. Each value must feed only the
    next; exactly the V1 unit's computation, else nothing changes."""
    changed = False
    for expand in list(graph.nodes):
        if not (_is_fused_call(expand) and expand.kwargs["relu"] and expand.args[2] is not None):
            continue
        if expand.kwargs["output_shuffle"] != 1 or expand.kwargs["bn_after_shuffle"]:
            continue
        depthwise = expand.args[0]
        if not _is_call(depthwise, fused_conv_bn) or len(_value_users(depthwise)) != 1:
            continue
        compress = depthwise.args[0]
        if not (_is_call(compress, fused_conv1x1) and compress.kwargs["relu"] and compress.args[2] is not None):
            continue
        if len(_value_users(compress)) != 1 or compress.args[3:] not in ((), (None,)):
            continue
        if compress.kwargs["input_shuffle"] != 1:
            continue
        before, after = compress.kwargs["output_shuffle"], expand.kwargs["input_shuffle"]
        stride = _depthwise3x3_stride(root, depthwise)
        if (before > 1 and after > 1) or stride is None:
            continue
        x = compress.args[0]
        residual = expand.args[3] if len(expand.args) > 3 else None
        compress_conv = root.get_submodule(compress.args[1].target)
        expand_conv = root.get_submodule(expand.args[1].target)
        if stride == 1:  # relu(x + expand(...)), x the unit's input
            if residual is not x or expand_conv.out_channels != compress_conv.in_channels:
                continue
            end, erased = expand, [expand]
        else:  # cat((avg_pool3x3s2_relu(x), expand(...)), 1): _fuse_pooled_concats's form
            if residual is not None or len(expand.users) != 1:
                continue
            end = next(iter(expand.users))
            parts = end.args[0] if end.args else None
            if not (end.op == "call_function" and end.target in _CONCAT_FUNCTIONS and isinstance(parts, (list, tuple))):
                continue
            dim = end.kwargs.get("dim", end.args[1] if len(end.args) > 1 else 0)
            pool = parts[0] if len(parts) == 2 and parts[1] is expand else None
            if dim != 1 or not _is_call(pool, functional.avg_pool3x3s2_relu) or pool.args != (x,):
                continue
            if len(pool.users) != 1:
                continue
            erased = [end, expand, pool]
        with graph.inserting_before(end):
            unit = graph.call_function(
                fused_unit,
                (x, compress.args[1], compress.args[2], depthwise.args[1], depthwise.args[2], expand.args[1],
                 expand.args[2]),
                {
                    "shuffle_groups": max(before, after), "shuffle_before_depthwise": after == 1,
                    "compress_bn_after_shuffle": compress.kwargs["bn_after_shuffle"], "stride": stride,
                },
            )
        # Shape queries of the values that no longer exist (the official code's shuffle asserts
        # on x.data.size()) read the same shape from a data-less stand-in.
        bottleneck = root.get_submodule(compress.args[1].target).out_channels
        _redirect_shape_queries(graph, x, [(compress, bottleneck, 1), (depthwise, bottleneck, stride)], compress)
        end.replace_all_uses_with(unit)
        for node in (*erased, depthwise, compress):
            graph.erase_node(node)
        changed = True
    return changed


def _shape_stand_in(x: torch.Tensor, channels: int, stride: int) -> torch.Tensor:
    """A data-less (meta) tensor with the shape of a unit's bottleneck activation after a 3x3
    conv of ``stride`` (1: the compress output), for shape queries of values a ``fused_unit``
    no longer computes."""
    n, _, h, w = x.shape
    return torch.empty((n, channels, (h - 1) // stride + 1, (w - 1) // stride + 1), dtype=x.dtype, device="meta")


def _redirect_shape_queries(
    graph: fx.Graph, x: fx.Node, values: list[tuple[fx.Node, int, int]], before: fx.Node
) -> None:
    """Let the shape queries of ``values``, ``(node, channels, stride)`` computed from a unit's
    input ``x`` that a whole-unit call replaces, read a ``_shape_stand_in`` inserted before
    ``before`` (after ``x``, before every query)."""
    for value, channels, stride in values:
        queries = [user for user in value.users if _is_shape_query(user)]
        if queries:
            with graph.inserting_before(before):
                stand_in = graph.call_function(_shape_stand_in, (x, channels, stride))
            for query in queries:
                query.replace_input_with(value, stand_in)


def _relu_pointwise(node: object) -> bool:
    """A ``fused_conv1x1`` call computing ``relu(bn(conv(x)))``: a BN, the ReLU in the
    epilogue, no shuffle, no residual (a V2 branch's 1x1 conv)."""
    return (
        _is_call(node, fused_conv1x1) and node.args[2] is not None and node.args[3:] in ((), (None,))
        and node.kwargs["relu"] and node.kwargs["input_shuffle"] == node.kwargs["output_shuffle"] == 1
        and not node.kwargs["bn_after_shuffle"]
    )


def _only_feeds(node: fx.Node, user: fx.Node) -> bool:
    """``user`` is the one reader of ``node``'s value (shape queries aside)."""
    return _value_users(node) == [user]


def _v2_branch(root: nn.Module, end: fx.Node, last: object, depthwise_first: bool) -> tuple[fx.Node, ...] | None:
    """The nodes of a V2 branch ending in ``last``, one of ``end``'s operands, from its input
    on, each read only by the next: ``(compress, depthwise, expand)`` for branch2
    (``_relu_pointwise`` -> ``fused_conv_bn`` of a 3x3 depthwise conv -> ``_relu_pointwise``),
    ``(depthwise, pointwise)`` for branch1 (``depthwise_first``). Channel counts must agree
    along it (else the code fails as written, and stays so). None if not such a branch."""
    if not (_relu_pointwise(last) and _only_feeds(last, end)):
        return None
    depthwise = last.args[0]
    if not (_is_call(depthwise, fused_conv_bn) and _only_feeds(depthwise, last)):
        return None
    nodes = (depthwise, last)
    if not depthwise_first:
        compress = depthwise.args[0]
        if not (_relu_pointwise(compress) and _only_feeds(compress, depthwise)):
            return None
        nodes = (compress, *nodes)
    if _depthwise3x3_stride(root, depthwise) is None:
        return None
    convs = [root.get_submodule(node.args[1].target) for node in nodes]
    if any(a.out_channels != b.in_channels for a, b in itertools.pairwise(convs)):
        return None
    return nodes


def _split_source(root: nn.Module, first: fx.Node, second: fx.Node) -> fx.Node | None:
    """``x`` if ``first`` is ``x``'s first channel half and ``second`` its second half (as
    ``x.chunk(2, 1)`` splits an even width), however written (chunk, split, narrow, slices,
    ...: evaluated on probe tensors of two widths), else None. ``x`` is searched among
    ``first``'s inputs, nearest first."""
    source = first
    for _ in range(_MAX_LAYOUT_CHAIN):
        source = source.args[0] if source.args and isinstance(source.args[0], fx.Node) else None
        if source is None:
            return None
        probes = [(batch, channels, height, width)
                  for channels, (batch, height, width) in zip(_CONCAT_PROBE_CHANNELS, _PROBE_SHAPES)]
        if all(_are_halves(root, source, first, second, shape) for shape in probes):
            return source
    return None


def _are_halves(root: nn.Module, source: fx.Node, first: fx.Node, second: fx.Node, shape: tuple[int, ...]) -> bool:
    """Whether ``first`` / ``second`` evaluate to the first / second channel half of a probe
    of ``shape`` (N, C, H, W; all elements distinct) given as ``source``."""
    probe = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    halves = probe.chunk(2, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = [_evaluate(root, node, source, probe, slicing=True) for node in (first, second)]
    except Exception:  # noqa: BLE001  (not computed from source alone by views: no match)
        return False
    return all(isinstance(v, torch.Tensor) and v.shape == h.shape and torch.equal(v, h) for v, h in zip(values, halves))


def _fuse_whole_v2_units(root: nn.Module, graph: fx.Graph) -> bool:
    """``fused_cat_shuffle(a, e)``, ``e`` a V2 unit's branch2 (``_v2_branch``), -> one
    ``fused_unit_v2`` call when either the depthwise conv has stride 1 and ``a`` and
    branch2's input are the first and second channel halves of one ``x`` (``_split_source``),
    or it has stride 2 and ``a`` is branch1 (a stride-2 depthwise conv) of branch2's input
    ``x``. Exactly the V2 unit's computation (branch2's width is x1's, branch1's is
    branch2's), else nothing changes. Dead slicing nodes of ``x`` are erased."""
    changed = False
    for end in list(graph.nodes):
        if not _is_call(end, fused_cat_shuffle):
            continue
        a, e = end.args
        branch2 = _v2_branch(root, end, e, depthwise_first=False)
        if branch2 is None or a is e:
            continue
        compress, depthwise, expand = branch2
        compress_conv = root.get_submodule(compress.args[1].target)
        half = root.get_submodule(expand.args[1].target).out_channels
        stride = _depthwise3x3_stride(root, depthwise)
        if stride == 1:
            x = _split_source(root, a, compress.args[0])
            if x is None or half != compress_conv.in_channels:
                continue
            branch1, slices = (), [a, compress.args[0]]
        else:
            x = compress.args[0]
            branch1 = _v2_branch(root, end, a, depthwise_first=True)
            if branch1 is None or branch1[0].args[0] is not x or _depthwise3x3_stride(root, branch1[0]) != 2:
                continue
            if root.get_submodule(branch1[0].args[1].target).in_channels != compress_conv.in_channels:
                continue
            if root.get_submodule(branch1[1].args[1].target).out_channels != half:
                continue
            slices = []
        replaced = (*branch2, *branch1)  # in fused_unit_v2's order: its (conv, BN) arguments
        with graph.inserting_before(end):
            layers = tuple(arg for node in replaced for arg in node.args[1:3])
            unit = graph.call_function(fused_unit_v2, (x, *layers), {"stride": stride})
        queried = [(node, root.get_submodule(node.args[1].target).out_channels, 1 if node is compress else stride)
                   for node in replaced]
        _redirect_shape_queries(graph, x, queried, next(node for node in graph.nodes if node in replaced))
        end.replace_all_uses_with(unit)
        graph.erase_node(end)
        for node in (*reversed(branch2), *reversed(branch1)):  # each read only by the next, the last by end
            graph.erase_node(node)
        _erase_dead(root, _nodes_between(graph, x, slices))
        changed = True
    return changed


def _nodes_between(graph: fx.Graph, source: fx.Node, ends: list[fx.Node]) -> list[fx.Node]:
    """The nodes ``ends`` are computed by from ``source`` (ends included, source not), in
    graph order."""
    found: set[fx.Node] = set()
    pending = list(ends)
    while pending:
        node = pending.pop()
        if node is not source and node not in found:
            found.add(node)
            pending.extend(node.all_input_nodes)
    return [node for node in graph.nodes if node in found]


def _rewrite(root: nn.Module, graph: fx.Graph, prefix: str, report: _Report) -> bool:
    """Fuse every pattern of ``graph`` (traced from ``root``) in place; True if anything changed."""
    changed = _fuse_concat_shuffles(root, graph)  # first: a conv reading the shuffle then reads one copy
    erased: set[fx.Node] = set()
    waiting: list[_Pattern] = []
    for node in list(graph.nodes):
        if node in erased:
            continue
        conv = _pointwise_conv(root, node)
        if conv is None:
            continue
        pattern = _match_conv(root, node, conv)
        if pattern is None or not pattern.has_shuffle:
            if _next_to_unrecognised_transpose(root, node, pattern):
                report.add(
                    _qualified(prefix, node.target),
                    "a reshape/transpose next to this 1x1 conv was not recognised as a channel shuffle "
                    "(it must be a pure rearrangement whose sizes come from the tensor, e.g. x.size(), "
                    "not from constants)",
                )
        if pattern is None:
            continue
        if pattern.needs_shufflenet_graph:
            waiting.append(pattern)
            continue
        erased |= _apply(root, graph, pattern)
        changed = True
    if changed:  # a ShuffleNet's graph: the rest of what the package's own models do
        for pattern in waiting:  # ungrouped 1x1 conv (+ BN) + ReLU: ReLU in the epilogue
            if pattern.conv_node not in erased:
                erased |= _apply(root, graph, pattern)
        _fuse_residual_adds(root, graph)
        _fuse_pooled_concats(root, graph)
        _fold_conv_batchnorms(root, graph)
        _fuse_max_pool_relus(root, graph)
        _fuse_stems(graph)
        _fuse_whole_units(root, graph)
        _fuse_whole_v2_units(root, graph)
    for node in graph.nodes:
        if _is_explicit_shuffle(root, node):
            where = _qualified(prefix, node.target if node.op == "call_module" else node.name)
            report.add(
                where,
                "channel shuffle not next to a fusable 1x1 conv (or its output is used elsewhere); "
                "kept as a separate op",
            )
    if changed:
        graph.lint()
    return changed


def _sites(graph: fx.Graph) -> tuple[FusedConv, ...]:
    sites = []
    for node in graph.nodes:
        if _is_call(node, fused_unit):  # its three convs, as they run when not in inference
            _, compress, compress_bn, depthwise, depthwise_bn, expand, expand_bn = node.args
            before = node.kwargs["shuffle_groups"] if node.kwargs["shuffle_before_depthwise"] else 1
            after = node.kwargs["shuffle_groups"] if not node.kwargs["shuffle_before_depthwise"] else 1
            sites += [
                FusedConv(conv=compress.target, bn=compress_bn.target, output_shuffle=before, relu=True,
                          bn_after_shuffle=node.kwargs["compress_bn_after_shuffle"]),
                FusedConv(conv=depthwise.target, bn=depthwise_bn.target, kernel="conv2d_bn"),
                FusedConv(conv=expand.target, bn=expand_bn.target, input_shuffle=after, relu=True,
                          residual=node.kwargs["stride"] == 1),
            ]
        elif _is_call(node, fused_unit_v2):  # its convs, as they run when not in inference
            layers = node.args[1:]
            for index, (conv, bn) in enumerate(zip(layers[::2], layers[1::2])):
                if index % 2:  # the depthwise convs, between the 1x1 ones
                    sites.append(FusedConv(conv=conv.target, bn=bn.target, kernel="conv2d_bn"))
                else:
                    sites.append(FusedConv(conv=conv.target, bn=bn.target, relu=True))
        elif node.op == "call_function" and node.target in (fused_conv_bn, fused_stem):
            sites.append(FusedConv(conv=node.args[1].target, bn=node.args[2].target, kernel="conv2d_bn"))
        elif _is_fused_call(node):
            _, conv, bn, *residual = node.args
            sites.append(
                FusedConv(
                    conv=conv.target, bn=None if bn is None else bn.target,
                    input_shuffle=node.kwargs["input_shuffle"], output_shuffle=node.kwargs["output_shuffle"],
                    relu=node.kwargs["relu"], residual=bool(residual) and residual[0] is not None,
                    bn_after_shuffle=node.kwargs["bn_after_shuffle"],
                )
            )
    return tuple(sites)


def _install(module: nn.Module, graphs: dict[bool, fx.Graph], constants: dict[str, Any]) -> None:
    """Put the rewritten forward on the instance: one code if the train- and eval-mode
    traces agree, else both, chosen at run time."""
    graph = graphs[module.training]
    sites = _sites(graph)  # named by the layers' qualified names, before aliasing
    with _module_aliases(module, graphs):
        codes = {mode: graph.python_code(root_module="self") for mode, graph in graphs.items()}
    sources = {"train" if mode else "eval": code.src for mode, code in codes.items()}
    if len(set(sources.values())) == 1:
        sources = {"any": next(iter(sources.values()))}
    namespace = {k: v for code in codes.values() for k, v in code.globals.items()}
    optional = tuple(
        node.target for node in graph.nodes
        if node.op == "placeholder" and node.args and node.args[0] is None and not node.target.startswith("*")
    )
    for name, value in constants.items():
        setattr(module, name, value)
    # An instance attribute: the class, its other methods and the module tree stay as they were.
    module.forward = FusedForward(module, sources, namespace, sites, optional)


@contextlib.contextmanager
def _module_aliases(module: nn.Module, graphs: dict[bool, fx.Graph]) -> Iterator[None]:
    """While the code is generated: every layer the graphs fetch or call (``stage2.0.branch2.0``)
    read through one plain instance attribute of ``module`` (``_fused_stage2_0_branch2_0``, set with
    ``object.__setattr__``: not a registered child, so the module tree and state_dict keys stay
    as they were) instead of a chain of ``nn.Module.__getattr__`` calls, ~0.4 us each: a
    fused V2 model fetches ~450 layers per forward, ~10% of its time at batch 1. A layer
    swapped after ``fuse`` is not seen either way (call ``fuse`` again); deepcopy and pickle
    keep the attribute pointing at the copied layer."""
    aliases: dict[str, str] = {}
    renamed: list[tuple[fx.Node, str]] = []
    for graph in graphs.values():
        for node in graph.nodes:
            if node.op not in ("get_attr", "call_module"):
                continue
            layer = _layer_at(module, node.target)
            if layer is None:
                continue
            if node.target not in aliases:
                alias = "_fused_" + node.target.replace(".", "_")  # readable in the generated code
                while alias in aliases.values() or (alias in vars(module) and vars(module)[alias] is not layer):
                    alias += "_"
                aliases[node.target] = alias
                object.__setattr__(module, alias, layer)
            renamed.append((node, node.target))
            node.target = aliases[node.target]
    try:
        yield
    finally:
        for node, target in renamed:
            node.target = target


def _layer_at(module: nn.Module, target: str) -> nn.Module | None:
    """The submodule at ``target`` (a dotted path), or None where it is not one."""
    try:
        layer = module.get_submodule(target)
    except AttributeError:
        return None
    return layer if layer is not module else None


@contextlib.contextmanager
def _all_in_mode(module: nn.Module, training: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in modes:
            m.training = training
        yield
    finally:
        for m, mode in modes:
            m.training = mode


# ------------------------------------------------------------------------------ driver
_HOOKS_NOTE = (
    "has hooks: called as it is so that they run (never inlined into a fused forward nor folded into a fused conv)"
)


def _is_library_layer(module: nn.Module) -> bool:
    """A torch.nn / einops layer or a package module: nothing inside it to fuse."""
    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    return "forward" not in vars(module) and not isinstance(module, containers) and _Tracer().is_leaf_module(module, "")


def _fuse_tree(module: nn.Module, path: str, report: _Report, covered: bool) -> None:
    """Rewrite ``module`` and every module below it. ``covered``: an ancestor's trace
    already inlined this module, so its findings were reported there."""
    if isinstance(module, FUSED_MODULE_TYPES):
        return
    if path and has_hooks(module):
        report.add(path, _HOOKS_NOTE)
    traced = False
    if "forward" in vars(module):  # the user's own per-instance forward (a wrapper): an fx leaf, kept
        report.add(path or f"the model ({type(module).__name__})",
                   "its forward is set on the instance; kept as it is, only its submodules were fused")
    elif not isinstance(module, (nn.ModuleList, nn.ModuleDict)):  # containers have no forward to trace
        try:
            # Traced in both modes: Python that reads a `training` flag (dropout's
            # F.dropout(x, p, self.training), `if self.training:`) is fixed by the trace.
            graphs, constants = {}, {}
            for mode in (module.training, not module.training):
                with _all_in_mode(module, mode):
                    graphs[mode], constants = _trace(module)
        except Exception as error:  # noqa: BLE001  (whatever stops tracing: search the children)
            if not covered:
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                report.add(
                    path or f"the model ({type(module).__name__})",
                    f"{type(module).__name__} could not be traced by torch.fx ({type(error).__name__}: {message}); "
                    "only its submodules were fused",
                )
        else:
            traced = True
            changed = [
                _rewrite(module, graphs[mode], path, report if not covered and mode == module.training else _Report())
                for mode in graphs
            ]
            if any(changed):
                _install(module, graphs, constants)
    for name, child in module.named_children():
        if _is_library_layer(child):
            if has_hooks(child):
                report.add(_qualified(path, name), _HOOKS_NOTE)
            continue
        _fuse_tree(child, _qualified(path, name), report, covered or traced)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with the 1x1 convs next to channel shuffles running on the fused kernels
    (a ShuffleNet V2 unit's concat + shuffle as one copy; whole V1 and V2 units as one call,
    the whole-unit op in inference).

    Works on any ``nn.Module`` (see the module docstring for the patterns). Returns the
    same kind of object as ``model``, with the same module tree, parameters, buffers and
    ``state_dict`` keys: only the ``forward`` of the modules that held a pattern is
    replaced on the instance (``FusedForward``). Eval mode: BN folded, ReLU and residual in
    the epilogue. Train mode: exactly the original computation (batch statistics,
    running-stat updates, gradients).

    Args:
        model: any ``nn.Module``.
        inplace: False (default) works on a deep copy, leaving ``model`` untouched; True
            rewrites ``model`` itself and returns it.
    Returns:
        The fused model (``model`` itself when ``inplace=True``).
    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``inplace`` not a bool.
    Warns:
        FuseWarning: once, listing what could not be traced or fused.

    What a trace fixes, and how it is handled: Python that reads ``training`` flags is
    traced in both modes (the mode chosen at run time; mixed modes run the original code);
    an argument that defaults to None runs the original code when it is None; modules with
    hooks (and wrappers, lazy modules) are called as they are, never inlined or folded, and
    their hooks are not run while tracing. What stays fixed (call ``fuse`` again after such
    a change): the model's structure and Python attributes at the time of the call (a
    module swapped for another afterwards, a changed ``self.groups``); the forward's other
    Python side effects run during ``fuse`` (twice: once per mode), not per call. The fused
    ops take no ``torch.autocast`` (cast the model instead); a fused shuffle returns the
    input's memory format, where a hand-written view/transpose shuffle returns NCHW.
    ``original_forwards(model)`` runs the unfused code; ``torch.fx.symbolic_trace`` of a
    fused model traces its class's (unfused) forward.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse expects an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():  # fused before: start again from the classes' own code
        if isinstance(module.__dict__.get("forward"), FusedForward):
            del module.forward
    report = _Report()
    _fuse_tree(model, "", report, covered=False)
    report.warn()
    return model


def fused_convs(model: nn.Module) -> dict[str, FusedConv]:
    """The convs that ``model(...)`` runs fused, by the conv's qualified name in ``model``
    (empty if ``model`` was not ``fuse()``d or nothing matched)."""
    found: dict[str, FusedConv] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        forward = module.__dict__.get("forward")
        if isinstance(forward, FusedForward):
            for site in forward.sites:
                conv = _qualified(prefix, site.conv)
                bn = None if site.bn is None else _qualified(prefix, site.bn)
                found[conv] = dataclasses.replace(site, conv=conv, bn=bn)
            return  # its forward inlines everything below it
        for name, child in module.named_children():
            visit(child, _qualified(prefix, name))

    visit(model, "")
    return found
