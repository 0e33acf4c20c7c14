"""
LayerNorm with the fused residual add, in Triton (forward and backward)
=======================================================================

What it computes (the same contract as the C++ op ``pygpt::layer_norm_fwd``/``_bwd``,
csrc/cpu/layer_norm.cpp):

    x (..., C), optional residual (same shape and dtype), weight (C,), optional bias (C,)
    h    = x + residual, rounded to x's dtype and returned (with no residual, x itself plays h)
    mean = mean(h), rstd = 1 / sqrt(var_biased(h) + eps)   per row, float32 (float64 for float64 x)
    y    = (h - mean) * rstd * weight + bias                in x's dtype

The statistics are those of h *as stored* (after rounding to x's dtype): the backward only sees
that h, so y is exactly LN(returned h).

Layout and index arithmetic
---------------------------
The leading dims are flattened: x is viewed as an [N, C] row-major matrix (a non-contiguous input
is made contiguous at the Python boundary, one copy), so element (row, col) lives at
``row * C + col``. Every kernel works on whole rows: ``cols = tl.arange(0, BLOCK_C)`` with
``BLOCK_C = next_power_of_2(C)`` and ``mask = cols < C``; masked lanes load 0 and are forced to 0
before every reduction, so they never reach a sum.

Forward kernel ``_ln_fwd``: grid (N,), one program per row.
  1. load the row of x (and residual), add in float32, round h to x's dtype, store h, and read the
     rounded value back into float32 registers (so the statistics are those of stored h);
  2. mean = sum(h) / C; d = h - mean (0 on masked lanes); var = sum(d * d) / C. This is the stable
     two-pass variance: the row is held in registers, so the second pass costs no memory traffic,
     and a large row mean does not cancel the variance as E[h^2] - E[h]^2 would;
  3. y = d * rstd * w (+ b), stored in x's dtype; mean and rstd stored per row.

Backward kernel ``_ln_bwd``: a parallel row split. The M = N rows are cut into G contiguous
chunks of ROWS = ``rows_per_prog`` rows; program p (grid (G,), G = cdiv(M, ROWS)) owns rows
``[p * ROWS, min((p + 1) * ROWS, M))`` -- only the last chunk may be short -- and walks them in
tiles of BLOCK_R rows: a [BLOCK_R, BLOCK_C] tile at rows ``r0 + tl.arange(0, BLOCK_R)``, element
(i, c) at ``(r0 + i) * C + c``, masked by ``(row < row_end) & (c < C)``. Per row:
    xhat = (h - mean) * rstd,  g = dy * w
    dx   = rstd * (g - mean(g) - xhat * mean(g * xhat))   (+ dh, the gradient that reaches h
                                                            directly on the residual path)
(the means over the row: ``tl.sum(axis=1)`` of the tile, / C). The program accumulates
``dy * xhat`` and ``dy``, summed over the tile's rows (``tl.sum(axis=0)``), into two float32 BLOCK_C
register vectors and at the end writes them to row p of two [G, C] float32 partial buffers: one
partial row per program, no atomics, no locks.

Reduction kernel ``_ln_bwd_reduce``: grid (cdiv(C, BLOCK_N),), program q sums columns
``[q * BLOCK_N, (q + 1) * BLOCK_N)`` of the partial buffers over all G rows, in tiles of
BLOCK_M x BLOCK_N, in a fixed order.

The split (``_bwd_split``): ROWS = max(16, cdiv(M, 8 x #SMs), cdiv(M, 2^22 // C)), rounded up to a
multiple of BLOCK_R = clamp(16 x threads // BLOCK_C, 1, 8) (a tile of <= 16 elements per thread and
tensor: 8 rows for C <= 64, 2 for C = 768 ... 2048, 1 for wider rows). For large M that is ~8 programs per SM (1056 on
a 132-SM H100 from M = 16896 rows on; 512 = ~4 per SM at M = 8192), while the partial buffers stay
small: at most one partial row per 16 rows (<= 1/16 of dy's element count, in fp32) and <= 2^22
elements each. The previous version ran min(M, 2 x #SMs) programs of cdiv(M, G) rows, one row at a
time: 2 programs per SM with one row's loads in flight each (estimated, not measured, at 0.3-0.5x
of copy bandwidth). Under the interpreter #SMs counts as 1, so small tests split too (37 rows:
16 + 16 + 5).
Determinism: the split depends only on (M, C, the SM count) and every sum runs in a fixed order
(per program: tiles in row order, ``tl.sum`` trees fixed by the shapes; then the reduction in row
tiles), so dx, dweight and dbias are bitwise reproducible run to run on one GPU model.

Precision: all arithmetic in float32 (float64 for float64 inputs); fp16/bf16 only at the loads
and stores. weight/bias may be of another floating dtype than x; the gradients come back in
weight's dtype.

Limits
------
* One block holds a whole row: C <= 65536 // element_size(x) (16384 for fp32, 32768 for fp16/bf16,
  8192 for fp64). Wider rows raise ValueError naming C (no column-block loop).
* Non-contiguous x/residual/grad tensors are copied with .contiguous() at the boundary.
* Uses only tl.load/tl.store/tl.sum/tl.where/tl.sqrt (Triton >= 3.0 should do).
* Under TRITON_INTERPRET=1 the interpreter casts float32 -> bfloat16 by truncation, where the GPU
  rounds to nearest even; there (only) ``_cast`` rounds by hand with integer bit operations, so
  interpreter and GPU give the same bits. On the GPU the flag is a constexpr False: plain ``.to``.

Autograd and torch.compile: the kernels are wrapped as the custom ops
``pygpt::triton_layer_norm_fwd`` -> (y, h, mean, rstd) (h empty, shape [0], without a residual)
and ``pygpt::triton_layer_norm_bwd`` -> (dx, dweight, dbias), with fake (meta) functions and
``register_autograd``; ``layer_norm()`` below is what ``pygpt.ops.layer_norm(backend='triton')``
calls.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_FUSED_BYTES = 65536
# The interpreter casts float32 -> bfloat16 by truncation; the GPU rounds to nearest even. Under the
# interpreter the kernels round by hand so that both give the same bits.
_RTNE_BF16 = os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------- kernels


@triton.jit
def _cast(v, dtype: tl.constexpr, RTNE_BF16: tl.constexpr):
    """v.to(dtype); with RTNE_BF16 (interpreter only), float32 -> bfloat16 rounds to nearest even."""
    if RTNE_BF16:
        if dtype == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _ln_fwd(
    X, R, W, B, Y, H, Mean, Rstd,
    C, eps,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, ACC64: tl.constexpr, BLOCK_C: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_C)
    mask = cols < C
    off = row * C + cols
    acc_t = tl.float64 if ACC64 else tl.float32

    x = tl.load(X + off, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + off, mask=mask, other=0.0)
        hs = _cast(x.to(acc_t) + r.to(acc_t), H.dtype.element_ty, RTNE_BF16)  # h rounded to x's dtype
        tl.store(H + off, hs, mask=mask)
        h = hs.to(acc_t)
    else:
        h = x.to(acc_t)

    mean = tl.sum(h, axis=0) / C
    d = tl.where(mask, h - mean, 0.0)
    var = tl.sum(d * d, axis=0) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(Mean + row, mean)
    tl.store(Rstd + row, rstd)

    w = tl.load(W + cols, mask=mask, other=0.0).to(acc_t)
    y = d * rstd * w
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(acc_t)
    tl.store(Y + off, _cast(y, Y.dtype.element_ty, RTNE_BF16), mask=mask)


@triton.jit
def _ln_bwd(
    DY, DH, Hh, W, Mean, Rstd, DX, DWp, DBp,
    N, C, rows_per_prog,
    HAS_DH: tl.constexpr, ACC64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    RTNE_BF16: tl.constexpr,
):
    # Program p owns the contiguous rows [row_start, row_end) and writes row p of the partials.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc_t = tl.float64 if ACC64 else tl.float32

    w = tl.load(W + cols, mask=cmask, other=0.0).to(acc_t)
    dw = tl.zeros([BLOCK_C], dtype=acc_t)
    db = tl.zeros([BLOCK_C], dtype=acc_t)

    row_start = pid.to(tl.int64) * rows_per_prog  # int64: row * C may exceed 2^31
    row_end = tl.minimum(row_start + rows_per_prog, N)
    for r0 in range(row_start, row_end, BLOCK_R):
        # tile rows r0 .. r0 + BLOCK_R - 1; those >= row_end (the short last chunk) are masked
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < row_end
        mask = rmask[:, None] & cmask[None, :]
        off = rows[:, None] * C + cols[None, :]  # [BLOCK_R, BLOCK_C] element offsets
        h = tl.load(Hh + off, mask=mask, other=0.0).to(acc_t)
        dy = tl.load(DY + off, mask=mask, other=0.0).to(acc_t)
        mean = tl.load(Mean + rows, mask=rmask, other=0.0).to(acc_t)
        rstd = tl.load(Rstd + rows, mask=rmask, other=0.0).to(acc_t)

        xhat = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]  # 0 on masked lanes (dy and w load 0 there)
        c_g = tl.sum(g, axis=1) / C  # per row: mean(g)
        c_gx = tl.sum(g * xhat, axis=1) / C  # per row: mean(g * xhat)
        dx = (g - c_g[:, None] - xhat * c_gx[:, None]) * rstd[:, None]
        if HAS_DH:
            dx = dx + tl.load(DH + off, mask=mask, other=0.0).to(acc_t)
        tl.store(DX + off, _cast(dx, DX.dtype.element_ty, RTNE_BF16), mask=mask)

        # column partials: masked rows contribute exact zeros (dy = 0 and xhat = 0 there)
        dw += tl.sum(dy * xhat, axis=0)
        db += tl.sum(dy, axis=0)

    poff = pid.to(tl.int64) * C + cols
    tl.store(DWp + poff, dw, mask=cmask)
    tl.store(DBp + poff, db, mask=cmask)


@triton.jit
def _ln_bwd_reduce(
    DWp, DBp, DW, DB,
    G, C,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ACC64: tl.constexpr, RTNE_BF16: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < C
    acc_t = tl.float64 if ACC64 else tl.float32
    dw = tl.zeros([BLOCK_N], dtype=acc_t)
    db = tl.zeros([BLOCK_N], dtype=acc_t)
    for m0 in range(0, G, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        m = (rows[:, None] < G) & cmask[None, :]
        off = rows[:, None].to(tl.int64) * C + cols[None, :]
        dw += tl.sum(tl.load(DWp + off, mask=m, other=0.0), axis=0)
        db += tl.sum(tl.load(DBp + off, mask=m, other=0.0), axis=0)
    tl.store(DW + cols, _cast(dw, DW.dtype.element_ty, RTNE_BF16), mask=cmask)
    tl.store(DB + cols, _cast(db, DB.dtype.element_ty, RTNE_BF16), mask=cmask)


# ------------------------------------------------------------------------------------- launchers


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_c(C: int, dtype) -> int:
    limit = MAX_FUSED_BYTES // torch.empty((), dtype=dtype).element_size()
    if C > limit:
        raise ValueError(
            f"triton layer_norm: C = {C} is wider than one block holds for {dtype} "
            f"({limit} = 64 KB per row); wider rows are not supported"
        )
    return triton.next_power_of_2(C)


def _num_warps(BLOCK_C: int) -> int:
    return min(max(BLOCK_C // 256, 1), 8)


# The backward's row split (see the module docstring).
BWD_PROGRAMS_PER_SM = 8  # programs per SM for large M
BWD_MIN_ROWS = 16  # at least 16 rows per program: at most one partial row per 16 rows
BWD_MAX_PARTIAL = 1 << 22  # elements per [G, C] partial buffer (16 MB in fp32)
BWD_TILE_PER_THREAD = 16  # elements of a [BLOCK_R, BLOCK_C] tile per thread (per tensor: h, dy, ...)


def _bwd_block_r(BLOCK_C: int) -> int:
    """Rows per tile: as many as keep the tile at <= 16 elements per thread, 1 ... 8."""
    threads = 32 * _num_warps(BLOCK_C)
    return max(1, min(8, BWD_TILE_PER_THREAD * threads // BLOCK_C))


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter: small grids, so that small tests already split their rows


def _bwd_split(N: int, C: int, device: torch.device) -> tuple[int, int, int]:
    """(rows_per_prog, G, BLOCK_R) of the backward for N >= 1 rows of width C: G = cdiv(N, rows_per_prog)
    programs of rows_per_prog contiguous rows each (a multiple of BLOCK_R; only the last may be short)."""
    block_r = _bwd_block_r(triton.next_power_of_2(C))
    rows = max(BWD_MIN_ROWS, triton.cdiv(N, BWD_PROGRAMS_PER_SM * _sm_count(device)),
               triton.cdiv(N, max(1, BWD_MAX_PARTIAL // C)))
    rows = triton.cdiv(rows, block_r) * block_r
    return rows, triton.cdiv(N, rows), block_r


def _fwd_impl(x, residual, weight, bias, eps: float):
    C = x.size(-1)
    BLOCK_C = _block_c(C, x.dtype)
    x = x.contiguous()
    N = x.numel() // C
    stat = _stat_dtype(x.dtype)
    y = torch.empty_like(x)
    h = torch.empty_like(x) if residual is not None else x.new_empty((0,))
    mean = torch.empty((N,), dtype=stat, device=x.device)
    rstd = torch.empty((N,), dtype=stat, device=x.device)
    if N == 0:
        return y, h, mean, rstd
    r = residual.contiguous() if residual is not None else x
    w = weight.contiguous()
    b = bias.contiguous() if bias is not None else w
    _ln_fwd[(N,)](
        x, r, w, b, y, h if residual is not None else y, mean, rstd,
        C, eps,
        HAS_RES=residual is not None, HAS_BIAS=bias is not None, ACC64=stat == torch.float64,
        BLOCK_C=BLOCK_C, RTNE_BF16=_RTNE_BF16, num_warps=_num_warps(BLOCK_C),
    )
    return y, h, mean, rstd


def _bwd_impl(grad_y, grad_h, h, weight, mean, rstd):
    C = h.size(-1)
    BLOCK_C = _block_c(C, h.dtype)
    h = h.contiguous()
    N = h.numel() // C
    acc = _stat_dtype(h.dtype)
    dy = grad_y.to(h.dtype).contiguous()
    dh = grad_h.to(h.dtype).contiguous() if grad_h is not None else None
    mean = mean.to(acc).contiguous()
    rstd = rstd.to(acc).contiguous()
    w = weight.contiguous()
    dx = torch.empty_like(h)
    dw = torch.empty((C,), dtype=weight.dtype, device=h.device)
    db = torch.empty((C,), dtype=weight.dtype, device=h.device)
    if N == 0:
        return dx, dw.zero_(), db.zero_()
    rows_per_prog, G, BLOCK_R = _bwd_split(N, C, h.device)  # G programs, none empty
    dwp = torch.empty((G, C), dtype=acc, device=h.device)  # every element written
    dbp = torch.empty((G, C), dtype=acc, device=h.device)
    _ln_bwd[(G,)](
        dy, dh if dh is not None else dy, h, w, mean, rstd, dx, dwp, dbp,
        N, C, rows_per_prog,
        HAS_DH=dh is not None, ACC64=acc == torch.float64, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C,
        RTNE_BF16=_RTNE_BF16, num_warps=_num_warps(BLOCK_C),
    )
    BLOCK_N = 64 if C >= 64 else triton.next_power_of_2(C)
    _ln_bwd_reduce[(triton.cdiv(C, BLOCK_N),)](
        dwp, dbp, dw, db, G, C,
        BLOCK_M=32, BLOCK_N=BLOCK_N, ACC64=acc == torch.float64, RTNE_BF16=_RTNE_BF16, num_warps=4,
    )
    return dx, dw, db


# ------------------------------------------------------------------------------------ custom ops


@torch.library.custom_op("pygpt::triton_layer_norm_fwd", mutates_args=())
def triton_layer_norm_fwd(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd_impl(x, residual, weight, bias, eps)


@triton_layer_norm_fwd.register_fake
def _(x, residual, weight, bias, eps):
    C = x.size(-1)
    n_rows = x.numel() // C if C else 0
    stat = _stat_dtype(x.dtype)
    h = x.new_empty(x.shape) if residual is not None else x.new_empty((0,))
    return x.new_empty(x.shape), h, x.new_empty((n_rows,), dtype=stat), x.new_empty((n_rows,), dtype=stat)


@torch.library.custom_op("pygpt::triton_layer_norm_bwd", mutates_args=())
def triton_layer_norm_bwd(
    grad_y: torch.Tensor, grad_h: torch.Tensor | None, h: torch.Tensor, weight: torch.Tensor,
    mean: torch.Tensor, rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_impl(grad_y, grad_h, h, weight, mean, rstd)


@triton_layer_norm_bwd.register_fake
def _(grad_y, grad_h, h, weight, mean, rstd):
    return h.new_empty(h.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _setup(ctx, inputs, output):
    x, residual, weight, bias, eps = inputs
    _y, h, mean, rstd = output
    ctx.has_residual, ctx.has_bias = residual is not None, bias is not None
    # the backward needs the normalised input: x + residual (an output) or x itself
    ctx.save_for_backward(h if residual is not None else x, weight, mean, rstd)


def _backward(ctx, grad_y, grad_h, _grad_mean, _grad_rstd):
    h, weight, mean, rstd = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(h)
    grad_h = grad_h if ctx.has_residual else None
    dx, dw, db = triton_layer_norm_bwd(grad_y, grad_h, h, weight, mean, rstd)
    # h = x + residual, so both receive the same gradient
    return dx, (dx if ctx.has_residual else None), dw, (db if ctx.has_bias else None), None


triton_layer_norm_fwd.register_autograd(_backward, setup_context=_setup)


def layer_norm(x, weight, bias=None, eps=1e-5, residual=None):
    """LayerNorm over the last dim on the Triton kernels; with `residual`, returns (LN(x + residual), x + residual)."""
    y, h, _mean, _rstd = triton_layer_norm_fwd(x, residual, weight, bias, float(eps))
    return (y, h) if residual is not None else y
