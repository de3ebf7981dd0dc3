"""One benchmarked 1x1 layer: its geometry and what its real layer computes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..layer_shapes import PointwiseLayer, shufflenet_v1_pointwise_layers

MODES = ("forward", "backward", "forward_backward")
PLACEMENTS = ("out", "in")
LAYER_NAME_LEGEND = (
    "Layers: g, input -> output channels, feature map, place in the unit. 1st: a unit's first 1x1 conv as "
    "the network runs it (grouped conv, BN folded into a bias, ReLU, channel shuffle); 2nd: its second "
    "(grouped conv, BN folded); ungrouped: Stage 2's first conv (too few input channels to group), still "
    "followed by the shuffle; in-shuffle: the unit's shuffle moved to the second conv's input (the official "
    "code's placement and convention, shuffle groups = input channels / g)"
)


@dataclass(frozen=True)
class LayerProblem:
    """A grouped 1x1 conv of ShuffleNet V1 as it runs in the network.

    The first GConv of a unit is conv -> BN -> ReLU -> shuffle: with BN folded that is
    bias + ReLU + output shuffle (``shuffle_groups`` = the model's g, even where the conv
    itself is ungrouped). The second GConv is conv -> BN: bias, no shuffle, no ReLU (the
    naive unit applies its ReLU after the residual add or the concat).
    """

    cin: int
    cout: int
    groups: int
    size: int  # H = W
    batch: int
    shuffle_groups: int  # 1: no shuffle
    relu: bool
    bias: bool
    count: int = 1  # layers of this shape in the network
    model_groups: int = 0  # the g of the ShuffleNet it comes from
    placement: str = "out"  # "out": shuffle after the conv; "in": before it

    @classmethod
    def from_layer(cls, layer: PointwiseLayer, model_groups: int, batch: int) -> "LayerProblem":
        return cls(
            cin=layer.cin, cout=layer.cout, groups=layer.groups, size=layer.size, batch=batch,
            shuffle_groups=model_groups if layer.shuffled else 1, relu=layer.shuffled, bias=True,
            count=layer.count, model_groups=model_groups,
        )

    @property
    def name(self) -> str:
        """``g3 480->120 14x14 1st``: the network's g, channels in -> out, the feature map,
        and the conv's place in its unit (see ``LAYER_NAME_LEGEND``)."""
        role = "1st" if self.shuffle_groups > 1 and self.placement == "out" else "2nd"
        if self.groups == 1:
            role += " ungrouped"
        if self.placement == "in" and self.shuffle_groups > 1:
            role += " in-shuffle"
        return f"g{self.model_groups} {self.cin}->{self.cout} {self.size}x{self.size} {role}"

    @property
    def slug(self) -> str:
        """``name`` without spaces or ``>``, for command lines and file names:
        ``g3_480to120_14x14_1st``."""
        return self.name.replace("->", "to").replace(" ", "_")

    @property
    def input_shuffled(self) -> bool:
        return self.placement == "in" and self.shuffle_groups > 1

    @property
    def output_shuffled(self) -> bool:
        return self.placement == "out" and self.shuffle_groups > 1

    @property
    def pixels(self) -> int:
        return self.batch * self.size * self.size

    @property
    def x_numel(self) -> int:
        return self.pixels * self.cin

    @property
    def y_numel(self) -> int:
        return self.pixels * self.cout

    @property
    def weight_numel(self) -> int:
        return self.cout * (self.cin // self.groups)

    @property
    def bias_numel(self) -> int:
        return self.cout if self.bias else 0

    def macs(self) -> int:
        """Multiply-adds of one forward call (the grouped conv's, not a dense one's)."""
        return self.pixels * self.weight_numel

    def flops(self, mode: str) -> int:
        """Useful FLOPs (2 per multiply-add): forward 1x, backward 2x (grad input + grad
        weight), forward+backward 3x the forward's."""
        factor = {"forward": 1, "backward": 2, "forward_backward": 3}[mode]
        return 2 * self.macs() * factor


def shufflenet_problems(
    groups: tuple[int, ...], width_mult: float, batch: int, input_size: int = 224
) -> list[LayerProblem]:
    """Every distinct 1x1 conv shape of ShuffleNet V1 for each g, in network order."""
    return [
        LayerProblem.from_layer(layer, g, batch)
        for g in groups
        for layer in shufflenet_v1_pointwise_layers(g, width_mult, input_size)
    ]


def placement_problems(
    groups: tuple[int, ...], width_mult: float, batch: int, input_size: int = 224
) -> list[LayerProblem]:
    """Both placements of the shuffle on Stage 2's stride-1 unit (the 28x28 layers at 224):
    per g its first GConv as the network runs it (output shuffle, bias, ReLU), then per g its
    second GConv with the unit's shuffle moved to its input in the official code's
    convention (shuffle groups = Cin / g, bias, no ReLU). The kernel-level set of
    ``shufflenet-bench kernels``, ``ncu`` and ``profile-step``: the two ops the package
    offers, on the shapes the network runs most at that size."""
    firsts, seconds = [], []
    for g in groups:
        stage2 = [p for p in shufflenet_problems((g,), width_mult, batch, input_size)
                  if p.size == input_size // 8 and p.groups == g]
        first = max((p for p in stage2 if p.output_shuffled), key=lambda p: p.count)
        second = next(p for p in stage2 if not p.output_shuffled and p.cin == first.cout and p.cout == first.cin)
        firsts.append(first)
        seconds.append(dataclasses.replace(second, placement="in", shuffle_groups=second.cin // second.groups))
    return firsts + seconds


def find_problems(problems: list[LayerProblem], keys: list[str]) -> list[LayerProblem]:
    """The problems named by ``keys`` (each a ``slug`` or a ``name``), in the keys' order."""
    by_key = {p.slug: p for p in problems} | {p.name: p for p in problems}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise ValueError(f"unknown layer {', '.join(map(repr, missing))}; choose from "
                         + ", ".join(p.slug for p in problems))
    return [by_key[k] for k in keys]


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
