"""Tile configurations of the Triton kernels, and the rule that fits them to a layer shape.

Pure Python (no triton import), so the rule is testable anywhere.

Why a fitting rule: ShuffleNet V1's grouped 1x1 convs have narrow groups (g=8 has 12 to 48
channels per group; the smallest per-group GEMM is 12 x 12). A tensor-core tile is at least
16 wide, and a 64- or 128-wide tile over a 12-channel group would be mostly padding. So:
- a config is kept only if every tiled channel dimension is at least half used
  (``dim / (ceil(dim / block) * block) >= 0.5``);
- the tensor-core (``tl.dot``) path needs blocks >= 16, so it serves groups of 9 channels or
  more; narrower groups (and float64, which has no tensor-core path we rely on) take the
  non-dot path, an outer-product FMA loop whose blocks can be as small as 2;
- the pixel dimension is fitted the same way, relaxed only when no block fits (1x1 maps).
The survivors are what the autotuner times (key: shape, dtype, layout); without autotuning
(interpreter, ``SHUFFLENET_OPS_TRITON_AUTOTUNE=0``, deterministic grad weight) ``pick`` takes
one of them by a fixed rule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

MIN_DOT = 16  # tl.dot's smallest block in every dimension
MIN_USE = 0.5  # a tile may not be mostly padding


@dataclass(frozen=True)
class Tile:
    block_m: int  # output rows (channels of one group) per program
    block_k: int  # reduction channels per step (dot path only)
    block_p: int  # pixels per program
    use_dot: bool
    num_warps: int = 4
    num_stages: int = 3

    def meta(self) -> dict:
        return {"BLOCK_M": self.block_m, "BLOCK_K": self.block_k, "BLOCK_P": self.block_p, "USE_DOT": self.use_dot}


def use_fraction(dim: int, block: int) -> float:
    """Fraction of a tiling of ``dim`` by ``block`` that holds real data."""
    if dim <= 0:
        return 1.0
    return dim / (math.ceil(dim / block) * block)


def dot_allowed(rows: int, red: int, is_fp64: bool) -> bool:
    """Whether the tensor-core path can tile a (rows x red) per-group GEMM without mostly padding."""
    # Strictly more than half used: 8 channels in a 16-wide tile is half padding, and the
    # FMA path does those with no padding at all.
    return not is_fp64 and use_fraction(rows, MIN_DOT) > MIN_USE and use_fraction(red, MIN_DOT) > MIN_USE


# Forward / grad-input GEMM: (block_m, block_k, block_p, warps, stages). A curated set: the
# autotuner times the ones that fit, so it stays small enough to tune in seconds per shape.
CONV_TILES: tuple[Tile, ...] = (
    Tile(16, 16, 64, True, 2, 3),
    Tile(16, 16, 128, True, 4, 3),
    Tile(16, 32, 128, True, 4, 3),
    Tile(32, 16, 128, True, 4, 3),
    Tile(32, 32, 64, True, 4, 3),
    Tile(32, 32, 128, True, 4, 3),
    Tile(64, 32, 64, True, 4, 3),
    Tile(64, 32, 128, True, 8, 3),
    Tile(64, 64, 64, True, 4, 3),
    Tile(128, 32, 64, True, 8, 3),
    Tile(128, 32, 128, True, 8, 3),
    Tile(16, 16, 256, True, 8, 3),
    # non-dot path: block_k unused
    Tile(2, 1, 128, False, 4, 1),
    Tile(4, 1, 128, False, 4, 1),
    Tile(8, 1, 128, False, 4, 1),
    Tile(8, 1, 64, False, 2, 1),
    Tile(16, 1, 64, False, 4, 1),
    Tile(32, 1, 64, False, 4, 1),
    Tile(64, 1, 32, False, 4, 1),
    Tile(2, 1, 32, False, 1, 1),
    Tile(8, 1, 32, False, 2, 1),
)

# Grad weight: (block_m, block_k) tile of one group's (rows x red) gradient; the pixel block is
# fixed separately (it sets the reduction order, see conv_backward).
GRAD_WEIGHT_TILES: tuple[Tile, ...] = (
    Tile(16, 16, 0, True, 4, 3),
    Tile(32, 32, 0, True, 4, 3),
    Tile(64, 32, 0, True, 4, 3),
    Tile(32, 64, 0, True, 4, 3),
    Tile(64, 64, 0, True, 8, 3),
    Tile(128, 32, 0, True, 8, 3),
    Tile(32, 128, 0, True, 8, 3),
    Tile(2, 2, 0, False, 1, 1),
    Tile(4, 4, 0, False, 2, 1),
    Tile(8, 8, 0, False, 4, 1),
    Tile(8, 16, 0, False, 4, 1),
    Tile(16, 8, 0, False, 4, 1),
    Tile(16, 16, 0, False, 4, 1),
)


def fit_conv(rows: int, red: int, pixels: int, is_fp64: bool) -> list[Tile]:
    """The forward/grad-input tiles that fit a per-group (rows x red) GEMM over ``pixels``."""
    dot = dot_allowed(rows, red, is_fp64)
    chans = [
        t
        for t in CONV_TILES
        if t.use_dot == dot
        and use_fraction(rows, t.block_m) >= MIN_USE
        and (not t.use_dot or use_fraction(red, t.block_k) >= MIN_USE)
    ]
    if not chans:  # cannot happen with the table above (blocks 2..128 cover every size); be safe
        chans = [t for t in CONV_TILES if t.use_dot == dot]
    fitted = [t for t in chans if use_fraction(pixels, t.block_p) >= MIN_USE]
    if not fitted:  # tiny pixel counts (1x1 maps): keep the smallest pixel block
        smallest = min(t.block_p for t in chans)
        fitted = [t for t in chans if t.block_p == smallest]
    return fitted


def fit_grad_weight(rows: int, red: int, is_fp64: bool) -> list[Tile]:
    dot = dot_allowed(rows, red, is_fp64)
    fitted = [
        t
        for t in GRAD_WEIGHT_TILES
        if t.use_dot == dot and use_fraction(rows, t.block_m) >= MIN_USE and use_fraction(red, t.block_k) >= MIN_USE
    ]
    return fitted or [t for t in GRAD_WEIGHT_TILES if t.use_dot == dot][:1]


def pick(tiles: list[Tile]) -> Tile:
    """The fixed choice among fitted tiles: the most work per program up to 64x128 outputs,
    then the widest reduction step. Deterministic in the shape."""
    def score(t: Tile) -> tuple:
        work = t.block_m * max(t.block_p, t.block_k)
        return (min(work, 64 * 128), -abs(work - 64 * 128), t.block_k, t.block_m)

    return max(tiles, key=score)


@functools.lru_cache(maxsize=1024)
def conv_tile(rows: int, red: int, pixels: int, is_fp64: bool) -> Tile:
    """``pick(fit_conv(...))``, memoised: launches repeat a few shapes, and the fit costs
    microseconds of host time per launch."""
    return pick(fit_conv(rows, red, pixels, is_fp64))


@functools.lru_cache(maxsize=1024)
def grad_weight_tile(rows: int, red: int, is_fp64: bool) -> Tile:
    """``pick(fit_grad_weight(...))``, memoised like ``conv_tile``."""
    return pick(fit_grad_weight(rows, red, is_fp64))


def grad_weight_block_p(is_fp64: bool, use_dot: bool) -> int:
    """Pixels per reduction step of grad weight. Fixed per path (never tuned) so the order
    of the reduction, hence the result bit for bit, does not depend on timing."""
    return 64 if use_dot else 32


def num_splits(num_tiles: int, programs_per_split: int, sm_count: int) -> int:
    """How many slices the grad-weight/bias reduction over (batch, pixel tiles) is cut into:
    enough programs to fill the GPU about four times, never more slices than tiles. A
    function of the shape and the device only, so the reduction order is fixed."""
    want = max(1, (4 * sm_count + programs_per_split - 1) // programs_per_split)
    return max(1, min(num_tiles, want))
