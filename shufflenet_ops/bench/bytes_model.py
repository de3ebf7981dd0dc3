"""Analytic memory traffic of each provider: the passes it makes over memory.

The one bytes model of the project: the layer tables' GB/s and roof shares, and the ncu
comparison (``shufflenet-bench ncu``) both read it.

Each pass (one kernel, or one ATen call) is assumed to read each operand once and write
each result once; caches are ignored (at batch 16 the activations do not fit in them).
Counts are in elements; ``bytes_moved`` multiplies by the element size. X, Y, W, B are
the sizes of the input, the output, the grouped weight and the bias; G (the output
gradient) is Y-sized.

Where the shuffle is (``LayerProblem.placement``) decides what an unfused shuffle costs: a
channel shuffle is a copy of the tensor it permutes, so an output shuffle (``"out"``, after
the conv) is a Y-sized pass and an input shuffle (``"in"``, before the conv, the official
code's placement) an X-sized one: read X, write the shuffled copy, which the conv then reads
in place of X. Charging an input shuffle a Y-sized pass, as if every shuffle sat on the
output, overstates the unfused cost of an expanding second GConv (Cout = 4 Cin: Y = 4 X)
fourfold; ncu's DRAM counts of eager PyTorch on those layers sit near the X-sized model
(benchmarks/README.md).

Forward (the real layer: conv + bias, the shuffle where it has one, ReLU where it has it):
- fused: one pass, read X W B, write Y; the shuffle is an index, not a pass.
- eager (NCHW or channels_last): output placement: conv (X W B -> Y), shuffle copy (Y -> Y),
  ReLU (Y -> Y); input placement: shuffle copy (X -> X), conv, ReLU.
- compile: the conv is an external kernel (X W B -> Y); Inductor fuses an output shuffle and
  the ReLU into one pointwise pass (Y -> Y); an input shuffle is a pointwise pass of its own
  (X -> X) before the conv, the ReLU another after it.
- dense: one dense conv whose block-diagonal weight has its rows (output placement) or
  columns (input placement) permuted, so no shuffle pass (X, g*W, B -> Y); eager ReLU (Y -> Y).

Backward (given the output gradient G; each provider's autograd as implemented):
- fused: ReLU mask (G, Y -> G'), grad input (G', W -> X), grad weight (G', X -> W),
  grad bias (G' -> B); the shuffle is read or written through permuted indices, no pass of
  its own.
- eager: ReLU backward (G, Y -> G'), an output shuffle's unshuffle copy (G' -> G''), conv
  backward as fused, an input shuffle's unshuffle of grad input (X -> X).
- compile: ReLU backward and an output shuffle's unshuffle fused (G, Y -> G''), conv
  backward, an input shuffle's unshuffle of grad input (X -> X).
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


def _check_kind(kind: str) -> None:
    if kind not in TRAFFIC_KINDS:
        raise ValueError(f"unknown traffic kind {kind!r}; choose one of {TRAFFIC_KINDS}")


def forward_passes(kind: str, p: LayerProblem) -> list[Pass]:
    _check_kind(kind)
    X, Y, W, B = p.x_numel, p.y_numel, p.weight_numel, p.bias_numel
    if kind == "fused":
        return [Pass("conv+bias+shuffle+relu", X + W + B, Y)]
    if kind == "dense":
        passes = [Pass("dense conv+bias (permuted weight)", X + p.groups * W + B, Y)]
        return passes + ([Pass("relu", Y, Y)] if p.relu else [])
    passes = [Pass("input shuffle", X, X)] if p.input_shuffled else []
    passes.append(Pass("conv+bias", X + W + B, Y))
    if kind == "compile" and p.output_shuffled:
        passes.append(Pass("shuffle+relu" if p.relu else "shuffle", Y, Y))
        return passes
    if p.output_shuffled:
        passes.append(Pass("shuffle", Y, Y))
    if p.relu:
        passes.append(Pass("relu", Y, Y))
    return passes


def backward_passes(kind: str, p: LayerProblem) -> list[Pass]:
    _check_kind(kind)
    X, Y, W, B = p.x_numel, p.y_numel, p.weight_numel, p.bias_numel
    weight = p.groups * W if kind == "dense" else W
    conv = [Pass("grad input", Y + weight, X), Pass("grad weight", Y + X, weight)]
    if B:
        conv.append(Pass("grad bias", Y, B))
    front: list[Pass] = []
    if kind == "compile" and p.output_shuffled:
        front.append(Pass("relu grad+unshuffle", Y * (2 if p.relu else 1), Y))
    else:
        if p.relu:
            front.append(Pass("relu grad", 2 * Y, Y))
        if kind == "eager" and p.output_shuffled:
            front.append(Pass("unshuffle", Y, Y))
    back = [Pass("unshuffle grad input", X, X)] if kind in ("eager", "compile") and p.input_shuffled else []
    return front + conv + back


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
