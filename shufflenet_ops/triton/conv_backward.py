"""Backward kernels of the fused conv: grad input, grad weight with grad bias, the ReLU mask.

With y = Pout(conv(Pin(x), W)) and go = dL/dy, gz = Pout^-1(go) is never materialised: the
kernels read go at channel Pout(r) for conv-output row r.
- grad input = Pin^-1(conv_transpose(gz, W)): the forward GEMM kernel with W transposed by
  strides, reading go through Pout and writing through Pin's source map.
- grad weight[g] = sum over batch and pixels of gz_g @ Pin(x)_g^T. Deterministic: the
  (batch, pixel-tile) sequence is cut into a number of slices fixed by the shape and the GPU;
  each program sums its slice in order into its own partial (no atomics), and
  ``_sum_slices_kernel`` sums the partials in slice order and casts to the output dtype (one
  slice: the partial kernel writes the result itself). The pixel block (the inner reduction
  step) is fixed per path, never autotuned, so the result is reproducible bit for bit.
- grad bias = channel sums of gz: in the grad-weight kernel when both are wanted (the
  programs of the first reduction-channel tile also sum their go tiles' rows), else its own
  kernel, sliced the same way.
- ReLU: the kernels read go through torch's ReLU backward mask (0 where the saved output
  <= 0, ``conv_forward.relu_masked``), so the fused backward (``conv1x1_shuffle_backward``)
  makes no masked copy of go; ``relu_grad`` is the schema's standalone op.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common, _configs
from .conv_forward import GemmPlan, relu_masked
from .launch_cache import Launch, LaunchCache


@triton.jit
def _grad_weight_partial_kernel(
    go_ptr,  # (NB, GROUPS*ROWS, P) by strides; conv output row r is go channel (r % go_a) * go_b + r // go_a
    x_ptr,  # (NB, GROUPS*RED, P) by strides; conv input channel c is x channel (c % x_a) * x_b + c // x_a
    m_ptr,  # the forward's output, laid out exactly like go: the ReLU mask (MASK_GO); else any pointer
    gw_ptr,  # slice s's (GROUPS*ROWS, RED) partial at gw_ptr + s*SPLIT_STRIDE, row-major
    gb_ptr,  # slice s's (GROUPS*ROWS,) bias partial at gb_ptr + s*SPLIT_STRIDE + BIAS_OFFSET (HAS_BIAS)
    P, ROWS, RED, GROUPS,
    P_TILES,  # pixel tiles per batch item
    NUM_TILES,  # NB * P_TILES: the reduction's work items, in order
    TILES_PER_SPLIT,
    SPLIT_STRIDE, BIAS_OFFSET,
    go_a, go_b, x_a, x_b,
    stride_gb, stride_gc, stride_gp,
    stride_xb, stride_xc, stride_xp,
    HAS_BIAS: tl.constexpr,
    MASK_GO: tl.constexpr,
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
        bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        bias_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, TILES_PER_SPLIT):
        t = split * TILES_PER_SPLIT + i
        b = t // P_TILES
        offs_p = (t % P_TILES) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_end = tl.where(t < NUM_TILES, P, 0)  # the last slice may be short: no pixels past it
        mask_p = offs_p < p_end
        if INDEX_64:
            b = b.to(tl.int64)
            offs_p = offs_p.to(tl.int64)
        go_offs = b * stride_gb + gc[:, None] * stride_gc + offs_p[None, :] * stride_gp
        gt = tl.load(go_ptr + go_offs, mask=mask_m[:, None] & mask_p[None, :], other=0.0)
        if MASK_GO:
            gt = relu_masked(gt, m_ptr + go_offs, mask_m[:, None] & mask_p[None, :])
        if HAS_BIAS:
            bias_acc += tl.sum(gt.to(acc.dtype), axis=1)
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

    base = split * SPLIT_STRIDE
    if INDEX_64:
        base = base.to(tl.int64)
    gw_offs = base + rows[:, None] * RED + offs_k[None, :]
    tl.store(gw_ptr + gw_offs, acc.to(gw_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])
    if HAS_BIAS:
        if pid_k == 0:  # one program per row tile stores it: the one of the first reduction-channel tile
            tl.store(gb_ptr + base + BIAS_OFFSET + rows, bias_acc.to(gb_ptr.dtype.element_ty), mask=mask_m)


@triton.jit
def _grad_bias_partial_kernel(
    go_ptr,  # (NB, C, P) by strides; conv output row r is go channel (r % go_a) * go_b + r // go_a
    ws_ptr,  # (SPLITS, C) contiguous partials, accumulator dtype (one slice: the result, its dtype)
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
    tl.store(ws_ptr + split * C + rows, tl.sum(acc, axis=1).to(ws_ptr.dtype.element_ty), mask=mask_c)


@triton.jit
def _sum_slices_kernel(
    ws_ptr,  # (SPLITS, N) contiguous partials, accumulator dtype
    a_ptr,  # result entries [0, NA)
    b_ptr,  # result entries [NA, N), at b_ptr + (i - NA)
    SPLITS, N, NA,
    INDEX_64: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Sums the partials in slice order (a fixed order: deterministic) and casts once."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if INDEX_64:
        offs = offs.to(tl.int64)
    mask = offs < N
    if ACC_FP64:
        total = tl.zeros((BLOCK,), dtype=tl.float64)
    else:
        total = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLITS):
        total += tl.load(ws_ptr + s * N + offs, mask=mask, other=0.0)
    tl.store(a_ptr + offs, total.to(a_ptr.dtype.element_ty), mask=offs < NA)
    tl.store(b_ptr + (offs - NA), total.to(b_ptr.dtype.element_ty), mask=mask & (offs >= NA))


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
    key=["ROWS", "RED", "GROUPS", "P", "NUM_TILES", "stride_gp", "stride_xp", "go_a", "x_a", "HAS_BIAS", "MASK_GO"],
    prune_configs_by={"early_config_prune": _grad_weight_prune},
)(_grad_weight_partial_kernel)


def _slices(num_tiles: int, programs: int, device: torch.device) -> tuple[int, int]:
    """(slices, tiles per slice) of a reduction over ``num_tiles`` ordered work items."""
    forced = _common.splits_override()
    splits = forced if forced is not None else _configs.num_splits(num_tiles, programs, _common.sm_count(device))
    splits = max(1, min(splits, num_tiles))
    per = _common.cdiv(num_tiles, splits)
    return _common.cdiv(num_tiles, per), per


_SUM_BLOCK = 256


def _sum_slices_launch(splits: int, n: int, na: int, acc: torch.dtype) -> Launch:
    """Called with (ws, a, b): a[i] = sum_s ws[s, i] for i < na, b[i - na] for the rest."""
    return Launch(
        _sum_slices_kernel, (_common.cdiv(n, _SUM_BLOCK),), (splits, n, na),
        dict(INDEX_64=splits * n >= _common.INT32_LIMIT, ACC_FP64=acc == torch.float64, BLOCK=_SUM_BLOCK),
    )


def conv1x1_grad_input(
    grad_output: torch.Tensor,
    weight: torch.Tensor,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    output: torch.Tensor | None = None,
) -> torch.Tensor:
    """grad x = Pin^-1(conv_transpose1x1(Pout^-1(go), W)), in go's memory format; with
    ``output`` (the forward's, for a conv with ReLU) go is read through the ReLU mask."""
    plan = _GRAD_INPUT.plan((grad_output, weight, output), (groups, in_shuffle, out_shuffle), _grad_input_plan)
    return plan(grad_output, weight, None, None, output)


def _grad_input_plan(grad_output, weight, output, groups, in_shuffle, out_shuffle) -> GemmPlan:
    cout = grad_output.shape[1]
    red_fwd = weight.shape[1]  # forward's input channels per group
    cin = red_fwd * groups
    rows_fwd = cout // groups
    # The transposed GEMM: output rows = forward input channels, reduction = forward output
    # rows. W^T_g[c, r] = weight[g*rows_fwd + r, c].
    w_strides = (rows_fwd * weight.stride(0), weight.stride(1), weight.stride(0))
    return GemmPlan(
        grad_output, cin, w_strides, groups, red_fwd, rows_fwd,
        _common.shuffled_target(out_shuffle, cout),  # read gz[r] at go channel Pout(r)
        _common.shuffled_source(in_shuffle, cin),  # write grad of Pin(x)[c] to x channel src(c)
        False, False, False, output is not None,
    )


_GRAD_INPUT = LaunchCache("conv grad input")


class _GradWeightPlan:
    """grad weight (and grad bias) for one launch-cache key: the partial kernel, then, with
    more than one slice, the slice sum."""

    def __init__(self, go, x, output, groups, in_shuffle, out_shuffle, with_bias) -> None:
        self.go_fmt, self.x_fmt = _common.dense_format(go), _common.dense_format(x)
        cout, cin = go.shape[1], x.shape[1]
        self.cout, self.red = cout, cin // groups
        self.params = (groups, in_shuffle, out_shuffle, with_bias, output is not None)
        self.with_bias = with_bias
        self.empty = go.numel() == 0 or x.numel() == 0 or self.red == 0 or cout == 0
        self.acc = _common.acc_dtype(go.dtype)
        self.splits = 0  # set with the launches, on the first call
        self.partial: Launch | None = None
        self.finish: Launch | None = None

    def __call__(self, go, x, output) -> tuple[torch.Tensor, torch.Tensor | None]:
        gw = torch.empty((self.cout, self.red, 1, 1), dtype=go.dtype, device=go.device)
        gb = torch.empty((self.cout,), dtype=go.dtype, device=go.device) if self.with_bias else None
        if self.empty:
            return gw.zero_(), None if gb is None else gb.zero_()
        go = go.contiguous(memory_format=self.go_fmt)
        x = x.contiguous(memory_format=self.x_fmt)
        mask = go if output is None else _common.like(output, go, self.go_fmt)
        if self.partial is None:
            self._prepare(go, x)
        if self.splits == 1:  # the partial is the result
            self.partial(go, x, mask, gw, gw if gb is None else gb)
            return gw, gb
        ws = torch.empty((self.splits, self.ws_cols), dtype=self.acc, device=go.device)
        self.partial(go, x, mask, ws, ws)
        self.finish(ws, gw, gw if gb is None else gb)
        return gw, gb

    def _prepare(self, go, x) -> None:
        groups, in_shuffle, out_shuffle, with_bias, masked = self.params
        cout, red = self.cout, self.red
        rows = cout // groups
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
        self.splits, per = _slices(num_tiles, programs, go.device)
        # Partials: slice s holds the weight's cout*red entries, then the bias's cout.
        self.ws_cols = cout * red + (cout if with_bias else 0)
        direct = self.splits == 1
        args = (
            geo.p, rows, red, groups, p_tiles, num_tiles, per,
            0 if direct else self.ws_cols, 0 if direct else cout * red,
            *_common.shuffled_target(out_shuffle, cout), *_common.shuffled_source(in_shuffle, x.shape[1]),
            *_common.strides(go), *_common.strides(x),
        )
        flags = dict(
            HAS_BIAS=with_bias,
            MASK_GO=masked,
            INDEX_64=_common.needs_int64(go, x) or self.splits * self.ws_cols >= _common.INT32_LIMIT,
            DOT_PRECISION=_common.dot_precision(go.dtype),
            UPCAST_DOT=_common.upcast_dot(go.dtype),
            ACC_FP64=is_fp64,
            BLOCK_P=block_p,
        )
        splits = self.splits
        if tuned:
            def grid(meta):
                return (groups * _common.cdiv(rows, meta["BLOCK_M"]) * _common.cdiv(red, meta["BLOCK_K"]), splits)

            self.partial = Launch(_grad_weight_partial_tuned, grid, args, flags)
        else:
            grid = (groups * _common.cdiv(rows, tile.block_m) * _common.cdiv(red, tile.block_k), splits)
            self.partial = Launch(_grad_weight_partial_kernel, grid, args, {
                **flags, "BLOCK_M": tile.block_m, "BLOCK_K": tile.block_k, "USE_DOT": tile.use_dot,
                "num_warps": tile.num_warps, "num_stages": tile.num_stages,
            })
        if not direct:
            self.finish = _sum_slices_launch(splits, self.ws_cols, cout * red, self.acc)


_GRAD_WEIGHT = LaunchCache("conv grad weight")


def grad_weight_and_bias(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    output: torch.Tensor | None = None,
    with_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(grad W, grad b or None) in one reduction kernel; with ``output`` (the forward's, for a
    conv with ReLU) go is read through the ReLU mask."""
    plan = _GRAD_WEIGHT.plan((grad_output, x, output), (groups, in_shuffle, out_shuffle, with_bias), _GradWeightPlan)
    return plan(grad_output, x, output)


def conv1x1_grad_weight(
    grad_output: torch.Tensor, x: torch.Tensor, groups: int, in_shuffle: int, out_shuffle: int
) -> torch.Tensor:
    """grad W = sum over batch and pixels of Pout^-1(go)_g @ Pin(x)_g^T, shape (Cout, Cin/g, 1, 1)."""
    return grad_weight_and_bias(grad_output, x, groups, in_shuffle, out_shuffle)[0]


class _GradBiasPlan:
    """The standalone grad bias for one launch-cache key: channel sums, then, with more than
    one slice, the slice sum."""

    def __init__(self, go, out_shuffle) -> None:
        self.fmt = _common.dense_format(go)
        self.c = go.shape[1]
        self.out_shuffle = out_shuffle
        self.empty = go.numel() == 0
        self.acc = _common.acc_dtype(go.dtype)
        self.splits = 0  # set with the launches, on the first call
        self.partial: Launch | None = None
        self.finish: Launch | None = None

    def __call__(self, go) -> torch.Tensor:
        gb = torch.empty((self.c,), dtype=go.dtype, device=go.device)
        if self.empty:
            return gb.zero_()
        go = go.contiguous(memory_format=self.fmt)
        if self.partial is None:
            self._prepare(go)
        if self.splits == 1:
            self.partial(go, gb)
            return gb
        ws = torch.empty((self.splits, self.c), dtype=self.acc, device=go.device)
        self.partial(go, ws)
        self.finish(ws, gb, gb)
        return gb

    def _prepare(self, go) -> None:
        c = self.c
        geo = _common.Geometry.of(go)
        block_c = min(32, _common.next_power_of_2(c))
        block_p = 128 if go.stride(3) == 1 else 32  # NCHW: long pixel rows; channels_last: short
        p_tiles = _common.cdiv(geo.p, block_p)
        num_tiles = geo.nb * p_tiles
        self.splits, per = _slices(num_tiles, _common.cdiv(c, block_c), go.device)
        self.partial = Launch(
            _grad_bias_partial_kernel, (_common.cdiv(c, block_c), self.splits),
            (geo.p, c, p_tiles, num_tiles, per, *_common.shuffled_target(self.out_shuffle, c), *_common.strides(go)),
            dict(INDEX_64=_common.needs_int64(go), ACC_FP64=go.dtype == torch.float64, BLOCK_C=block_c,
                 BLOCK_P=block_p),
        )
        self.finish = _sum_slices_launch(self.splits, c, c, self.acc)


_GRAD_BIAS = LaunchCache("conv grad bias")


def conv1x1_grad_bias(grad_output: torch.Tensor, out_shuffle: int) -> torch.Tensor:
    """grad b[r] = sum over batch and pixels of go at channel Pout(r), shape (Cout,)."""
    return _GRAD_BIAS.plan((grad_output,), (out_shuffle,), _GradBiasPlan)(grad_output)


class _ReluGradPlan:
    BLOCK = 1024

    def __init__(self, go, output) -> None:
        self.fmt = _common.dense_format(go)
        self.launch: Launch | None = None

    def __call__(self, go, output) -> torch.Tensor:
        go = go.contiguous(memory_format=self.fmt)
        out = _common.like(output, go, self.fmt)
        gi = torch.empty_like(go)
        numel = go.numel()
        if numel == 0:
            return gi
        if self.launch is None:
            self.launch = Launch(
                _relu_grad_kernel, (_common.cdiv(numel, self.BLOCK),), (numel,),
                dict(INDEX_64=numel + self.BLOCK >= _common.INT32_LIMIT, BLOCK=self.BLOCK),
            )
        self.launch(go, out, gi)
        return gi


_RELU_GRAD = LaunchCache("relu grad")


def relu_grad(grad_output: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """torch's ReLU backward: 0 where output <= 0, else grad_output (also where output is
    NaN; an inf or NaN grad_output where output <= 0 gives 0, not inf * 0), in grad_output's
    memory format."""
    return _RELU_GRAD.plan((grad_output, output), (), _ReluGradPlan)(grad_output, output)


def conv1x1_shuffle_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    output: torch.Tensor | None,
    groups: int,
    in_shuffle: int,
    out_shuffle: int,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(grad x, grad W, grad b), each None unless ``needs`` asks for it, of a fused conv whose
    forward had a ReLU iff ``output`` (its saved output) is given: two kernels (grad input;
    grad weight with grad bias) reading go through the ReLU mask, and a slice sum when the
    weight reduction has several slices. The unfused sequence would be relu_grad, grad input,
    grad weight, grad bias, and a sum and a cast after each reduction."""
    need_x, need_w, need_b = needs
    grad_x = conv1x1_grad_input(grad_output, weight, groups, in_shuffle, out_shuffle, output) if need_x else None
    grad_w = grad_b = None
    if need_w:
        grad_w, grad_b = grad_weight_and_bias(grad_output, x, groups, in_shuffle, out_shuffle, output, need_b)
    elif need_b:  # a frozen weight: the bias alone, from the masked gradient
        masked = grad_output if output is None else relu_grad(grad_output, output)
        grad_b = conv1x1_grad_bias(masked, out_shuffle)
    return grad_x, grad_w, grad_b
