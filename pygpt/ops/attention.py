"""attention(q, k, v): softmax(q·kᵀ·scale, masked) · v on (B, H, T, D) tensors.

Three layers in one file, as every op in pygpt/ops:
  1. `attention_reference` — the lecture's math in plain PyTorch: the parity baseline.
  2. The custom op `torch.ops.pygpt.attention_fwd/bwd` (schemas in csrc/pygpt.cpp, kernels per
     device in csrc/), given a fake (meta) function so torch.compile can trace it, and autograd.
  3. `attention(...)`: checks its arguments and dispatches to a backend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import _ext
from ._backends import FUSED, autocast_dtype, autocast_inputs, autocast_off, resolve


CUDA_MAX_HEAD_DIM = 128  # kernels/attention.cuh: D in {32, 64, 128}, others <= 128 zero-padded


def attention_reference(q, k, v, causal=True, dropout_p=0.0, scale=None):
    """Scaled dot-product attention exactly as the lecture writes it (materialises the T×T matrix)."""
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk): how much query i attends to key j
    if causal:
        # query i may look at keys 0..i only: fill the future with -inf so softmax gives it 0
        Tq, Tk = q.size(-2), k.size(-2)
        mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
    att = F.softmax(att, dim=-1)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p, training=True)
    return att @ v


def check_attention_args(q, k, v, causal, dropout_p, scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, T, D), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    (B, H, Tq, D), (Bk, Hk, Tk, Dk) = q.shape, k.shape
    if (Bk, Hk, Dk) != (B, H, D) or k.shape != v.shape:
        raise ValueError(
            f"attention: k and v must be (B={B}, H={H}, Tk, D={D}) like q; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if causal and Tq != Tk:
        raise ValueError(f"attention: causal attention needs Tq == Tk, got Tq={Tq}, Tk={Tk}")
    if not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"attention: scale must be a finite positive number, got {scale}")


def attention(q, k, v, causal=True, dropout_p=0.0, scale=None, backend="eager"):
    """Attention of queries q (B, H, Tq, D) over keys k and values v (B, H, Tk, D).

    causal=True masks the future (needs Tq == Tk); causal=False allows Tq != Tk (cross-attention).
    scale defaults to 1/sqrt(D). dropout_p drops attention probabilities (pass 0 in eval).
    """
    check_attention_args(q, k, v, causal, dropout_p, scale)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    requested = backend
    backend = resolve("attention", backend, q.device, autocast_dtype(q.device.type, q.dtype))
    if backend == "cuda" and requested == "auto" and q.size(-1) > CUDA_MAX_HEAD_DIM:
        # the CUDA kernel stops at D = 128 (register tiles); Triton's goes to 256
        backend = resolve("attention", "triton", q.device, autocast_dtype(q.device.type, q.dtype))
    if backend in FUSED:
        q, k, v = autocast_inputs(q.device.type, q, k, v)
    if backend == "eager":
        return attention_reference(q, k, v, causal, dropout_p, scale)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
    if dropout_p > 0.0:
        raise ValueError(f"attention: backend {backend!r} does not implement dropout yet (dropout_p={dropout_p}); use dropout 0")
    with autocast_off(q.device.type):
        if backend == "triton":
            from ..triton.attention import attention as triton_attention

            return triton_attention(q, k, v, causal, scale)
        return fused_attention(q, k, v, causal, scale)


def fused_attention(q, k, v, causal: bool, scale: float):
    """The extension's op (CPU or CUDA kernel by dispatch key), differentiable."""
    out, _lse = torch.ops.pygpt.attention_fwd(q, k, v, causal, scale)
    return out


def _stat_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


if _ext.loaded():

    @torch.library.register_fake("pygpt::attention_fwd")
    def _attention_fwd_fake(q, k, v, causal, scale):
        B, H, Tq, D = q.shape
        return q.new_empty((B, H, Tq, D)), q.new_empty((B, H, Tq), dtype=_stat_dtype(q.dtype))

    @torch.library.register_fake("pygpt::attention_bwd")
    def _attention_bwd_fake(grad_out, q, k, v, out, lse, causal, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    def _attention_setup(ctx, inputs, output):
        q, k, v, causal, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale

    def _attention_backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        # lse is an auxiliary output for the backward; nothing upstream differentiates through it
        dq, dk, dv = torch.ops.pygpt.attention_bwd(grad_out.contiguous(), q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None

    torch.library.register_autograd("pygpt::attention_fwd", _attention_backward, setup_context=_attention_setup)
