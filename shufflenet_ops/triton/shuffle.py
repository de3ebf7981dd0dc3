"""Standalone channel shuffle: one read and one write per element.

out[:, c] = x[:, (c % s) * (C/s) + c // s]. A program copies a (channels x pixels) tile;
the tile's long side follows the contiguous axis (pixels for NCHW, channels for
channels_last), so one side of the copy is always fully coalesced and the other reads
whole rows of the source channels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from .launch_cache import Launch, LaunchCache


@triton.jit
def _channel_shuffle_kernel(
    x_ptr,  # (NB, C, P) by strides
    y_ptr,  # (NB, C, P) by strides; channel c of y is channel (c % src_a) * src_b + c // src_a of x
    P, C,
    src_a, src_b,
    stride_xb, stride_xc, stride_xp,
    stride_yb, stride_yc, stride_yp,
    INDEX_64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # axis 0 walks (batch, pixel tile): it has no 65535 limit, unlike axes 1 and 2.
    p_tiles = tl.cdiv(P, BLOCK_P)
    batch = tl.program_id(0) // p_tiles
    pid_p = tl.program_id(0) % p_tiles
    pid_c = tl.program_id(1)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_c < C)[:, None] & (offs_p < P)[None, :]
    src = (offs_c % src_a) * src_b + offs_c // src_a
    if INDEX_64:
        offs_p = offs_p.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
        src = src.to(tl.int64)
        batch = batch.to(tl.int64)
    vals = tl.load(x_ptr + batch * stride_xb + src[:, None] * stride_xc + offs_p[None, :] * stride_xp, mask=mask)
    tl.store(y_ptr + batch * stride_yb + offs_c[:, None] * stride_yc + offs_p[None, :] * stride_yp, vals, mask=mask)


class _ShufflePlan:
    def __init__(self, x, groups) -> None:
        self.fmt = _common.dense_format(x)
        self.groups = groups
        self.launch: Launch | None = None

    def __call__(self, x) -> torch.Tensor:
        x = x.contiguous(memory_format=self.fmt)
        y = torch.empty_like(x)
        if x.numel() == 0:
            return y
        if self.launch is None:
            c = x.shape[1]
            geo = _common.Geometry.of(x, y)
            if x.stride(1) == 1 and c > 1:  # channels_last: channels are the contiguous axis
                block_c, block_p = min(128, _common.next_power_of_2(c)), 32
            else:
                block_c, block_p = min(8, _common.next_power_of_2(c)), min(256, _common.next_power_of_2(geo.p))
            self.launch = Launch(
                _channel_shuffle_kernel, (geo.nb * _common.cdiv(geo.p, block_p), _common.cdiv(c, block_c)),
                (geo.p, c, *_common.shuffled_source(self.groups, c), *_common.strides(x), *_common.strides(y)),
                dict(INDEX_64=_common.needs_int64(x), BLOCK_C=block_c, BLOCK_P=block_p),
            )
        self.launch(x, y)
        return y


_SHUFFLE = LaunchCache("channel shuffle")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``torch.channel_shuffle(x, groups)``, output in x's memory format."""
    return _SHUFFLE.plan((x,), (groups,), _ShufflePlan)(x)
