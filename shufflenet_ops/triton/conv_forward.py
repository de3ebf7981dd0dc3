"""The permuted grouped 1x1 conv GEMM: the forward of both placements, and grad input.

One kernel serves all three because each is "a grouped 1x1 conv whose input channels are
read through one shuffle and whose output channels are written through another":

  forward       y[Pout(r)] = act(sum_k W_g[r, k] * x[Pin(g*K + k)] + b[r])
  grad input    gx[Pin(c)] = sum_n W_g[n, c]^T * go[Pout(g*N + n)]      (W transposed by strides)

(grad input of a conv with ReLU reads go through the ReLU mask, ``MASK_X``: no masked copy of
go is made.)

Every shuffle (and its inverse, and the identity) has the form
``physical = (c % a) * b + c // a`` with a * b = C, so the kernel takes (a, b) per side and
the permutation costs one mod and one div per loaded/stored row: no shuffled copy exists.
The pixel axis is the GEMM's N dimension; channels_last and NCHW differ only in strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common, _configs
from .launch_cache import Launch, LaunchCache


@triton.jit
def relu_masked(g, out_ptrs, mask):
    """torch's ReLU backward on a loaded gradient tile: 0 where the forward's output <= 0,
    else ``g`` (threshold_backward: a NaN output passes its gradient, since NaN <= 0 is
    false; an inf or NaN ``g`` where out <= 0 gives 0, not inf * 0)."""
    out = tl.load(out_ptrs, mask=mask, other=0.0)
    return tl.where(out <= 0, tl.zeros_like(g), g)


@triton.jit
def _permuted_group_conv1x1_kernel(
    x_ptr,  # (NB, GROUPS*RED, P) by strides; conv input channel c is x channel (c % in_a) * in_b + c // in_a
    w_ptr,  # group g's (ROWS, RED) matrix: w_ptr + g*stride_wg + row*stride_wr + k*stride_wk
    b_ptr,  # (GROUPS*ROWS,) bias in conv-output order; any pointer when HAS_BIAS is False
    r_ptr,  # residual, laid out exactly like y (same strides); any pointer when HAS_RESIDUAL is False
    m_ptr,  # ReLU mask source, laid out exactly like x: x reads as 0 where m <= 0; any pointer unless MASK_X
    y_ptr,  # (NB, GROUPS*ROWS, P) by strides; conv output row r goes to y channel (r % out_a) * out_b + r // out_a
    P,  # pixels per batch item (N*H*W when the batch is folded)
    ROWS,  # output channels per group
    RED,  # input channels per group (the reduction)
    GROUPS,
    in_a, in_b, out_a, out_b,  # the two channel permutations (see module docstring)
    stride_xb, stride_xc, stride_xp,
    stride_yb, stride_yc, stride_yp,
    stride_wg, stride_wr, stride_wk,
    HAS_BIAS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,  # + residual (in output channel order) before the ReLU
    RELU: tl.constexpr,
    MASK_X: tl.constexpr,  # grad input of a conv with ReLU: x = go, m = the forward's output
    ALL_GROUPS: tl.constexpr,  # one program computes every group of its pixel tile (channels_last)
    INDEX_64: tl.constexpr,  # offsets in int64 (a tensor spans >= 2^31 elements)
    DOT_PRECISION: tl.constexpr,  # "ieee" (exact fp32) or "tf32"
    UPCAST_DOT: tl.constexpr,  # interpreter-only bf16 workaround
    ACC_FP64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr,
    USE_DOT: tl.constexpr,  # tensor-core tl.dot path; else the outer-product FMA path for narrow groups
):
    # axis 0 walks (batch, pixel tile): it has no 65535 limit, unlike axis 1.
    p_tiles = tl.cdiv(P, BLOCK_P)
    batch = tl.program_id(0) // p_tiles
    pid_p = tl.program_id(0) % p_tiles
    pid_mg = tl.program_id(1)
    m_tiles = tl.cdiv(ROWS, BLOCK_M)
    pid_m = pid_mg % m_tiles
    if ALL_GROUPS:
        # channels_last with an output shuffle: rows [m0, m0+BLOCK_M) of every group land in one
        # contiguous channel range of each pixel, so this program's stores fill whole rows.
        g_begin = 0
        g_end = GROUPS
    else:
        g_begin = pid_mg // m_tiles
        g_end = g_begin + 1

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_p = offs_p < P
    mask_m = offs_m < ROWS
    if INDEX_64:
        offs_p = offs_p.to(tl.int64)
        batch = batch.to(tl.int64)
    x_pix = batch * stride_xb + offs_p * stride_xp  # [BLOCK_P] offsets of channel 0 in x (and m)
    y_pix = y_ptr + batch * stride_yb + offs_p * stride_yp
    r_pix = r_ptr + batch * stride_yb + offs_p * stride_yp

    for g in range(g_begin, g_end):
        if ACC_FP64:
            acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float64)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_P), dtype=tl.float32)
        w_rows = w_ptr + g * stride_wg + offs_m * stride_wr  # [BLOCK_M] pointers, column 0
        if USE_DOT:
            offs_k = tl.arange(0, BLOCK_K)
            for k0 in range(0, RED, BLOCK_K):
                ks = k0 + offs_k
                mask_k = ks < RED
                cin = g * RED + ks
                xc = (cin % in_a) * in_b + cin // in_a  # the input shuffle, fused into the load
                if INDEX_64:
                    xc = xc.to(tl.int64)
                x_offs = x_pix[None, :] + xc[:, None] * stride_xc
                xt = tl.load(x_ptr + x_offs, mask=mask_k[:, None] & mask_p[None, :], other=0.0)
                if MASK_X:
                    xt = relu_masked(xt, m_ptr + x_offs, mask_k[:, None] & mask_p[None, :])
                wt = tl.load(w_rows[:, None] + ks[None, :] * stride_wk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
                if UPCAST_DOT:
                    xt = xt.to(tl.float32)
                    wt = wt.to(tl.float32)
                acc = tl.dot(wt, xt, acc, input_precision=DOT_PRECISION)
        else:
            # Narrow groups: one input channel per step, a rank-1 update of the whole tile.
            for k in range(0, RED):
                cin = g * RED + k
                xc = (cin % in_a) * in_b + cin // in_a
                if INDEX_64:
                    xc = xc.to(tl.int64)
                xr = tl.load(x_ptr + x_pix + xc * stride_xc, mask=mask_p, other=0.0)
                if MASK_X:
                    xr = relu_masked(xr, m_ptr + x_pix + xc * stride_xc, mask_p)
                wc = tl.load(w_rows + k * stride_wk, mask=mask_m, other=0.0)
                acc += wc.to(acc.dtype)[:, None] * xr.to(acc.dtype)[None, :]

        rows = g * ROWS + offs_m  # conv output rows, in conv order
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=mask_m, other=0.0).to(acc.dtype)[:, None]
        yc = (rows % out_a) * out_b + rows // out_a  # the output shuffle, fused into the store
        if INDEX_64:
            yc = yc.to(tl.int64)
        if HAS_RESIDUAL:
            residual = tl.load(
                r_pix[None, :] + yc[:, None] * stride_yc, mask=mask_m[:, None] & mask_p[None, :], other=0.0
            )
            acc += residual.to(acc.dtype)
        if RELU:
            # acc < 0 is false for NaN, so NaN passes (torch: relu(nan) = nan); where(acc > 0,
            # acc, 0) would turn it into 0.
            acc = tl.where(acc < 0, 0.0, acc)
        tl.store(
            y_pix[None, :] + yc[:, None] * stride_yc,
            acc.to(y_ptr.dtype.element_ty),
            mask=mask_m[:, None] & mask_p[None, :],
        )


def _prune(configs, named_args, **kwargs):
    """Autotuner hook: keep the configs whose tiles fit this shape (see _configs)."""
    fitted = set(
        _configs.fit_conv(
            named_args["ROWS"], named_args["RED"], named_args["P"], named_args["x_ptr"].dtype == torch.float64
        )
    )
    return [c for c in configs if _tile_of(c) in fitted]


def _triton_config(tile: _configs.Tile) -> triton.Config:
    return triton.Config(tile.meta(), num_warps=tile.num_warps, num_stages=tile.num_stages)


def _tile_of(config) -> _configs.Tile:
    kw = config.kwargs
    return _configs.Tile(
        kw["BLOCK_M"], kw["BLOCK_K"], kw["BLOCK_P"], kw["USE_DOT"], config.num_warps, config.num_stages
    )


_permuted_group_conv1x1_tuned = triton.autotune(
    configs=[_triton_config(t) for t in _configs.CONV_TILES],
    key=["ROWS", "RED", "GROUPS", "P", "stride_xp", "stride_yp", "in_a", "out_a", "HAS_BIAS", "HAS_RESIDUAL", "RELU",
         "MASK_X"],
    prune_configs_by={"early_config_prune": _prune},
)(_permuted_group_conv1x1_kernel)


def gemm_launch(
    x: torch.Tensor,
    y: torch.Tensor,
    w_strides: tuple[int, int, int],
    groups: int,
    rows: int,
    red: int,
    in_perm: tuple[int, int],
    out_perm: tuple[int, int],
    relu: bool,
    has_bias: bool,
    has_residual: bool,
    mask_x: bool,
) -> Launch:
    """The kernel's launch writing ``y`` (dense) from ``x`` (dense), called with the tensors
    ``(x, w, bias, residual, mask, y)`` (unused ones: any tensor). The bias is contiguous;
    the residual has exactly ``y``'s strides, the mask exactly ``x``'s.

    ``w_strides`` = (group, row, k) strides of the per-group (rows x red) weight matrix, so a
    transposed weight (grad input) is a matter of strides. ``in_perm``/``out_perm`` are the
    (a, b) pairs of the input gather and output scatter.
    """
    geo = _common.Geometry.of(x, y)
    sxb, sxc, sxp = _common.strides(x)
    syb, syc, syp = _common.strides(y)
    # channels_last output: all groups of a pixel tile in one program (see kernel).
    all_groups = groups > 1 and syc == 1 and syp != 1
    args = (
        geo.p, rows, red, groups,
        in_perm[0], in_perm[1], out_perm[0], out_perm[1],
        sxb, sxc, sxp, syb, syc, syp, *w_strides,
    )
    flags = dict(
        HAS_BIAS=has_bias,
        HAS_RESIDUAL=has_residual,
        RELU=relu,
        MASK_X=mask_x,
        ALL_GROUPS=all_groups,
        INDEX_64=_common.needs_int64(x, y),
        DOT_PRECISION=_common.dot_precision(x.dtype),
        UPCAST_DOT=_common.upcast_dot(x.dtype),
        ACC_FP64=x.dtype == torch.float64,
    )
    group_programs = 1 if all_groups else groups
    tile = _common.forced("conv")
    if tile is None and _common.autotune_enabled():
        def grid(meta):
            return (geo.nb * _common.cdiv(geo.p, meta["BLOCK_P"]), _common.cdiv(rows, meta["BLOCK_M"]) * group_programs)

        return Launch(_permuted_group_conv1x1_tuned, grid, args, flags)
    if tile is None:
        tile = _configs.conv_tile(rows, red, geo.p, x.dtype == torch.float64)
    grid = (geo.nb * _common.cdiv(geo.p, tile.block_p), _common.cdiv(rows, tile.block_m) * group_programs)
    return Launch(
        _permuted_group_conv1x1_kernel, grid, args,
        {**flags, **tile.meta(), "num_warps": tile.num_warps, "num_stages": tile.num_stages},
    )


class GemmPlan:
    """One launcher call of the GEMM kernel for one ``launch_cache`` key: ``x`` made dense,
    ``y`` allocated in its format, the launch derived on the first call (``gemm_launch``).

    ``interleaved``: ``y`` gets twice the channels and the GEMM writes the odd ones, through
    the view ``y[:, 1::2]`` (the kernel addresses ``y`` by strides: the view only doubles the
    channel stride); the caller's passthrough goes to the even ones with one torch copy
    (``copy_`` into ``y[:, 0::2]``, a separate launch: the GEMM's programs own row tiles of
    one group, so no program owns a pixel's whole passthrough)."""

    def __init__(self, x: torch.Tensor, out_channels: int, *launch_params, interleaved: bool = False) -> None:
        self.fmt = _common.dense_format(x)
        n, _, h, w = x.shape
        self.interleaved = interleaved
        self.shape = (n, out_channels * (2 if interleaved else 1), h, w)
        self.empty = n * out_channels * h * w == 0
        self.launch_params = launch_params  # gemm_launch's after (x, y)
        self.launch: Launch | None = None

    def __call__(self, x, weight, bias, residual, mask, passthrough=None) -> torch.Tensor:
        x = x.contiguous(memory_format=self.fmt)
        out = torch.empty(self.shape, dtype=x.dtype, device=x.device, memory_format=self.fmt)
        if self.empty:
            return out
        y = out
        if self.interleaved:
            y = out[:, 1::2]
            out[:, 0::2].copy_(passthrough)
        if bias is not None:
            bias = bias.contiguous()
        if residual is not None and self.interleaved:
            # The kernel reads the residual with y's strides: the odd channels of a buffer
            # like out (a residual with an interleaved output is rare: V2 units have none).
            residual = torch.empty_like(out)[:, 1::2].copy_(residual)
        elif residual is not None:
            residual = _common.like(residual, y, self.fmt)
        if mask is not None:
            mask = _common.like(mask, x, self.fmt)
        if self.launch is None:
            self.launch = gemm_launch(x, y, *self.launch_params)
        self.launch(x, weight, x if bias is None else bias, y if residual is None else residual,
                    x if mask is None else mask, y)
        return out


def _forward_plan(x, weight, bias, residual, passthrough, groups, in_shuffle, out_shuffle, relu) -> GemmPlan:
    cin, cout = x.shape[1], weight.shape[0]
    rows, red = cout // groups, cin // groups
    # W_g[r, k] = weight[g*rows + r, k]
    w_strides = (rows * weight.stride(0), weight.stride(0), weight.stride(1))
    return GemmPlan(
        x, cout, w_strides, groups, rows, red,
        _common.shuffled_source(in_shuffle, cin), _common.shuffled_target(out_shuffle, cout),
        relu, bias is not None, residual is not None, False, interleaved=passthrough is not None,
    )


_FORWARD = LaunchCache("conv forward")


def conv1x1_shuffle_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    relu: bool,
    residual: torch.Tensor | None = None,
    interleave_with: torch.Tensor | None = None,
) -> torch.Tensor:
    """``f = act(Pout(conv1x1(Pin(x), weight, groups) + bias) + residual)``, output in x's
    memory format; with ``interleave_with``, ``interleave(interleave_with, f)`` (see
    ``GemmPlan``)."""
    plan = _FORWARD.plan(
        (x, weight, bias, residual, interleave_with), (groups, in_shuffle, out_shuffle, relu), _forward_plan
    )
    return plan(x, weight, bias, residual, None, interleave_with)


# The schema's two placements (csrc/ops.cpp): entries of the Triton kernel table.
def group_conv1x1_shuffle(
    x, weight, bias, groups: int, shuffle_groups: int, relu: bool, residual=None, interleave_with=None
):
    return conv1x1_shuffle_forward(x, weight, bias, groups, 1, shuffle_groups, relu, residual, interleave_with)


def shuffle_group_conv1x1(x, weight, bias, groups: int, shuffle_groups: int, relu: bool, residual=None):
    return conv1x1_shuffle_forward(x, weight, bias, groups, shuffle_groups, 1, relu, residual)
