"""gelu_mlp(x, w_fc, b_fc, w_proj, b_proj): the transformer's feed-forward network.

    pre = x @ w_fc.T + b_fc          (..., C) -> (..., 4C)   the "up" projection
    out = gelu(pre) @ w_proj.T + b_proj  (..., 4C) -> (..., C)   the "down" projection

Weights are in nn.Linear layout (out_features, in_features). approximate='tanh' is GPT-2's GELU,
0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); approximate='none' is the exact x·Φ(x).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _ext
from ._backends import FUSED, autocast_inputs, autocast_off, resolve

APPROXIMATE = ("tanh", "none")


def gelu_mlp_reference(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh"):
    return F.linear(F.gelu(F.linear(x, w_fc, b_fc), approximate=approximate), w_proj, b_proj)


def check_gelu_mlp_args(x, w_fc, b_fc, w_proj, b_proj, approximate):
    if approximate not in APPROXIMATE:
        raise ValueError(f"gelu_mlp: approximate must be 'tanh' or 'none', got {approximate!r}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"gelu_mlp: x must be a tensor with at least 1 dim, got {getattr(x, 'shape', type(x).__name__)}")
    C = x.size(-1)
    if not isinstance(w_fc, torch.Tensor) or w_fc.dim() != 2 or w_fc.size(1) != C:
        raise ValueError(f"gelu_mlp: w_fc must be (hidden, {C}), got {getattr(w_fc, 'shape', w_fc)}")
    Hd = w_fc.size(0)
    if not isinstance(w_proj, torch.Tensor) or tuple(w_proj.shape) != (C, Hd):
        raise ValueError(f"gelu_mlp: w_proj must be ({C}, {Hd}), got {getattr(w_proj, 'shape', w_proj)}")
    for name, b, n in (("b_fc", b_fc, Hd), ("b_proj", b_proj, C)):
        if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (n,)):
            raise ValueError(f"gelu_mlp: {name} must be ({n},) or None, got {getattr(b, 'shape', b)}")
    for name, t in (("w_fc", w_fc), ("b_fc", b_fc), ("w_proj", w_proj), ("b_proj", b_proj)):
        if t is not None and (t.device != x.device or t.dtype != x.dtype):
            raise ValueError(f"gelu_mlp: {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")


def gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate="tanh", backend="eager"):
    """linear(gelu(linear(x, w_fc, b_fc)), w_proj, b_proj) with weights in nn.Linear layout."""
    check_gelu_mlp_args(x, w_fc, b_fc, w_proj, b_proj, approximate)
    backend = resolve("gelu_mlp", backend, x.device)
    if backend in FUSED:  # under autocast, run in its dtype as F.linear would
        x, w_fc, b_fc, w_proj, b_proj = autocast_inputs(x.device.type, x, w_fc, b_fc, w_proj, b_proj)
    if backend == "eager":
        return gelu_mlp_reference(x, w_fc, b_fc, w_proj, b_proj, approximate)
    with autocast_off(x.device.type):
        if backend == "triton":
            from ..triton.gelu_mlp import gelu_mlp as triton_gelu_mlp

            return triton_gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate)
        return fused_gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate)


def fused_gelu_mlp(x, w_fc, b_fc, w_proj, b_proj, approximate: str):
    """The extension's op (CPU or CUDA kernel by dispatch key), differentiable."""
    out, _pre = torch.ops.pygpt.gelu_mlp_fwd(x, w_fc, b_fc, w_proj, b_proj, approximate)
    return out


if _ext.loaded():

    @torch.library.register_fake("pygpt::gelu_mlp_fwd")
    def _gelu_mlp_fwd_fake(x, w_fc, b_fc, w_proj, b_proj, approximate):
        lead = tuple(x.shape[:-1])
        return x.new_empty(lead + (w_proj.size(0),)), x.new_empty(lead + (w_fc.size(0),))

    @torch.library.register_fake("pygpt::gelu_mlp_bwd")
    def _gelu_mlp_bwd_fake(grad_out, x, pre, w_fc, w_proj, approximate):
        return (
            x.new_empty(x.shape),
            w_fc.new_empty(w_fc.shape),
            w_fc.new_empty((w_fc.size(0),)),
            w_proj.new_empty(w_proj.shape),
            w_proj.new_empty((w_proj.size(0),)),
        )

    def _gelu_mlp_setup(ctx, inputs, output):
        x, w_fc, b_fc, w_proj, b_proj, approximate = inputs
        _out, pre = output
        ctx.approximate = approximate
        ctx.has_b_fc, ctx.has_b_proj = b_fc is not None, b_proj is not None
        ctx.save_for_backward(x, pre, w_fc, w_proj)  # the pre-activation is stored, not recomputed

    def _gelu_mlp_backward(ctx, grad_out, _grad_pre):
        x, pre, w_fc, w_proj = ctx.saved_tensors
        dx, dw_fc, db_fc, dw_proj, db_proj = torch.ops.pygpt.gelu_mlp_bwd(
            grad_out.contiguous(), x, pre, w_fc, w_proj, ctx.approximate
        )
        return dx, dw_fc, (db_fc if ctx.has_b_fc else None), dw_proj, (db_proj if ctx.has_b_proj else None), None

    torch.library.register_autograd("pygpt::gelu_mlp_fwd", _gelu_mlp_backward, setup_context=_gelu_mlp_setup)
