"""Parity of the Triton flash-attention kernel (pygpt/triton/attention.py), forward and dq/dk/dv.

Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (slow: the shapes are kept small). bf16 is only
tested on CUDA: the Triton 3.8/3.9 interpreter returns garbage for tl.dot on bf16.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)

from pygpt import ops  # noqa: E402
from pygpt.ops.attention import attention_reference  # noqa: E402

from kernel_parity import assert_parity, poisoned_empty, randn, ref_dtype  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def check(q, k, v, causal, gen):
    """Forward and dq/dk/dv of the triton backend against the high-precision reference."""
    scale = 1.0 / math.sqrt(q.size(-1))
    dout = randn(*q.shape[:-1], v.size(-1), dtype=q.dtype, device=q.device, gen=gen)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]  # keeps the caller's strides
    hi = [t.detach().to(ref_dtype(q.dtype)).requires_grad_() for t in (q, k, v)]
    lowp = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    with poisoned_empty():
        out = ops.attention(*leaves, causal=causal, scale=scale, backend="triton")
        out.backward(dout)
    ref = attention_reference(*hi, causal=causal, scale=scale)
    ref.backward(dout.to(ref.dtype))
    low = attention_reference(*lowp, causal=causal, scale=scale)
    low.backward(dout)

    assert out.dtype == q.dtype and out.is_contiguous()
    assert_parity("out", out, ref, low, 2)
    for name, a, r, lo in zip(("dq", "dk", "dv"), leaves, hi, lowp):
        assert a.grad.stride() == a.stride() or a.grad.is_contiguous()
        assert_parity(name, a.grad, r.grad, lo.grad, 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,D", [(T, D) for T in (1, 17, 64) for D in (16, 40, 64)] + [(113, 64)])
def test_parity(dtype, causal, T, D, gen):
    q, k, v = (randn(1, 2, T, D, dtype=dtype, device=DEVICE, gen=gen) for _ in range(3))
    check(q, k, v, causal, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Tq,Tk", [(17, 33), (33, 17), (1, 20)])
def test_cross_attention(dtype, Tq, Tk, gen):
    q = randn(2, 1, Tq, 32, dtype=dtype, device=DEVICE, gen=gen)
    k, v = (randn(2, 1, Tk, 32, dtype=dtype, device=DEVICE, gen=gen) for _ in range(2))
    check(q, k, v, False, gen)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_non_contiguous_qkv_views(causal, gen):
    """Head-transposed views of one fused (B, T, 3, H, D) projection, read through their strides."""
    B, T, H, D = 1, 37, 2, 40
    qkv = randn(B, T, 3, H, D, dtype=torch.float32, device=DEVICE, gen=gen)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    check(q, k, v, causal, gen)


def test_last_dim_not_unit_stride(gen):
    """A view whose last dim has stride != 1 (D-major storage) is read correctly too."""
    q, k, v = (randn(1, 2, 40, 19, dtype=torch.float32, device=DEVICE, gen=gen).transpose(-1, -2) for _ in range(3))
    assert q.stride(-1) != 1
    check(q, k, v, True, gen)


def test_lse_and_determinism(gen):
    from pygpt.triton.attention import triton_attention_fwd

    q, k, v = (randn(1, 2, 21, 16, dtype=torch.float32, device=DEVICE, gen=gen) for _ in range(3))
    out, lse = triton_attention_fwd(q, k, v, True, 0.25)
    s = (q.double() @ k.double().transpose(-2, -1)) * 0.25
    s = s.masked_fill(~torch.ones(21, 21, dtype=torch.bool, device=DEVICE).tril(), float("-inf"))
    assert lse.dtype == torch.float32 and lse.shape == (1, 2, 21)
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max().item() < 1e-5
    out2, lse2 = triton_attention_fwd(q, k, v, True, 0.25)
    assert torch.equal(out, out2) and torch.equal(lse, lse2)


def test_rejects_dropout_and_bad_args(gen):
    from pygpt.triton.attention import attention

    q = randn(1, 1, 4, 16, dtype=torch.float32, device=DEVICE, gen=gen)
    with pytest.raises(ValueError, match="dropout"):
        ops.attention(q, q, q, dropout_p=0.1, backend="triton")
    with pytest.raises(ValueError, match="dropout"):
        attention(q, q, q, True, 0.25, dropout_p=0.1)
    with pytest.raises(ValueError, match="Tq == Tk"):
        attention(q, q[:, :, :3], q[:, :, :3], True, 0.25)
    with pytest.raises(ValueError, match="float16, bfloat16, float32"):
        attention(q.double(), q.double(), q.double(), False, 0.25)


@pytest.mark.parametrize("causal,Tq,Tk", [(True, 5, 5), (False, 3, 7)])
def test_opcheck(causal, Tq, Tk, gen):
    from pygpt.triton.attention import triton_attention_fwd  # noqa: F401  (registers the ops)

    q = randn(1, 2, Tq, 16, dtype=torch.float32, device=DEVICE, requires_grad=True, gen=gen)
    k, v = (randn(1, 2, Tk, 16, dtype=torch.float32, device=DEVICE, requires_grad=True, gen=gen) for _ in range(2))
    torch.library.opcheck(torch.ops.pygpt.triton_attention_fwd.default, (q, k, v, causal, 0.25))
    out, lse = torch.ops.pygpt.triton_attention_fwd(q.detach(), k.detach(), v.detach(), causal, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.pygpt.triton_attention_bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse, causal, 0.25))
