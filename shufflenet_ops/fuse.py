"""``fuse(model)``: run the 1x1 convs of an existing model next to a channel shuffle as
fused ``shufflenet_ops`` modules, by torch.fx graph rewriting.

What is rewritten, for every plain 1x1 ``nn.Conv2d`` (stride 1, no padding) of the model:

- output shuffle: the conv followed by a chain of BatchNorm2d, ReLU and one channel
  shuffle, in any order with BN before ReLU, each value used only by the next ->
  ``GroupConv1x1Shuffle`` (no BN) or ``GroupConv1x1BNShuffle`` (with BN; a BN after the
  shuffle is indexed in shuffled order and is folded through the inverse permutation);
- input shuffle: the conv's input is a channel shuffle (its output may be used elsewhere
  too), the conv optionally followed by BN and/or ReLU -> ``ShuffleGroupConv1x1`` or
  ``ShuffleGroupConv1x1BN``;
- otherwise a grouped (groups > 1) 1x1 conv with its BN/ReLU also runs on the fused
  kernels (shuffle_groups=1). Ungrouped 1x1 convs without a shuffle are left alone.

A channel shuffle is recognised by what it computes, not by how it is written: any chain
of layout operations (``nn.ChannelShuffle``, ``torch.channel_shuffle``,
``F.channel_shuffle``, ``view``/``reshape``/``flatten``, ``transpose``/``permute``,
``contiguous``, ...) whose sizes depend only on its input is run on probe tensors whose
elements are all distinct; if it returns ``torch.channel_shuffle(x, g)`` for some
``1 < g < C``, it is that shuffle (either convention: the official code's reshape to
(C/g, g) is found as ``g' = C/g``).

Modules that torch.fx cannot trace (data-dependent control flow, ...) keep their own code
and are searched submodule by submodule instead. Everything that could not be traced or
fused is listed in one ``FuseWarning``.

The fused conv+BN modules fold their BN (and put the ReLU in the kernel's epilogue) in
eval mode by themselves and compute exactly the unfused conv -> BN -> ReLU -> shuffle in
train mode; see ``shufflenet_ops.modules``.
"""

from __future__ import annotations

import builtins
import collections
import copy
import dis
import inspect
import math
import operator
import types
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import reference
from .modules import (
    FUSED_MODULE_TYPES,
    GroupConv1x1BNShuffle,
    GroupConv1x1Shuffle,
    ShuffleGroupConv1x1,
    ShuffleGroupConv1x1BN,
    is_plain_batchnorm,
    is_pointwise_conv,
)

__all__ = ["FuseWarning", "fuse"]


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
_MAX_LAYOUT_CHAIN = 8
# Probe shapes (N, H, W): two, so a rearrangement that only happens to match one fails.
_PROBE_SHAPES = ((2, 3, 5), (3, 1, 4))


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
        return isinstance(module, FUSED_MODULE_TYPES) or super().is_leaf_module(module, qualified_name)


def _trace(module: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph, type(module).__name__)


# ------------------------------------------------------------------------ node helpers
def _submodule(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


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


def _is_relu_of(gm: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    if node.op == "call_module":
        module = _submodule(gm, node)
        return type(module) is nn.ReLU and node.args == (source,) and not node.kwargs
    if node.op == "call_function" and node.target in _RELU_FUNCTIONS:
        return _first_argument_is(node, source) and len(node.args) <= 2 and set(node.kwargs) <= {"inplace"}
    if node.op == "call_method" and node.target in _RELU_METHODS:
        return node.args == (source,) and not node.kwargs
    return False


def _batchnorm_of(gm: fx.GraphModule, node: fx.Node, source: fx.Node, channels: int) -> nn.BatchNorm2d | None:
    module = _submodule(gm, node)
    if module is not None and is_plain_batchnorm(module) and module.num_features == channels:
        if node.args == (source,) and not node.kwargs:
            return module
    return None


def _pointwise_conv(gm: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    module = _submodule(gm, node)
    if module is not None and is_pointwise_conv(module) and len(node.args) == 1 and not node.kwargs:
        if isinstance(node.args[0], fx.Node):
            return module
    return None


def _is_layout_op(gm: fx.GraphModule, node: fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_method":
        return node.target in _LAYOUT_METHODS
    if node.op == "call_function":
        return node.target in _LAYOUT_FUNCTIONS
    if node.op == "call_module":
        return isinstance(_submodule(gm, node), _LAYOUT_MODULES) and len(node.args) == 1
    return False


def _is_explicit_shuffle(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(_submodule(gm, node), nn.ChannelShuffle)
    return node.op == "call_function" and node.target in _EXPLICIT_SHUFFLE_FUNCTIONS


# ------------------------------------------------------------------- shuffle detection
class _NotPure(Exception):
    """The candidate depends on something other than its input tensor's shape."""


def _evaluate(gm: fx.GraphModule, end: fx.Node, source: fx.Node, probe: torch.Tensor) -> object:
    """The value of ``end`` when ``source`` is ``probe``: the layout chain runs, and the
    size arithmetic it reads (``b, c, h, w = x.size()``, ``c // g``, ...) is recomputed."""
    values: dict[fx.Node, object] = {source: probe}

    def value(node: fx.Node) -> object:
        if node in values:
            return values[node]
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        if _is_layout_op(gm, node) and node.op == "call_module":
            result = _submodule(gm, node)(*args, **kwargs)
        elif _is_layout_op(gm, node) and node.op == "call_method":
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        elif node.op == "call_function" and (node.target in _SIZE_ARITHMETIC or node.target in _LAYOUT_FUNCTIONS):
            result = node.target(*args, **kwargs)
        elif node.op == "call_method" and node.target in _SHAPE_METHODS:
            result = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            raise _NotPure(node.format_node())
        values[node] = result
        return result

    return value(end)


def _shuffle_groups_of(gm: fx.GraphModule, source: fx.Node, end: fx.Node, channels: int) -> int | None:
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
                result = _evaluate(gm, end, source, probe)
        except Exception:  # noqa: BLE001  (not a pure rearrangement of this input: no match)
            return None
        if not isinstance(result, torch.Tensor) or result.shape != probe.shape:
            return None
        groups = next((g for g in divisors if torch.equal(result, reference.channel_shuffle(probe, g))), None)
        if groups is None or (found is not None and groups != found):
            return None
        found = groups
    return found


def _match_shuffle_after(gm: fx.GraphModule, source: fx.Node, channels: int) -> tuple[int, list[fx.Node]] | None:
    """A channel shuffle applied to ``source`` (its only value user): ``(groups, nodes)``.
    Nodes inside the shuffle must have no other user; the last one may have any."""
    chain: list[fx.Node] = []
    node = source
    while len(chain) < _MAX_LAYOUT_CHAIN:
        users = _value_users(node) if node is source else list(node.users)
        if len(users) != 1 or not _is_layout_op(gm, users[0]) or users[0].args[0] is not node:
            break
        node = users[0]
        chain.append(node)
    for length in range(len(chain), 0, -1):  # the longest match absorbs a trailing .contiguous()
        groups = _shuffle_groups_of(gm, source, chain[length - 1], channels)
        if groups is not None:
            return groups, chain[:length]
    return None


def _match_shuffle_before(gm: fx.GraphModule, conv_node: fx.Node, channels: int) -> tuple[fx.Node, int] | None:
    """``(unshuffled tensor, groups)`` if the conv's input is a channel shuffle of it."""
    chain: list[fx.Node] = []  # layout nodes, from the conv's input backwards
    node = conv_node.args[0]
    while len(chain) < _MAX_LAYOUT_CHAIN and isinstance(node, fx.Node) and _is_layout_op(gm, node):
        chain.append(node)
        node = node.args[0]
    for length in range(len(chain), 0, -1):
        source = chain[length - 1].args[0]
        groups = _shuffle_groups_of(gm, source, chain[0], channels)
        if groups is not None:
            return source, groups
    return None


def _is_transpose(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _TRANSPOSE_METHODS) or (
        node.op == "call_function" and node.target in _TRANSPOSE_FUNCTIONS
    )


def _next_to_unrecognised_transpose(gm: fx.GraphModule, conv_node: fx.Node, pattern: "_Pattern | None") -> bool:
    """Whether a layout chain with a transpose follows the conv (after its BN/ReLU) or
    feeds it: a shuffle written in a form the probe could not verify."""
    after = pattern.consumed[-1] if pattern is not None and pattern.consumed else conv_node
    node, steps = after, 0
    while steps < _MAX_LAYOUT_CHAIN and len(users := _value_users(node)) == 1 and _is_layout_op(gm, users[0]):
        node, steps = users[0], steps + 1
        if _is_transpose(node):
            return True
    node, steps = conv_node.args[0], 0
    while steps < _MAX_LAYOUT_CHAIN and isinstance(node, fx.Node) and _is_layout_op(gm, node):
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


def _match_conv(gm: fx.GraphModule, conv_node: fx.Node, conv: nn.Conv2d) -> _Pattern | None:
    pattern = _Pattern(conv_node, conv)
    channels = conv.out_channels
    current = conv_node
    while True:
        users = _value_users(current)
        if len(users) != 1:
            break
        successor = users[0]
        # BN must come before the ReLU to fold; at most one of each and one shuffle.
        if pattern.bn_node is None and not pattern.relu and _batchnorm_of(gm, successor, current, channels):
            pattern.bn_node = successor
            pattern.bn_after_shuffle = pattern.output_shuffle_groups > 1
            nodes = [successor]
        elif not pattern.relu and _is_relu_of(gm, successor, current):
            pattern.relu = True
            nodes = [successor]
        elif pattern.output_shuffle_groups == 1 and (found := _match_shuffle_after(gm, current, channels)):
            pattern.output_shuffle_groups, nodes = found
        else:
            break
        pattern.consumed.extend(nodes)
        current = nodes[-1]

    if pattern.output_shuffle_groups == 1:
        before = _match_shuffle_before(gm, conv_node, conv.in_channels)
        if before is not None:
            pattern.input_source, pattern.input_shuffle_groups = before
        elif conv.groups == 1:
            return None  # a plain 1x1 conv with no shuffle: nothing to gain
    return pattern


def _fused_module(pattern: _Pattern, bn: nn.BatchNorm2d | None) -> nn.Module:
    conv = pattern.conv
    if pattern.input_source is not None:
        if bn is not None:
            module: nn.Module = ShuffleGroupConv1x1BN(conv, bn, pattern.input_shuffle_groups, relu=pattern.relu)
        else:
            module = ShuffleGroupConv1x1.from_conv(conv, pattern.input_shuffle_groups, relu=pattern.relu)
    elif bn is not None:
        module = GroupConv1x1BNShuffle(
            conv, bn, pattern.output_shuffle_groups, relu=pattern.relu, bn_after_shuffle=pattern.bn_after_shuffle
        )
    else:
        module = GroupConv1x1Shuffle.from_conv(conv, pattern.output_shuffle_groups, relu=pattern.relu)
    module.training = conv.training  # not .train(): that would also reset the BN's own mode
    return module


def _erase_dead(gm: fx.GraphModule, candidates: list[fx.Node]) -> set[fx.Node]:
    """Erase the candidates that nothing reads any more, from the last of the list, then
    the layout ops and size arithmetic that only they read. (Not graph.eliminate_dead_code: that would also drop
    unused in-place method calls of the user's code.)"""
    graph = gm.graph
    pending = list(candidates)
    erased: set[fx.Node] = set()
    while pending:
        node = pending.pop()
        if node in erased or node.users or node.op in ("placeholder", "output", "get_attr"):
            continue
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        erased.add(node)
        pending.extend(n for n in inputs if _is_size_node(n) or _is_layout_op(gm, n))
    return erased


def _is_size_node(node: fx.Node) -> bool:
    return _is_shape_query(node) or (node.op == "call_function" and node.target in _SIZE_ARITHMETIC)


def _apply(gm: fx.GraphModule, pattern: _Pattern) -> set[fx.Node]:
    """Replace the pattern by one fused module call; returns the erased nodes."""
    graph = gm.graph
    bn = None if pattern.bn_node is None else gm.get_submodule(pattern.bn_target)
    fused = _fused_module(pattern, bn)
    conv_node = pattern.conv_node
    gm.add_submodule(conv_node.target, fused)  # the fused module takes the conv's place
    source = pattern.input_source if pattern.input_source is not None else conv_node.args[0]
    with graph.inserting_before(conv_node):
        fused_node = graph.call_module(conv_node.target, (source,))
    replaced = [conv_node, *pattern.consumed]
    for node in replaced:  # shape queries of replaced values read the same shape from the fused output
        for user in list(node.users):
            if _is_shape_query(user):
                user.replace_input_with(node, fused_node)
    replaced[-1].replace_all_uses_with(fused_node)
    size_inputs = [n for node in pattern.consumed for n in node.all_input_nodes if _is_size_node(n)]
    # The replaced nodes (nothing reads them any more; erased last one first), then the size
    # arithmetic of a fused output shuffle and an input shuffle that nothing else reads.
    erased = _erase_dead(gm, [*size_inputs, conv_node.args[0], *replaced])
    if bn is not None and not any(n.op == "call_module" and n.target == pattern.bn_target for n in graph.nodes):
        # The BN now lives inside the fused module; its old path would be a second name for
        # the same module (duplicate state_dict entries).
        gm.delete_submodule(pattern.bn_target)
    return erased


def _rewrite(gm: fx.GraphModule, prefix: str, report: _Report) -> bool:
    """Fuse every pattern of ``gm`` in place; True if anything changed."""
    graph = gm.graph
    call_counts = collections.Counter(node.target for node in graph.nodes if node.op == "call_module")
    attribute_reads = [node.target for node in graph.nodes if node.op == "get_attr"]
    changed = False
    erased: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node in erased:
            continue
        conv = _pointwise_conv(gm, node)
        if conv is None:
            continue
        pattern = _match_conv(gm, node, conv)
        if pattern is None or (pattern.output_shuffle_groups == 1 and pattern.input_source is None):
            if _next_to_unrecognised_transpose(gm, node, pattern):
                report.add(
                    _qualified(prefix, node.target),
                    "a reshape/transpose next to this 1x1 conv was not recognised as a channel shuffle "
                    "(it must be a pure rearrangement whose sizes come from the tensor, e.g. x.size(), "
                    "not from constants)",
                )
        if pattern is None:
            continue
        owners = [t for t in (node.target, pattern.bn_target) if t is not None]
        shared = [t for t in owners if call_counts[t] > 1]
        read = [t for t in owners for attr in attribute_reads if attr.startswith(t + ".")]
        if shared or read:
            has_shuffle = pattern.output_shuffle_groups > 1 or pattern.input_source is not None
            if has_shuffle:
                reason = "called more than once" if shared else "its parameters are also read directly"
                report.add(
                    _qualified(prefix, node.target),
                    f"1x1 conv next to a channel shuffle not fused: the module is {reason}",
                )
            continue
        erased |= _apply(gm, pattern)
        changed = True
    for node in graph.nodes:
        if _is_explicit_shuffle(gm, node):
            where = _qualified(prefix, node.target if node.op == "call_module" else node.name)
            report.add(
                where,
                "channel shuffle not next to a fusable 1x1 conv (or its output is used elsewhere); "
                "kept as a separate op",
            )
    if changed:
        graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
    return changed


# ------------------------------------------------------------------------------ driver
def _fuse_module(module: nn.Module, path: str, report: _Report) -> nn.Module:
    if isinstance(module, FUSED_MODULE_TYPES):
        return module
    containers = (nn.ModuleList, nn.ModuleDict)
    if not isinstance(module, containers):  # containers have no forward to trace
        try:
            gm = _trace(module)
        except Exception as error:  # noqa: BLE001  (whatever stops tracing: search the children)
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            report.add(
                path or f"the model ({type(module).__name__})",
                f"{type(module).__name__} could not be traced by torch.fx ({type(error).__name__}: {message}); "
                "only its submodules were fused",
            )
        else:
            return gm if _rewrite(gm, path, report) else module
    for name, child in list(module.named_children()):
        if _Tracer().is_leaf_module(child, name) and not isinstance(child, containers):
            continue  # a torch.nn layer: nothing inside to fuse
        fused_child = _fuse_module(child, _qualified(path, name), report)
        if fused_child is not child:
            setattr(module, name, fused_child)
    return module


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A model in which the 1x1 convs next to channel shuffles run as fused ops.

    Works on any ``nn.Module`` (see the module docstring for the patterns). The result is
    a ``torch.fx.GraphModule`` when the top-level module was traced and rewritten, or the
    module itself with rewritten submodules, or, when nothing matched, the model
    unchanged. Each fused pattern is one ``shufflenet_ops.modules`` module placed at the
    conv's path, holding the conv's parameters (``GroupConv1x1Shuffle`` keeps the conv's
    state_dict keys; the conv+BN modules hold the original ``conv`` and ``bn`` as
    children). Eval mode: BN folded, ReLU in the epilogue. Train mode: exactly the
    original computation (batch statistics, running-stat updates, gradients).

    ``inplace=False`` (default) works on a deep copy, leaving ``model`` untouched.
    ``inplace=True`` skips the copy: untraceable modules of ``model`` get their fused
    submodules set in place, and the result shares ``model``'s parameters and buffers.
    What could not be traced or fused is reported in one ``FuseWarning``. As with any
    torch.fx rewrite, a traced module keeps its forward and submodules, not its other
    Python methods or attributes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse expects an nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    report = _Report()
    fused = _fuse_module(model, "", report)
    report.warn()
    return fused
