"""The 1x1 (pointwise) conv layers of ShuffleNet V1, for tests and benchmarks.

Derived from the model's own stage widths (``models.shufflenet_v1.stage_channels``) so the
shapes always match the network the package builds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models.shufflenet_v1 import STAGE_REPEATS, stage_channels


@dataclass(frozen=True)
class PointwiseLayer:
    cin: int
    cout: int
    groups: int
    size: int  # square spatial size H = W at the conv
    count: int  # how many layers of the network have this shape
    shuffled: bool  # the first GConv of a unit, followed by the channel shuffle

    @property
    def name(self) -> str:
        return f"{self.cin}->{self.cout} g{self.groups} {self.size}x{self.size}"

    def macs(self, batch: int) -> int:
        """Multiply-adds of one call at ``batch``."""
        return batch * self.cout * (self.cin // self.groups) * self.size * self.size


def shufflenet_v1_pointwise_layers(
    groups: int = 3, width_mult: float = 1.0, input_size: int = 224
) -> list[PointwiseLayer]:
    """Distinct pointwise conv shapes of ShuffleNet V1, in network order, with counts.

    Each unit has a first GConv (in -> bottleneck, followed by the shuffle; not grouped in
    the very first unit, whose input has only the stem's channels) and a second GConv
    (bottleneck -> out, or out - in for the concatenating stride-2 unit).
    """
    stem, *widths = stage_channels(groups, width_mult)
    size = input_size // 4  # after the stride-2 stem conv and the stride-2 max pool
    found: dict[tuple, int] = {}
    in_channels = stem
    for stage, (out_channels, repeats) in enumerate(zip(widths, STAGE_REPEATS)):
        bottleneck = out_channels // 4
        for unit in range(repeats):
            stride = 2 if unit == 0 else 1
            first_groups = 1 if (stage == 0 and unit == 0) else groups
            out_size = (size + 1) // 2 if stride == 2 else size
            branch_out = out_channels - in_channels if stride == 2 else out_channels
            for key in (
                (in_channels, bottleneck, first_groups, size, True),
                (bottleneck, branch_out, groups, out_size, False),
            ):
                found[key] = found.get(key, 0) + 1
            in_channels, size = out_channels, out_size
    return [PointwiseLayer(ci, co, g, s, n, sh) for (ci, co, g, s, sh), n in found.items()]
