"""Backward kernels of the fused conv: grad input, grad weight, grad bias, ReLU mask.

With y = Pout(conv(Pin(x), W)) and go = dL/dy, gz = Pout^-1(go) is never materialised: the
kernels read go at channel Pout(r) for conv-output row r.
- grad input = Pin^-1(conv_transpose(gz, W)): the forward GEMM kernel with W transposed by
  strides, reading go through Pout and writing through Pin's source map.
- grad weight[g] = sum over batch and pixels of gz_g @ Pin(x)_g^T. Deterministic: the
  (batch, pixel-tile) sequence is cut into a number of slices fixed by the shape and the GPU;
  each program sums its slice in order into its own partial (no atomics), and the partials
  are summed in slice order. The pixel block (the inner reduction step) is fixed per path,
  never autotuned, so the result is reproducible bit for bit.
- grad bias = channel sums of gz, the same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common, _configs
from .conv_forward import permuted_group_conv1x1


@triton.jit
def _grad_weight_partial_kernel(
    go_ptr,  # (NB, GROUPS*ROWS, P) by strides; conv output row r is go channel (r % go_a) * go_b + r // go_a
    x_ptr,  # (NB, GROUPS*RED, P) by strides; conv input channel c is x channel (c % x_a) * x_b + c // x_a
    ws_ptr,  # (SPLITS, GROUPS*ROWS, RED) contiguous, accumulator dtype: one partial per slice
    P, ROWS, RED, GROUPS,
    P_TILES,  # pixel tiles per batch item
    NUM_TILES,  # NB * P_TILES: the reduction's work items, in order
    TILES_PER_SPLIT,
    go_a, go_b, x_a, x_b,
    stride_gb, stride_gc, stride_gp,
    stride_xb, stride_xc, stride_xp,
    INDEX_64: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    USE_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    k_tiles = tl.cdiv(RED, BLOCK_K)
    m_tiles = tl.cdiv(ROWS, BLOCK_M)
    pid_k = pid % k_tiles
    pid_m = (pid // k_tiles) % m_tiles
    g = pid // (k_tiles * m_tiles)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = offs_m < ROWS
    mask_k = offs_k < RED
    rows = g * ROWS + offs_m
    cin = g * RED + offs_k
    gc = (rows % go_a) * go_b + rows // go_a  # Pout: where gz's row lives in go
    xc = (cin % x_a) * x_b + cin // x_a  # Pin: where Pin(x)'s channel lives in x
    if INDEX_64:
        gc = gc.to(tl.int64)
        xc = xc.to(tl.int64)

    if ACC_FP64:
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for i in range(0, TILES_PER_SPLIT):
        t = split * TILES_PER_SPLIT + i
        b = t // P_TILES
        offs_p = (t % P_TILES) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_end = tl.where(t < NUM_TILES, P, 0)  # the last slice may be short: no pixels past it
        mask_p = offs_p < p_end
        if INDEX_64:
            b = b.to(tl.int64)
            offs_p = offs_p.to(tl.int64)
        gt = tl.load(
            go_ptr + b * stride_gb + gc[:, None] * stride_gc + offs_p[None, :] * stride_gp,
            mask=mask_m[:, None] & mask_p[None, :],
            other=0.0,
        )
        xt = tl.load(
            x_ptr + b * stride_xb + xc[:, None] * stride_xc + offs_p[None, :] * stride_xp,
            mask=mask_k[:, None] & mask_p[None, :],
            other=0.0,
        )
        if USE_DOT:
            if UPCAST_DOT:
                gt = gt.to(tl.float32)
                xt = xt.to(tl.float32)
            acc = tl.dot(gt, tl.trans(xt), acc, input_precision=DOT_PRECISION)
        else:
            # Narrow groups: the whole (rows x red x pixels) product of a small tile in FMAs.
            acc += tl.sum(gt.to(acc.dtype)[:, None, :] * xt.to(acc.dtype)[None, :, :], axis=2)

    ws_offs = (split * (GROUPS * ROWS) + rows)[:, None] * RED + offs_k[None, :]
    if INDEX_64:
        ws_offs = ws_offs.to(tl.int64)
    tl.store(ws_ptr + ws_offs, acc, mask=mask_m[:, None] & mask_k[None, :])


@triton.jit
def _grad_bias_partial_kernel(
    go_ptr,  # (NB, C, P) by strides; conv output row r is go channel (r % go_a) * go_b + r // go_a
    ws_ptr,  # (SPLITS, C) contiguous, accumulator dtype
    P, C, P_TILES, NUM_TILES, TILES_PER_SPLIT,
    go_a, go_b,
    stride_gb, stride_gc, stride_gp,
    INDEX_64: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = rows < C
    gc = (rows % go_a) * go_b + rows // go_a
    if INDEX_64:
        gc = gc.to(tl.int64)
    if ACC_FP64:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for i in range(0, TILES_PER_SPLIT):
        t = split * TILES_PER_SPLIT + i
        b = t // P_TILES
        offs_p = (t % P_TILES) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_end = tl.where(t < NUM_TILES, P, 0)
        mask_p = offs_p < p_end
        if INDEX_64:
            b = b.to(tl.int64)
            offs_p = offs_p.to(tl.int64)
        gt = tl.load(
            go_ptr + b * stride_gb + gc[:, None] * stride_gc + offs_p[None, :] * stride_gp,
            mask=mask_c[:, None] & mask_p[None, :],
            other=0.0,
        )
        acc += gt.to(acc.dtype)
    tl.store(ws_ptr + split * C + rows, tl.sum(acc, axis=1), mask=mask_c)


@triton.jit
def _relu_grad_kernel(
    go_ptr,  # (numel,) grad output, dense
    out_ptr,  # (numel,) the forward's output, dense with go's strides
    gi_ptr,  # (numel,) result, go's strides
    numel,
    INDEX_64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INDEX_64:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    go = tl.load(go_ptr + offs, mask=mask, other=0.0)
    out = tl.load(out_ptr + offs, mask=mask, other=0.0)
    # torch's ReLU backward (threshold_backward): 0 where out <= 0, else go. A NaN output
    # passes its gradient (out <= 0 is false for NaN; out > 0 would be false too, and drop it).
    tl.store(gi_ptr + offs, tl.where(out <= 0, 0.0, go), mask=mask)


def _grad_weight_prune(configs, named_args, **kwargs):
    fitted = set(
        _configs.fit_grad_weight(named_args["ROWS"], named_args["RED"], named_args["go_ptr"].dtype == torch.float64)
    )
    return [c for c in configs if _tile_of(c) in fitted]


def _tile_of(config) -> _configs.Tile:
    kw = config.kwargs
    return _configs.Tile(kw["BLOCK_M"], kw["BLOCK_K"], 0, kw["USE_DOT"], config.num_warps, config.num_stages)


_grad_weight_partial_tuned = triton.autotune(
    configs=[
        triton.Config(
            {"BLOCK_M": t.block_m, "BLOCK_K": t.block_k, "USE_DOT": t.use_dot},
            num_warps=t.num_warps,
            num_stages=t.num_stages,
        )
        for t in _configs.GRAD_WEIGHT_TILES
    ],
    key=["ROWS", "RED", "GROUPS", "P", "NUM_TILES", "stride_gp", "stride_xp", "go_a", "x_a"],
    prune_configs_by={"early_config_prune": _grad_weight_prune},
)(_grad_weight_partial_kernel)


def _slices(num_tiles: int, programs: int, device: torch.device) -> tuple[int, int]:
    """(slices, tiles per slice) of a reduction over ``num_tiles`` ordered work items."""
    forced = _common.splits_override()
    splits = forced if forced is not None else _configs.num_splits(num_tiles, programs, _common.sm_count(device))
    splits = max(1, min(splits, num_tiles))
    per = _common.cdiv(num_tiles, splits)
    return _common.cdiv(num_tiles, per), per


def conv1x1_grad_input(
    grad_output: torch.Tensor, weight: torch.Tensor, groups: int, in_shuffle: int, out_shuffle: int
) -> torch.Tensor:
    """grad x = Pin^-1(conv_transpose1x1(Pout^-1(go), W)), in go's memory format."""
    go, fmt = _common.dense(grad_output)
    n, cout, h, w = go.shape
    red_fwd = weight.shape[1]  # forward's input channels per group
    cin = red_fwd * groups
    gx = torch.empty((n, cin, h, w), dtype=go.dtype, device=go.device, memory_format=fmt)
    rows_fwd = cout // groups
    # The transposed GEMM: output rows = forward input channels, reduction = forward output
    # rows. W^T_g[c, r] = weight[g*rows_fwd + r, c].
    w_strides = (rows_fwd * weight.stride(0), weight.stride(1), weight.stride(0))
    permuted_group_conv1x1(
        go, gx, weight, w_strides, None, groups, red_fwd, rows_fwd,
        _common.shuffled_target(out_shuffle, cout),  # read gz[r] at go channel Pout(r)
        _common.shuffled_source(in_shuffle, cin),  # write grad of Pin(x)[c] to x channel src(c)
        False,
    )
    return gx


def conv1x1_grad_weight(
    grad_output: torch.Tensor, x: torch.Tensor, groups: int, in_shuffle: int, out_shuffle: int
) -> torch.Tensor:
    """grad W = sum over batch and pixels of Pout^-1(go)_g @ Pin(x)_g^T, shape (Cout, Cin/g, 1, 1)."""
    go, _ = _common.dense(grad_output)
    x, _ = _common.dense(x)
    n, cout, h, w = go.shape
    cin = x.shape[1]
    rows, red = cout // groups, cin // groups
    acc = _common.acc_dtype(go.dtype)
    if go.numel() == 0 or x.numel() == 0 or rows == 0 or red == 0:
        return torch.zeros((cout, red, 1, 1), dtype=go.dtype, device=go.device)
    is_fp64 = go.dtype == torch.float64
    geo = _common.Geometry.of(go, x)
    tile = _common.forced("grad_weight")
    tuned = tile is None and not _common.deterministic() and _common.autotune_enabled()
    if tile is None:
        tile = _configs.grad_weight_tile(rows, red, is_fp64)
    block_p = _configs.grad_weight_block_p(is_fp64, tile.use_dot)
    p_tiles = _common.cdiv(geo.p, block_p)
    num_tiles = geo.nb * p_tiles
    # Slices are sized from a nominal tile so they do not change with the tuned tile.
    nominal = _configs.grad_weight_tile(rows, red, is_fp64)
    programs = groups * _common.cdiv(rows, nominal.block_m) * _common.cdiv(red, nominal.block_k)
    splits, per = _slices(num_tiles, programs, go.device)
    ws = torch.empty((splits, cout, red), dtype=acc, device=go.device)
    args = (
        go, x, ws, geo.p, rows, red, groups, p_tiles, num_tiles, per,
        *_common.shuffled_target(out_shuffle, cout), *_common.shuffled_source(in_shuffle, cin),
        *_common.strides(go), *_common.strides(x),
    )
    flags = dict(
        INDEX_64=_common.needs_int64(go, x, ws),
        DOT_PRECISION=_common.dot_precision(go.dtype),
        UPCAST_DOT=_common.upcast_dot(go.dtype),
        ACC_FP64=is_fp64,
        BLOCK_P=block_p,
    )
    if tuned:
        def grid(meta):
            return (groups * _common.cdiv(rows, meta["BLOCK_M"]) * _common.cdiv(red, meta["BLOCK_K"]), splits)

        _grad_weight_partial_tuned[grid](*args, **flags)
    else:
        grid = (groups * _common.cdiv(rows, tile.block_m) * _common.cdiv(red, tile.block_k), splits)
        _grad_weight_partial_kernel[grid](
            *args, **flags, BLOCK_M=tile.block_m, BLOCK_K=tile.block_k, USE_DOT=tile.use_dot,
            num_warps=tile.num_warps, num_stages=tile.num_stages,
        )
    grad = ws[0] if splits == 1 else ws.sum(dim=0)  # slice order: fixed
    return grad.to(go.dtype).reshape(cout, red, 1, 1)


def conv1x1_grad_bias(grad_output: torch.Tensor, out_shuffle: int) -> torch.Tensor:
    """grad b[r] = sum over batch and pixels of go at channel Pout(r), shape (Cout,)."""
    go, _ = _common.dense(grad_output)
    n, c, h, w = go.shape
    if go.numel() == 0:
        return torch.zeros((c,), dtype=go.dtype, device=go.device)
    geo = _common.Geometry.of(go)
    block_c = min(32, _common.next_power_of_2(c))
    block_p = 128 if go.stride(3) == 1 else 32  # NCHW: long pixel rows; channels_last: short
    p_tiles = _common.cdiv(geo.p, block_p)
    num_tiles = geo.nb * p_tiles
    splits, per = _slices(num_tiles, _common.cdiv(c, block_c), go.device)
    ws = torch.empty((splits, c), dtype=_common.acc_dtype(go.dtype), device=go.device)
    _grad_bias_partial_kernel[(_common.cdiv(c, block_c), splits)](
        go, ws, geo.p, c, p_tiles, num_tiles, per,
        *_common.shuffled_target(out_shuffle, c), *_common.strides(go),
        INDEX_64=_common.needs_int64(go), ACC_FP64=go.dtype == torch.float64,
        BLOCK_C=block_c, BLOCK_P=block_p,
    )
    grad = ws[0] if splits == 1 else ws.sum(dim=0)
    return grad.to(go.dtype)


def relu_grad(grad_output: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """torch's ReLU backward: 0 where output <= 0, else grad_output (also where output is
    NaN; an inf or NaN grad_output where output <= 0 gives 0, not inf * 0), in grad_output's
    memory format."""
    go, fmt = _common.dense(grad_output)
    out = output.contiguous(memory_format=fmt)
    if out.stride() != go.stride():  # ambiguous formats (size-1 dims): fall back to go's exact layout
        out = torch.empty_like(go).copy_(output)
    gi = torch.empty_like(go)
    numel = go.numel()
    if numel == 0:
        return gi
    block = 1024
    _relu_grad_kernel[(_common.cdiv(numel, block),)](
        go, out, gi, numel, INDEX_64=numel + block >= _common.INT32_LIMIT, BLOCK=block
    )
    return gi
