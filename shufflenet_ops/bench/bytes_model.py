"""Analytic memory traffic of each provider: the passes it makes over memory.

Each pass (one kernel, or one ATen call) is assumed to read each operand once and write
each result once; caches are ignored (at batch 16 the activations do not fit in them).
Counts are in elements; ``bytes_moved`` multiplies by the element size. X, Y, W, B are
the sizes of the input, the output, the grouped weight and the bias; G (the output
gradient) is Y-sized.

Forward (the real layer: conv + bias, then the shuffle and ReLU where it has them):
- fused: one pass, read X W B, write Y.
- eager (NCHW or channels_last): conv (X W B -> Y), shuffle copy (Y -> Y), ReLU (Y -> Y):
  the unfused cost is the conv output's write and read and the shuffled copy's write,
  plus ReLU's read and write.
- compile: the conv is an external kernel (X W B -> Y); Inductor fuses the shuffle and the
  ReLU into one pointwise pass (Y -> Y).
- dense: one dense conv whose block-diagonal weight has its rows permuted, so it writes
  the shuffled output directly (X, g*W, B -> Y); eager ReLU (Y -> Y).

Backward (given the output gradient G; each provider's autograd as implemented):
- fused: ReLU mask (G, Y -> G'), grad input (G', W -> X), grad weight (G', X -> W),
  grad bias (G' -> B); the shuffle is read through permuted indices, no pass of its own.
- eager: ReLU backward (G, Y -> G'), unshuffle copy (G' -> G''), conv backward as fused.
- compile: ReLU backward and unshuffle fused (G, Y -> G''), conv backward.
- dense: ReLU backward, conv backward with the dense weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from .problem import LayerProblem

TRAFFIC_KINDS = ("fused", "eager", "compile", "dense")


@dataclass(frozen=True)
class Pass:
    name: str
    read: int  # elements
    written: int


def forward_passes(kind: str, p: LayerProblem) -> list[Pass]:
    X, Y, W, B = p.x_numel, p.y_numel, p.weight_numel, p.bias_numel
    shuffled, relu = p.shuffle_groups > 1, p.relu
    if kind == "fused":
        return [Pass("conv+bias+shuffle+relu", X + W + B, Y)]
    if kind == "eager":
        passes = [Pass("conv+bias", X + W + B, Y)]
        if shuffled:
            passes.append(Pass("shuffle", Y, Y))
        if relu:
            passes.append(Pass("relu", Y, Y))
        return passes
    if kind == "compile":
        passes = [Pass("conv+bias", X + W + B, Y)]
        if shuffled or relu:
            passes.append(Pass("shuffle+relu", Y, Y))
        return passes
    if kind == "dense":
        passes = [Pass("dense conv+bias (permuted rows)", X + p.groups * W + B, Y)]
        if relu:
            passes.append(Pass("relu", Y, Y))
        return passes
    raise ValueError(f"unknown traffic kind {kind!r}; choose one of {TRAFFIC_KINDS}")


def backward_passes(kind: str, p: LayerProblem) -> list[Pass]:
    X, Y, W, B = p.x_numel, p.y_numel, p.weight_numel, p.bias_numel
    shuffled, relu = p.shuffle_groups > 1, p.relu
    weight = p.groups * W if kind == "dense" else W
    conv = [Pass("grad input", Y + weight, X), Pass("grad weight", Y + X, weight)]
    if B:
        conv.append(Pass("grad bias", Y, B))
    if kind not in TRAFFIC_KINDS:
        raise ValueError(f"unknown traffic kind {kind!r}; choose one of {TRAFFIC_KINDS}")
    front: list[Pass] = []
    if kind == "compile":
        if shuffled or relu:
            front.append(Pass("relu grad+unshuffle", Y * (2 if relu else 1), Y))
    else:
        if relu:
            front.append(Pass("relu grad", 2 * Y, Y))
        if shuffled and kind == "eager":
            front.append(Pass("unshuffle", Y, Y))
    return front + conv


def passes(kind: str, p: LayerProblem, mode: str) -> list[Pass]:
    if mode == "forward":
        return forward_passes(kind, p)
    if mode == "backward":
        return backward_passes(kind, p)
    if mode == "forward_backward":
        return forward_passes(kind, p) + backward_passes(kind, p)
    raise ValueError(f"unknown mode {mode!r}")


def bytes_moved(kind: str, p: LayerProblem, mode: str, element_size: int) -> int:
    return element_size * sum(q.read + q.written for q in passes(kind, p, mode))
