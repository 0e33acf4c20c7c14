"""
Fused attention (FlashAttention-2) in Triton
============================================

``attention(q, k, v, causal, scale)`` computes ``softmax(q·kᵀ·scale, masked)·v`` for q (B, H, Tq, D)
and k, v (B, H, Tk, D) without ever materialising the Tq×Tk score matrix, forward and backward.

Forward (``_attn_fwd``)
-----------------------
The grid is ``(cdiv(Tq, BLOCK_M), B·H)``: program (m, bh) owns query rows
``m·BLOCK_M … m·BLOCK_M + BLOCK_M - 1`` of head ``bh``. It keeps its Q tile in registers and walks over
the key/value tiles, BLOCK_N keys at a time, with the *online softmax*: a running row maximum m_i, a
running normaliser l_i = Σ exp(s - m_i) and an unnormalised fp32 accumulator acc = Σ exp(s - m_i)·v.
When a new tile raises the maximum to m_new, the old l_i and acc are rescaled by exp(m_i - m_new).
Everything is done in base 2: the scores are multiplied by ``scale·log2(e)`` once, so every exponential
is a cheap ``exp2``. At the end ``out = acc / l_i`` and the program saves the row log-sum-exp
``lse = (m_i + log2(l_i)) / log2(e)`` (natural log, float32, (B, H, Tq)) for the backward.

Index arithmetic: head ``bh`` is ``(b, h) = (bh // H, bh % H)``; element (t, d) of q lives at
``q + b·stride_qb + h·stride_qh + t·stride_qt + d·stride_qd`` — every input is addressed through its
own four strides, so head-transposed views of a fused qkv projection (last-dim stride 1 or not) are
read in place, without a copy. Outputs (out, lse, dq, dk, dv) are allocated contiguous.

Masking. The head dim is padded to ``BLOCK_D`` = the next power of two ≥ max(16, D); loads are masked
by ``d < D`` (padding reads 0, which adds nothing to q·kᵀ) and stores by ``d < D``. Rows and keys past
Tq / Tk (the tails of a T that is not a multiple of the block) are masked the same way. For causal
attention (Tq == Tk) a query tile only visits the key tiles at or left of its diagonal: key tiles
strictly left of it are processed *without* any mask, and only the tiles that straddle the diagonal
(and, non-causal, the last partial key tile) go through the masked path (``MASK`` constexpr: the two
loops are two specialisations of one inlined helper). Causal needs ``BLOCK_M % BLOCK_N == 0`` so that
a tile boundary of the query side is a tile boundary of the key side; every config respects that.

Backward
--------
With P = softmax(S), dP = dO·vᵀ and Δ_i = Σ_d dO_id·O_id (= Σ_j P_ij dP_ij):
``dV = Pᵀ·dO``, ``dS = P ∘ (dP - Δ)``, ``dQ = scale·dS·K``, ``dK = scale·dSᵀ·Q``. P is recomputed
from q, k and the saved lse (``P = exp2(s·scale·log2e - lse·log2e)``), never stored.

1. ``_attn_bwd_preprocess``: Δ (B, H, Tq) in fp32, one program per (query tile, bh).
2. ``_attn_bwd_dkdv``: grid ``(cdiv(Tk, BLOCK_N), B·H)``; a program keeps one K/V tile and its dK, dV
   accumulators (fp32) in registers and walks over the query tiles that can see it (causal: from the
   diagonal down; the tiles straddling the diagonal and the partial last query tile are masked, the
   rest are not). It works on the transposed problem (sᵀ = k·qᵀ) so that the reductions over queries
   are matrix products with the tile it owns on the left.
3. ``_attn_bwd_dq``: grid ``(cdiv(Tq, BLOCK_M), B·H)``; a program keeps one Q/dO tile and walks over
   the key tiles exactly like the forward, accumulating dQ.

dQ strategy: its own pass (3), not atomics. An atomic dQ (every dK/dV program adding its dS·K into a
shared fp32 dQ) saves recomputing S and dP once more (2 of the ~7 tile matmuls), but it needs a zeroed
fp32 buffer plus a conversion pass, contends on the same rows from every key tile, and — the deciding
reason here — makes the gradient order-dependent, so dQ would not be bit-reproducible run to run.
The separate pass is deterministic and needs no extra memory; FlashAttention-2's own Triton port
makes the same choice.

Precision: fp16 and bf16 inputs are multiplied on the tensor cores with fp32 accumulation; the softmax,
m_i, l_i, lse and Δ are fp32; P and dS are rounded to the input dtype before their matmuls (as
FlashAttention does). fp32 inputs use ``input_precision="ieee"`` — full fp32, *no* TF32 — so the
fp32 results keep parity with the float64 reference (TF32 would lose ~3 decimal digits).
``input_precision`` exists since Triton 3.0 (``allow_tf32`` is deprecated), so Triton 3.6 and 3.8
both accept it.

Tuning: ``triton.autotune`` over tile sizes / warps / stages keyed on (Tq, Tk, BLOCK_D, CAUSAL), with
eight or nine configs per kernel aimed at A100 and H100 (SM80/SM90, ≤ 228 KB shared memory; configs that do not
fit are skipped by the autotuner), pruned per kernel and head dim by a register-footprint bound
(formula and calibration in "tile configs" below) so that no config spills — at D > 128
(BLOCK_D = 256) that leaves small 8-warp tiles. Under ``TRITON_INTERPRET=1`` (CPU) one small config is
used and nothing is tuned; ``PYGPT_TRITON_AUTOTUNE=0`` uses one config per kernel and head dim range
(``_FIXED``: measured spill-free with ptxas for sm_80 and sm_90).

Not supported: dropout (the op layer rejects ``dropout_p > 0`` for fused backends), head dims above
256 (D > 128 is correct and spill-free in fp16/bf16, but pads to BLOCK_D = 256), dtypes other than fp16/bf16/fp32, attention masks other than
causal, causal with Tq ≠ Tk, and a gradient through the lse output (it is an auxiliary output).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["attention"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# PYGPT_TRITON_AUTOTUNE=0: one default config per kernel instead of a tuning round per new shape (the
# GPU tests use it: correctness does not need tuning, and every new (Tq, Tk) would re-tune)
_AUTOTUNE = os.environ.get("PYGPT_TRITON_AUTOTUNE", "1") != "0"
_MAX_D = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# -- tile configs -----------------------------------------------------------------------------------
#
# Register footprint. A program keeps, across its loop, fp32 accumulators and one iteration's fp32
# score tiles plus its q/k/v/dO operand tiles (16-bit: half a 32-bit register per element). Spread
# over the 32 * num_warps threads, that is (BLOCK_D = the padded head dim: 256 for 128 < D <= 256)
#
#   fwd   (M*BD + M*N     + (M*BD + 2*N*BD) / 2)   / (32 * num_warps)   acc; s/p;      q, k, v
#   dkdv  (2*N*BD + 2*N*M + (2*N*BD + 2*M*BD) / 2) / (32 * num_warps)   dk, dv; sT, dpT; k, v, q, dO
#   dq    (M*BD + 2*M*N   + (2*M*BD + 2*N*BD) / 2) / (32 * num_warps)   dq; s, dp;     q, dO, k, v
#
# (M = BLOCK_M, N = BLOCK_N, BD = BLOCK_D) 32-bit registers per thread. It is an estimate: Triton
# also replicates mma operands across warps and keeps pipeline copies, so real use is 1.5-3x this.
# The bounds _REG_BUDGET were calibrated against ptxas (Triton 3.8, fp16, sm_80 and sm_90, ~150
# configs compiled without a GPU): of the measured configs at or under their kernel's bound only two
# spilled, both on sm_80 (dkdv 64x64x8 warps at BLOCK_D = 64: 128 bytes; dq 32x16x8 at 256: 8 bytes),
# and neither is in the lists below (a 64x64x8 with 3 stages is; it did not spill on sm_90 and was
# not measured on sm_80). The estimate cannot tell those apart; the bound is a guard, the measured
# table _FIXED and the compile check in the tests are the evidence. Example: the former
# one-size default 64 x 64 x 4 warps at D = 160 has dK/dV footprint
# (2*64*256 + 2*64*64 + (2*64*256 + 2*64*256)/2) / 128 = 576 and spilled 2.4 KB of stack on sm_90
# (its dq 4.5 KB, its forward 1.3 KB); at D = 128 its dK/dV and dq kernels spilled too.
# The autotuned lists are pruned by the bound per kernel and BLOCK_D (_budget_prune); the single
# config of PYGPT_TRITON_AUTOTUNE=0 comes from _FIXED (measured spill-free on sm_80 and sm_90, and
# within the bound). tests/kernels/test_triton_attention.py checks both, and compiles the D = 160
# ones for sm_80/sm_90 to check ptxas reports no spills.
# fp32 inputs (input_precision="ieee": FMA dots, not tensor cores) are not covered: they take the
# same configs and DO spill (measured: the forward at D = 64 already), correct but slow.

_REG_BUDGET = {"fwd": 128, "dkdv": 144, "dq": 88}


def regs_per_thread(kernel: str, block_m: int, block_n: int, block_d: int, num_warps: int) -> float:
    """The register footprint estimate of `kernel` ('fwd', 'dkdv', 'dq') per thread (formula above)."""
    m, n, bd = block_m, block_n, block_d
    if kernel == "fwd":
        words = m * bd + m * n + (m * bd + 2 * n * bd) / 2
    elif kernel == "dkdv":
        words = 2 * n * bd + 2 * n * m + (2 * n * bd + 2 * m * bd) / 2
    elif kernel == "dq":
        words = m * bd + 2 * m * n + (2 * m * bd + 2 * n * bd) / 2
    else:
        raise ValueError(f"unknown attention kernel {kernel!r}")
    return words / (32 * num_warps)


def _fits(kernel: str, cfg, block_d: int) -> bool:
    return regs_per_thread(kernel, cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], block_d,
                           cfg.num_warps) <= _REG_BUDGET[kernel]


def _cfg(bm, bn, w, st):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)


# The interpreter's one config (TRITON_INTERPRET=1: num_warps means nothing there; small tiles keep
# several tiles per test shape)
_INTERPRET_CONFIG = (32, 16, 4, 1)

# PYGPT_TRITON_AUTOTUNE=0: (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and BLOCK_D range
# (BLOCK_D <= 64, == 128, == 256). ptxas (Triton 3.8, fp16) registers / spills, sm_90 and sm_80:
#   fwd   64x64x4 (231 / 255 regs), 64x64x8 (255 / 255), 32x32x8 (231 / 255): no spills
#   dkdv  64x32x8 (175 / 255), 64x32x8 (242 / 255), 32x32x8 (242 / 255): no spills
#   dq    64x32x8 (176 / 255), 32x32x8 (254 / 255), 16x16x8 (254 / 255): no spills
# where the former 64x64x4 everywhere spilled in dkdv and dq from D = 64 (sm_80) / 128 (sm_90) on.
# Every entry has BLOCK_M % BLOCK_N == 0 (causal).
_FIXED = {
    "fwd": {64: (64, 64, 4, 2), 128: (64, 64, 8, 2), 256: (32, 32, 8, 2)},
    "dkdv": {64: (64, 32, 8, 2), 128: (64, 32, 8, 2), 256: (32, 32, 8, 2)},
    "dq": {64: (64, 32, 8, 2), 128: (32, 32, 8, 2), 256: (16, 16, 8, 2)},
}

# The autotuned sets (A100/H100, SM80/SM90; configs whose shared memory does not fit are skipped by
# the autotuner, configs over the register bound by _budget_prune): FA2's own Triton tiles
# (128 x 64 / 128 x 128, 4-8 warps), smaller ones for D = 128 and short T, and small 8-warp ones
# for D > 128.
_FWD_TUNE = ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 2),
             (64, 64, 8, 2), (32, 32, 8, 2))
_BWD_TUNE = ((64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2),
             (64, 32, 8, 2), (32, 32, 8, 2), (16, 16, 8, 2))


def _fixed_config(kernel: str, block_d: int, interpret: bool | None = None):
    """The one config `kernel` runs with when not autotuning (and under the interpreter; `interpret`
    None: as this process runs)."""
    if _INTERPRET if interpret is None else interpret:
        return _cfg(*_INTERPRET_CONFIG)
    table = _FIXED[kernel]
    return _cfg(*table[min(bd for bd in table if bd >= block_d)])


def _tune_configs(kernel: str):
    return [_cfg(*c) for c in (_FWD_TUNE if kernel == "fwd" else _BWD_TUNE)]


def _prune_causal(configs, causal: bool):
    """Causal skipping of key tiles assumes query tile boundaries are key tile boundaries."""
    if not causal:
        return configs
    return [c for c in configs if c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0]


def tuned_configs(kernel: str, block_d: int, causal: bool):
    """The autotuned candidates of `kernel` at BLOCK_D (causal or not): the tuning set pruned by the
    register budget and the causal tile rule; never empty (else the fixed config)."""
    kept = _prune_causal([c for c in _tune_configs(kernel) if _fits(kernel, c, block_d)], causal)
    return kept or [_fixed_config(kernel, block_d, interpret=False)]


def _budget_prune(kernel: str):
    def prune(configs, named_args, **kwargs):
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))
        causal = kwargs.get("CAUSAL", named_args.get("CAUSAL", False))
        keep = {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                for c in tuned_configs(kernel, block_d, causal)}
        kept = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in keep]
        return kept or tuned_configs(kernel, block_d, causal)
    return prune


def _launch(kernel: str, jit_fn, tuned_fn, grid, args, block_d: int, **constexprs):
    """Run `kernel` autotuned (GPU, PYGPT_TRITON_AUTOTUNE != 0) or with its fixed config."""
    if _AUTOTUNE and not _INTERPRET:
        tuned_fn[grid](*args, BLOCK_D=block_d, **constexprs)
        return
    cfg = _fixed_config(kernel, block_d)
    jit_fn[grid(cfg.kwargs)](*args, BLOCK_D=block_d, **constexprs, **cfg.kwargs, num_warps=cfg.num_warps,
                             num_stages=cfg.num_stages)


_KEY = ["Tq", "Tk", "BLOCK_D", "CAUSAL"]


# -- forward ----------------------------------------------------------------------------------------


@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                    offs_m, offs_d, D, Tk, qk_scale, lo, hi,
                    MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """Online softmax over key tiles [lo, hi); MASK applies the key-tail and causal masks."""
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < Tk
        # K tile loaded transposed (BLOCK_D, BLOCK_N) so q·kᵀ is a plain dot
        kT = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd,
                     mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        s = tl.dot(q, kT, input_precision=PREC) * qk_scale  # log2 units
        if MASK:
            ok = n_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_m[:, None] >= offs_n[None, :])
            s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, sm_scale,
              stride_qb, stride_qh, stride_qt, stride_qd,
              stride_kb, stride_kh, stride_kt, stride_kd,
              stride_vb, stride_vh, stride_vt, stride_vd,
              H, Tq, Tk, D,
              CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Tq
    d_ok = offs_d < D

    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd,
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)

    qk_scale = sm_scale * 1.4426950408889634  # fold log2(e) in: exp(x) = exp2(x·log2 e)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    if CAUSAL:
        # key tiles left of the diagonal tile: no mask; the diagonal tile(s): masked
        full_hi = start_m
        mask_lo = start_m
        mask_hi = tl.minimum(start_m + BLOCK_M, Tk)
    else:
        full_hi = (Tk // BLOCK_N) * BLOCK_N
        mask_lo = full_hi
        mask_hi = Tk
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                                    offs_m, offs_d, D, Tk, qk_scale, 0, full_hi,
                                    False, CAUSAL, BLOCK_N, PREC)
    acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                                    offs_m, offs_d, D, Tk, qk_scale, mask_lo, mask_hi,
                                    True, CAUSAL, BLOCK_N, PREC)

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = (m_i + tl.math.log2(l_safe)) / 1.4426950408889634
    o_base = O + bh.to(tl.int64) * Tq * D
    tl.store(o_base + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, lse, mask=m_ok)


# -- backward ---------------------------------------------------------------------------------------


@triton.jit
def _attn_bwd_preprocess(O, DO, DELTA,
                         stride_dob, stride_doh, stride_dot, stride_dod,
                         H, Tq, D,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Δ[bh, t] = Σ_d dO[bh, t, d] · O[bh, t, d] in fp32 (O contiguous, dO by its strides)."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    msk = (offs_m < Tq)[:, None] & (offs_d < D)[None, :]
    o = tl.load(O + bh.to(tl.int64) * Tq * D + offs_m[:, None] * D + offs_d[None, :], mask=msk, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod, mask=msk, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                         stride_qt, stride_qd, stride_dot, stride_dod,
                         offs_n, offs_d, D, Tq, qk_scale, lo, hi,
                         MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, PREC: tl.constexpr):
    """Accumulate dK, dV of one key tile over query tiles [lo, hi); transposed: rows = keys."""
    offs_m0 = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        m_ok = offs_m < Tq
        ld = m_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd, mask=ld, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod, mask=ld, other=0.0)
        lse2 = tl.load(lse_base + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
        sT = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        pT = tl.math.exp2(sT - lse2[None, :])
        if MASK:
            ok = m_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_m[None, :] >= offs_n[:, None])
            pT = tl.where(ok, pT, 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, sm_scale,
                   stride_qb, stride_qh, stride_qt, stride_qd,
                   stride_kb, stride_kh, stride_kt, stride_kd,
                   stride_vb, stride_vh, stride_vt, stride_vd,
                   stride_dob, stride_doh, stride_dot, stride_dod,
                   H, Tq, Tk, D,
                   CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Tk
    d_ok = offs_d < D
    ld = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
                + offs_n[:, None] * stride_kt + offs_d[None, :] * stride_kd, mask=ld, other=0.0)
    v = tl.load(V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
                + offs_n[:, None] * stride_vt + offs_d[None, :] * stride_vd, mask=ld, other=0.0)
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    lse_base = LSE + bh.to(tl.int64) * Tq
    delta_base = DELTA + bh.to(tl.int64) * Tq
    qk_scale = sm_scale * 1.4426950408889634

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    q_full = (Tq // BLOCK_M) * BLOCK_M  # query tiles below this need no tail mask
    if CAUSAL:
        # query tiles straddling this key tile's diagonal: [diag_lo, diag_hi), masked
        diag_lo = (start_n // BLOCK_M) * BLOCK_M
        diag_hi = tl.cdiv(start_n + BLOCK_N, BLOCK_M) * BLOCK_M
    else:
        diag_lo = 0
        diag_hi = 0
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                  stride_qt, stride_qd, stride_dot, stride_dod,
                                  offs_n, offs_d, D, Tq, qk_scale, diag_lo, tl.minimum(diag_hi, Tq),
                                  True, CAUSAL, BLOCK_M, PREC)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                  stride_qt, stride_qd, stride_dot, stride_dod,
                                  offs_n, offs_d, D, Tq, qk_scale, diag_hi, q_full,
                                  False, CAUSAL, BLOCK_M, PREC)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                  stride_qt, stride_qd, stride_dot, stride_dod,
                                  offs_n, offs_d, D, Tq, qk_scale, tl.maximum(diag_hi, q_full), Tq,
                                  True, CAUSAL, BLOCK_M, PREC)
    dk = dk * sm_scale
    out_off = bh.to(tl.int64) * Tk * D + offs_n[:, None] * D + offs_d[None, :]
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=ld)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=ld)


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                       offs_m, offs_d, D, Tk, qk_scale, lo, hi,
                       MASK: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """Accumulate dQ of one query tile over key tiles [lo, hi)."""
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        n_ok = offs_n < Tk
        ldT = d_ok[:, None] & n_ok[None, :]
        kT = tl.load(k_base + offs_n[None, :] * stride_kt + offs_d[:, None] * stride_kd, mask=ldT, other=0.0)
        vT = tl.load(v_base + offs_n[None, :] * stride_vt + offs_d[:, None] * stride_vd, mask=ldT, other=0.0)
        s = tl.dot(q, kT, input_precision=PREC) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        if MASK:
            ok = n_ok[None, :]
            if CAUSAL:
                ok = ok & (offs_m[:, None] >= offs_n[None, :])
            p = tl.where(ok, p, 0.0)
        dp = tl.dot(do, vT, input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PREC)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, sm_scale,
                 stride_qb, stride_qh, stride_qt, stride_qd,
                 stride_kb, stride_kh, stride_kt, stride_kd,
                 stride_vb, stride_vh, stride_vt, stride_vd,
                 stride_dob, stride_doh, stride_dot, stride_dod,
                 H, Tq, Tk, D,
                 CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Tq
    ld = m_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
                + offs_m[:, None] * stride_qt + offs_d[None, :] * stride_qd, mask=ld, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
                 + offs_m[:, None] * stride_dot + offs_d[None, :] * stride_dod, mask=ld, other=0.0)
    lse2 = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=m_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=m_ok, other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    qk_scale = sm_scale * 1.4426950408889634

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if CAUSAL:
        full_hi = start_m
        mask_lo = start_m
        mask_hi = tl.minimum(start_m + BLOCK_M, Tk)
    else:
        full_hi = (Tk // BLOCK_N) * BLOCK_N
        mask_lo = full_hi
        mask_hi = Tk
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                            offs_m, offs_d, D, Tk, qk_scale, 0, full_hi, False, CAUSAL, BLOCK_N, PREC)
    dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kt, stride_kd, stride_vt, stride_vd,
                            offs_m, offs_d, D, Tk, qk_scale, mask_lo, mask_hi, True, CAUSAL, BLOCK_N, PREC)
    dq = dq * sm_scale
    tl.store(DQ + bh.to(tl.int64) * Tq * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=ld)


# The autotuned versions of the three matmul kernels (the plain jit functions run the fixed configs).
_attn_fwd_tuned = triton.autotune(configs=_tune_configs("fwd"), key=_KEY,
                                  prune_configs_by={"early_config_prune": _budget_prune("fwd")})(_attn_fwd)
_attn_bwd_dkdv_tuned = triton.autotune(configs=_tune_configs("dkdv"), key=_KEY,
                                       prune_configs_by={"early_config_prune": _budget_prune("dkdv")})(_attn_bwd_dkdv)
_attn_bwd_dq_tuned = triton.autotune(configs=_tune_configs("dq"), key=_KEY,
                                     prune_configs_by={"early_config_prune": _budget_prune("dq")})(_attn_bwd_dq)


# -- host side --------------------------------------------------------------------------------------


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _prec(dtype):
    # fp32: exact IEEE products (no TF32) so fp32 keeps parity with the float64 reference
    return "ieee" if dtype == torch.float32 else None


def _check(q, k, v, causal, scale):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"triton attention: q, k, v must be 4-D (B, H, T, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in _DTYPES or not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"triton attention: q, k, v must share one dtype of float16, bfloat16, float32; "
                         f"got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, Tq, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"triton attention: k, v must be (B={B}, H={H}, Tk, D={D}); got {tuple(k.shape)}, {tuple(v.shape)}")
    if D > _MAX_D:
        raise ValueError(f"triton attention: head dim D={D} exceeds the Triton kernel's maximum of {_MAX_D}")
    if causal and Tq != k.shape[2]:
        raise ValueError(f"triton attention: causal attention needs Tq == Tk, got Tq={Tq}, Tk={k.shape[2]}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"triton attention: scale must be a finite positive number, got {scale}")


@torch.library.custom_op("pygpt::triton_attention_fwd", mutates_args=())
def triton_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Tq, D) contiguous in q's dtype, lse (B, H, Tq) float32)."""
    _check(q, k, v, causal, scale)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    out = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out.zero_(), lse.fill_(float("-inf"))
    if Tk == 0:  # softmax over no keys: the reference gives an empty sum, 0
        return out.zero_(), lse.fill_(float("-inf"))
    grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch("fwd", _attn_fwd, _attn_fwd_tuned, grid,
            (q, k, v, out, lse, scale, *q.stride(), *k.stride(), *v.stride(), H, Tq, Tk, D),
            _block_d(D), CAUSAL=causal, PREC=_prec(q.dtype))
    return out, lse


@triton_attention_fwd.register_fake
def _(q, k, v, causal, scale):
    B, H, Tq, D = q.shape
    return q.new_empty((B, H, Tq, D)), q.new_empty((B, H, Tq), dtype=torch.float32)


@torch.library.custom_op("pygpt::triton_attention_bwd", mutates_args=())
def triton_attention_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         out: torch.Tensor, lse: torch.Tensor, causal: bool,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), contiguous, in q's dtype."""
    _check(q, k, v, causal, scale)
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    if grad_out.shape != out.shape or out.shape != (B, H, Tq, D):
        raise ValueError(f"triton attention backward: grad_out and out must have shape {(B, H, Tq, D)}, "
                         f"got {tuple(grad_out.shape)}, {tuple(out.shape)}")
    if lse.shape != (B, H, Tq) or lse.dtype != torch.float32:
        raise ValueError(f"triton attention backward: lse must be float32 of shape {(B, H, Tq)}, "
                         f"got {lse.dtype} {tuple(lse.shape)}")
    dq = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, Tk, D), dtype=q.dtype, device=q.device)
    dv = torch.empty((B, H, Tk, D), dtype=q.dtype, device=q.device)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    out = out.contiguous()
    lse = lse.contiguous()
    grad_out = grad_out.to(q.dtype)
    block_d = _block_d(D)
    prec = _prec(q.dtype)
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    pre_m = 32 if _INTERPRET else 64
    _attn_bwd_preprocess[(triton.cdiv(Tq, pre_m), B * H)](
        out, grad_out, delta, *grad_out.stride(), H, Tq, D, BLOCK_M=pre_m, BLOCK_D=block_d)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    grid_kv = lambda meta: (triton.cdiv(Tk, meta["BLOCK_N"]), B * H)  # noqa: E731
    _launch("dkdv", _attn_bwd_dkdv, _attn_bwd_dkdv_tuned, grid_kv,
            (q, k, v, grad_out, lse, delta, dk, dv, scale, *strides, H, Tq, Tk, D),
            block_d, CAUSAL=causal, PREC=prec)
    grid_q = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch("dq", _attn_bwd_dq, _attn_bwd_dq_tuned, grid_q,
            (q, k, v, grad_out, lse, delta, dq, scale, *strides, H, Tq, Tk, D),
            block_d, CAUSAL=causal, PREC=prec)
    return dq, dk, dv


@triton_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    # lse is an auxiliary output for the backward; nothing upstream differentiates through it
    dq, dk, dv = triton_attention_bwd(grad_out, q, k, v, out, lse, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None


triton_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def attention(q, k, v, causal: bool, scale: float, dropout_p: float = 0.0):
    """Differentiable fused attention of q (B, H, Tq, D) over k, v (B, H, Tk, D); returns out (B, H, Tq, D)."""
    if dropout_p > 0.0:
        raise ValueError(f"triton attention: dropout is not supported (dropout_p={dropout_p}); use dropout 0")
    out, _lse = triton_attention_fwd(q, k, v, bool(causal), float(scale))
    return out
