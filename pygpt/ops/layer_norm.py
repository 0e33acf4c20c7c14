"""layer_norm(x, weight, bias, residual=None): LayerNorm over the last dim, with the residual add fused.

In a pre-LN transformer block every LayerNorm directly follows a residual add:

    x = x + sublayer_out          # the residual stream
    h = LayerNorm(x)              # the next sublayer's input

`layer_norm(sublayer_out, w, b, residual=x)` returns `(LN(sublayer_out + x), sublayer_out + x)`,
one pass over memory instead of two. Without `residual` it returns just `LN(x)`.
"""

from __future__ import annotations

import math

import torch

from .. import _ext
from ._backends import autocast_off, resolve


def layer_norm_reference(x, weight, bias=None, eps=1e-5, residual=None):
    """The lecture's LayerNorm: normalise each row to zero mean and unit variance, then scale and shift."""
    h = x + residual if residual is not None else x
    mean = h.mean(-1, keepdim=True)
    var = h.var(-1, keepdim=True, unbiased=False)  # biased variance, as nn.LayerNorm
    y = (h - mean) / torch.sqrt(var + eps) * weight
    if bias is not None:
        y = y + bias
    return (y, h) if residual is not None else y


def check_layer_norm_args(x, weight, bias, eps, residual):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"layer_norm: x must be a tensor with at least 1 dim, got {getattr(x, 'shape', type(x).__name__)}")
    C = x.size(-1)
    if C == 0:
        raise ValueError("layer_norm: the normalised (last) dim of x has size 0")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None and name == "bias":
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (C,):
            raise ValueError(f"layer_norm: {name} must have shape ({C},), got {getattr(t, 'shape', t)}")
        if t.device != x.device:
            raise ValueError(f"layer_norm: {name} is on {t.device}, x on {x.device}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor) or residual.shape != x.shape:
            raise ValueError(f"layer_norm: residual must have x's shape {tuple(x.shape)}, got {getattr(residual, 'shape', residual)}")
        if residual.dtype != x.dtype or residual.device != x.device:
            raise ValueError(f"layer_norm: residual is {residual.dtype} on {residual.device}, x is {x.dtype} on {x.device}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"layer_norm: eps must be a finite positive number, got {eps}")


def layer_norm(x, weight, bias=None, eps=1e-5, residual=None, backend="eager"):
    """LayerNorm over the last dim; with `residual`, returns (LN(x + residual), x + residual)."""
    check_layer_norm_args(x, weight, bias, eps, residual)
    backend = resolve("layer_norm", backend, x.device)
    if backend == "eager":
        return layer_norm_reference(x, weight, bias, eps, residual)
    with autocast_off(x.device.type):  # autocast runs LayerNorm in the inputs' own (fp32) dtype too
        if backend == "triton":
            from ..triton.layer_norm import layer_norm as triton_layer_norm

            return triton_layer_norm(x, weight, bias, eps, residual)
        return fused_layer_norm(x, weight, bias, float(eps), residual)


def fused_layer_norm(x, weight, bias, eps: float, residual=None):
    """The extension's op (CPU or CUDA kernel by dispatch key), differentiable."""
    y, h, _mean, _rstd = torch.ops.pygpt.layer_norm_fwd(x, residual, weight, bias, eps)
    return (y, h) if residual is not None else y


if _ext.loaded():

    @torch.library.register_fake("pygpt::layer_norm_fwd")
    def _layer_norm_fwd_fake(x, residual, weight, bias, eps):
        C = x.size(-1)
        n_rows = x.numel() // C if C else 0
        stat = torch.float64 if x.dtype == torch.float64 else torch.float32
        h = x.new_empty(x.shape) if residual is not None else x.new_empty((0,))
        return x.new_empty(x.shape), h, x.new_empty((n_rows,), dtype=stat), x.new_empty((n_rows,), dtype=stat)

    @torch.library.register_fake("pygpt::layer_norm_bwd")
    def _layer_norm_bwd_fake(grad_y, grad_h, h, weight, mean, rstd):
        return h.new_empty(h.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)

    def _layer_norm_setup(ctx, inputs, output):
        x, residual, weight, bias, eps = inputs
        _y, h, mean, rstd = output
        ctx.has_residual, ctx.has_bias = residual is not None, bias is not None
        # the backward needs the normalised input: x + residual (an output) or x itself
        ctx.save_for_backward(h if residual is not None else x, weight, mean, rstd)

    def _layer_norm_backward(ctx, grad_y, grad_h, _grad_mean, _grad_rstd):
        h, weight, mean, rstd = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(h)
        grad_h = grad_h if ctx.has_residual else None
        dx, dw, db = torch.ops.pygpt.layer_norm_bwd(grad_y.contiguous(), grad_h, h, weight, mean, rstd)
        # h = x + residual, so both receive the same gradient
        return dx, (dx if ctx.has_residual else None), dw, (db if ctx.has_bias else None), None

    torch.library.register_autograd("pygpt::layer_norm_fwd", _layer_norm_backward, setup_context=_layer_norm_setup)
