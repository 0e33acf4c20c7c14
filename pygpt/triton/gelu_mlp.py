"""
Fused GELU MLP in Triton
========================

The transformer's feed-forward block, weights in nn.Linear layout (w_fc (Hd, C), w_proj (C, Hd)):

    pre = x @ w_fc.T + b_fc            (M, C)  -> (M, Hd)    up-projection
    act = gelu(pre)                                           'tanh' (GPT-2) or 'none' (exact erf)
    out = act @ w_proj.T + b_proj      (M, Hd) -> (M, C)     down-projection

with M = rows of x flattened over its leading dims. Every matmul, forward and backward, runs on ONE
tiled Triton kernel, ``_matmul_kernel``, which computes

    C[M, N] = prologue(A[M, K]) @ prologue(B[K, N])  (+ bias[N])  -> epilogue  -> C

The kernel
----------
Each program owns one BLOCK_M x BLOCK_N tile of C and walks K in BLOCK_K steps, accumulating in a
float32 register tile (float64 for float64 inputs) with ``tl.dot``. Every operand is addressed by
(pointer, stride, stride), so a transposed operand (w_fc.T, dout.T, dpre.T, a strided x) is just
swapped strides and is never copied:

    A[i, k] at a_ptr + i * stride_am + k * stride_ak
    B[k, j] at b_ptr + k * stride_bk + j * stride_bn
    C[i, j] at c_ptr + i * stride_cm + j * stride_cn

Program ids are mapped to tiles in GROUP_M-row super-groups (Triton tutorial 03, "L2 cache
optimizations"): consecutive programs sweep a GROUP_M-tall band of C column by column, so the A rows
and B columns they share stay in L2:

    pid_m = first_pid_m + (pid % (GROUP_M * num_pid_n)) % group_size_m
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size_m

Edges are masked, so any M, N, K >= 1 work: loads outside [0, M) x [0, K) / [0, K) x [0, N) read 0,
and the store is masked to [0, M) x [0, N).

Fusion, chosen by constexpr flags:

    HAS_BIAS        epilogue: acc += bias[j]                                (fp32, before GELU)
    EPILOGUE = 1    epilogue: store pre = acc to AUX (rounded to the output dtype), then
                    C = gelu(rounded pre): the activation is computed from the *stored* pre, so the
                    backward, which only sees pre, differentiates exactly what the forward used
    EPILOGUE = 2    epilogue: C = acc * gelu'(AUX[i, j]) with AUX = pre: the grad-input matmul
                    dact = dout @ w_proj becomes dpre in one pass; dact is never stored
    GELU_B          prologue: the B tile is loaded from pre and replaced by gelu(pre) before the dot,
                    so dW_proj = dout.T @ gelu(pre) needs no stored activation

The passes (torch = plain torch op, everything else is ``_matmul_kernel``):

    forward   pre, act = x @ w_fc.T + b_fc, GELU        HAS_BIAS, EPILOGUE=1 (stores pre AND act)
              out      = act @ w_proj.T + b_proj        HAS_BIAS             (same kernel)
    backward  dpre     = (dout @ w_proj) * gelu'(pre)   EPILOGUE=2
              dW_proj  = dout.T @ gelu(pre)             GELU_B (act recomputed in the prologue)
              dW_fc    = dpre.T @ x
              dx       = dpre @ w_fc
              db_fc    = dpre.sum(0), db_proj = dout.sum(0)    torch (fp32 accumulation)

What is stored for the backward: x, the weights and pre (M x Hd, x's dtype). act is written by the
forward's up-projection (the down-projection reads it) but freed when the forward returns; the
backward recomputes gelu(pre) in the dW_proj prologue (once per N-tile of C: C / BLOCK_N times per
element, elementwise work next to a 2*M*C*Hd-flop product).

GELU math (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64):
    tanh:  0.5 (1 + tanh u) = sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3);
           gelu = x s, gelu' = s + 2 x s (1 - s) u'   (s = 1 / (1 + exp(-2u)); no tanh needed,
           exp overflow to inf gives s = 0, the right limit)
    none:  gelu = 0.5 x (1 + erf(x / sqrt 2)) with tl.math.erf, gelu' = Phi(x) + x exp(-x^2/2)/sqrt(2 pi)

Precision: fp32 inputs use tl.dot(input_precision="ieee") (no TF32), so fp32 parity holds; fp16 /
bf16 use the tensor cores with fp32 accumulation; pre, act, dpre are rounded to x's dtype once, like
the eager chain rounds them. Under TRITON_INTERPRET=1, bf16 tiles are upcast to fp32 before the dot
(the interpreter's bf16 dot is wrong in Triton 3.8/3.9) and fp32 -> bf16 casts are rounded to
nearest even by hand (the interpreter's cast truncates); on the GPU neither is done.

Limits: offsets are int32 (every operand must have < 2**31 elements); dtypes fp16, bf16, fp32, fp64
(fp64 needs tl.dot fp64 support on the GPU); db_fc / db_proj are torch reductions, not fused
(a fused atomic column sum would make them non-deterministic); autotuning is keyed on (M, N, K) and
the dtypes, so a new shape pays one benchmarking round.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from torch import Tensor

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# PYGPT_TRITON_AUTOTUNE=0: one config (64 x 64 x 32, the smallest), no tuning round per new (M, N, K)
AUTOTUNE = os.environ.get("PYGPT_TRITON_AUTOTUNE", "1") != "0"

# A100/H100 configs (fp16/bf16 tensor cores; fp32 'ieee' runs on FMA units and prefers fewer stages).
if INTERPRET:
    _CONFIGS = [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=1)]
else:
    _CONFIGS = [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=3),
    ]
    if not AUTOTUNE:
        _CONFIGS = _CONFIGS[-1:]

_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_INV_SQRT_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _gelu(x, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        s = 1.0 / (1.0 + tl.exp(-2.0 * u))  # 0.5 (1 + tanh u)
        return x * s
    else:
        return 0.5 * x * (1.0 + tl.math.erf(x * _INV_SQRT_2))


@triton.jit
def _gelu_grad(x, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        u = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
        du = _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        s = 1.0 / (1.0 + tl.exp(-2.0 * u))
        return s + 2.0 * x * s * (1.0 - s) * du
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(x * _INV_SQRT_2))
        return cdf + x * _INV_SQRT_2PI * tl.exp(-0.5 * x * x)


@triton.jit
def _cast(x, ty: tl.constexpr, RNE_BF16: tl.constexpr):
    """x (fp32/fp64) -> ty. RNE_BF16 (interpreter only): the interpreter's fp32 -> bf16 cast
    truncates, so round to nearest even by hand first; the cast then is exact."""
    if RNE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(ty)


@triton.autotune(configs=_CONFIGS, key=["M", "N", "K"])
@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, aux_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, stride_xm, stride_xn,
    HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, GELU_B: tl.constexpr, APPROX_TANH: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # -- grouped ordering: which (pid_m, pid_n) tile of C this program owns
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    # -- main loop: acc += A[:, k:k+BK] @ B[k:k+BK, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & mask_n[None, :], other=0.0)
        if GELU_B:  # prologue: B holds pre, the dot needs gelu(pre) (rounded like the forward's act)
            b = _cast(_gelu(b.to(ACC_DTYPE), APPROX_TANH), b_ptr.dtype.element_ty, UPCAST)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    # -- epilogue
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(ACC_DTYPE)
        acc += bias[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    out_ty = c_ptr.dtype.element_ty
    aux_ptrs = aux_ptr + offs_m[:, None] * stride_xm + offs_n[None, :] * stride_xn
    if EPILOGUE == 1:  # store pre, continue from the rounded value the backward will see
        pre = _cast(acc, out_ty, UPCAST)
        tl.store(aux_ptrs, pre, mask=mask)
        acc = _gelu(pre.to(ACC_DTYPE), APPROX_TANH)
    elif EPILOGUE == 2:  # dpre = dact * gelu'(pre)
        pre = tl.load(aux_ptrs, mask=mask, other=0.0).to(ACC_DTYPE)
        acc = acc * _gelu_grad(pre, APPROX_TANH)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, _cast(acc, out_ty, UPCAST), mask=mask)


def _mm(a: Tensor, b: Tensor, out: Tensor, *, bias=None, aux=None, epilogue=0, gelu_b=False, approximate="tanh"):
    """out[M, N] = a[M, K] @ b[K, N] with the fusions above; any strides, no copies."""
    M, K = a.shape
    N = b.shape[1]
    assert b.shape[0] == K and tuple(out.shape) == (M, N)
    if M == 0 or N == 0:
        return out
    if K == 0:  # empty sum: the kernel's loop does not run; keep the epilogue semantics simple
        raise ValueError("gelu_mlp (triton): K must be >= 1")
    dtype = a.dtype
    dot_prec = "ieee" if dtype in (torch.float32, torch.float64) else "tf32"  # ignored for 16-bit inputs
    upcast = INTERPRET and dtype == torch.bfloat16
    if upcast:
        dot_prec = "ieee"
    acc_dtype = tl.float64 if dtype == torch.float64 else tl.float32
    aux_t = aux if aux is not None else out
    bias_t = bias if bias is not None else out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _matmul_kernel[grid](
        a, b, out, bias_t, aux_t,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        aux_t.stride(0), aux_t.stride(1),
        HAS_BIAS=bias is not None, EPILOGUE=epilogue, GELU_B=gelu_b, APPROX_TANH=approximate == "tanh",
        DOT_PREC=dot_prec, UPCAST=upcast, ACC_DTYPE=acc_dtype,
    )
    return out


# --------------------------------------------------------------------------------------- custom ops


@torch.library.custom_op("pygpt::triton_gelu_mlp_fwd", mutates_args=())
def gelu_mlp_fwd(
    x: Tensor, w_fc: Tensor, b_fc: Optional[Tensor], w_proj: Tensor, b_proj: Optional[Tensor], approximate: str
) -> tuple[Tensor, Tensor]:
    lead, C, Hd = tuple(x.shape[:-1]), x.shape[-1], w_fc.shape[0]
    x2 = x.reshape(-1, C)  # a view when the leading dims merge; strides go to the kernel
    M = x2.shape[0]
    pre = x.new_empty((M, Hd))
    act = x.new_empty((M, Hd))  # temporary: read by the down-projection, not saved
    out = x.new_empty((M, C))
    if M > 0:
        _mm(x2, w_fc.t(), act, bias=b_fc, aux=pre, epilogue=1, approximate=approximate)
        _mm(act, w_proj.t(), out, bias=b_proj)
    return out.reshape(lead + (C,)), pre.reshape(lead + (Hd,))


@gelu_mlp_fwd.register_fake
def _(x, w_fc, b_fc, w_proj, b_proj, approximate):
    lead = tuple(x.shape[:-1])
    return x.new_empty(lead + (w_proj.shape[0],)), x.new_empty(lead + (w_fc.shape[0],))


@torch.library.custom_op("pygpt::triton_gelu_mlp_bwd", mutates_args=())
def gelu_mlp_bwd(
    grad_out: Tensor, x: Tensor, pre: Tensor, w_fc: Tensor, w_proj: Tensor, approximate: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    C, Hd = x.shape[-1], w_fc.shape[0]
    x2, pre2, dout = x.reshape(-1, C), pre.reshape(-1, Hd), grad_out.reshape(-1, C)
    M = x2.shape[0]
    dx = x.new_empty((M, C))
    dw_fc = w_fc.new_empty((Hd, C))
    dw_proj = w_proj.new_empty((C, Hd))
    if M == 0:
        dw_fc.zero_(), dw_proj.zero_()
        return dx.reshape(x.shape), dw_fc, w_fc.new_zeros((Hd,)), dw_proj, w_proj.new_zeros((C,))
    dpre = x.new_empty((M, Hd))
    _mm(dout, w_proj, dpre, aux=pre2, epilogue=2, approximate=approximate)  # dact * gelu'(pre)
    _mm(dout.t(), pre2, dw_proj, gelu_b=True, approximate=approximate)  # dout^T @ gelu(pre)
    _mm(dpre.t(), x2, dw_fc)
    _mm(dpre, w_fc, dx)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    db_fc = dpre.sum(0, dtype=acc).to(x.dtype)
    db_proj = dout.sum(0, dtype=acc).to(x.dtype)
    return dx.reshape(x.shape), dw_fc, db_fc, dw_proj, db_proj


@gelu_mlp_bwd.register_fake
def _(grad_out, x, pre, w_fc, w_proj, approximate):
    return (
        x.new_empty(x.shape),
        w_fc.new_empty(w_fc.shape),
        w_fc.new_empty((w_fc.shape[0],)),
        w_proj.new_empty(w_proj.shape),
        w_proj.new_empty((w_proj.shape[0],)),
    )


def _setup_context(ctx, inputs, output):
    x, w_fc, b_fc, w_proj, b_proj, approximate = inputs
    _out, pre = output
    ctx.approximate = approximate
    ctx.has_b_fc, ctx.has_b_proj = b_fc is not None, b_proj is not None
    ctx.save_for_backward(x, pre, w_fc, w_proj)  # pre is stored; act is recomputed in the backward


def _backward(ctx, grad_out, _grad_pre):
    x, pre, w_fc, w_proj = ctx.saved_tensors
    dx, dw_fc, db_fc, dw_proj, db_proj = gelu_mlp_bwd(grad_out, x, pre, w_fc, w_proj, ctx.approximate)
    return dx, dw_fc, (db_fc if ctx.has_b_fc else None), dw_proj, (db_proj if ctx.has_b_proj else None), None


gelu_mlp_fwd.register_autograd(_backward, setup_context=_setup_context)


def gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    """linear(gelu(linear(x, w_fc, b_fc)), w_proj, b_proj) on the Triton kernels; differentiable."""
    out, _pre = gelu_mlp_fwd(x, w_fc, b_fc, w_proj, b_proj, approximate)
    return out
