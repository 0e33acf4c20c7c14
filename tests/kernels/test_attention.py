"""Parity of every attention backend with the float64 reference, forward and all three gradients."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pygpt import ops
from pygpt.ops.attention import attention_reference, fused_attention

from kernel_parity import (FLOOR, PARITY_DTYPES, assert_parity, backend_params, lowp_dtype, max_err, poisoned_empty,
                           randn, ref_dtype, skip_unless_runnable)

OP = "attention"
SHAPES = [(T, D) for T in (1, 2, 17, 64, 113, 1023) for D in (40, 64)] + [(113, D) for D in (16, 32, 80, 128)]
DTYPES = PARITY_DTYPES


def run(backend, q, k, v, causal, scale):
    if backend == "ext":
        return fused_attention(q, k, v, causal, scale)
    return ops.attention(q, k, v, causal=causal, scale=scale, backend=backend)


def check(backend, q, k, v, causal, gen):
    """Forward and dq/dk/dv of `backend` against the high-precision reference (flash-attention rule)."""
    scale = 1.0 / math.sqrt(q.size(-1))
    dout = randn(*q.shape[:-1], v.size(-1), dtype=q.dtype, device=q.device, gen=gen)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]  # keeps the caller's strides
    qk = [t.detach().to(ref_dtype(q.dtype)).requires_grad_() for t in (q, k, v)]
    lowp = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    with poisoned_empty():
        out = run(backend, *leaves, causal, scale)
        out.backward(dout)
    ref = attention_reference(*qk, causal=causal, scale=scale)
    ref.backward(dout.to(ref.dtype))
    low = attention_reference(*lowp, causal=causal, scale=scale)
    low.backward(dout)

    assert out.dtype == q.dtype
    assert_parity("out", out, ref, low, 2)
    for name, a, r, lo in zip(("dq", "dk", "dv"), leaves, qk, lowp):
        assert_parity(name, a.grad, r.grad, lo.grad, 3)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,D", SHAPES)
def test_parity(backend, device, dtype, causal, T, D, gen):
    skip_unless_runnable(OP, backend, device, dtype, T=T, D=D)
    B, H = (1, 3) if T > 512 else (2, 3)
    q, k, v = (randn(B, H, T, D, dtype=dtype, device=device, gen=gen) for _ in range(3))
    check(backend, q, k, v, causal, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (3, 5, 33), (5, 1, 64)])
def test_odd_batch_and_heads(backend, device, dtype, B, H, T, gen):
    skip_unless_runnable(OP, backend, device, dtype, T=T, BH=B * H)
    q, k, v = (randn(B, H, T, 32, dtype=dtype, device=device, gen=gen) for _ in range(3))
    check(backend, q, k, v, True, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Tq,Tk", [(17, 113), (64, 1), (1, 64), (113, 17)])
def test_cross_attention(backend, device, dtype, Tq, Tk, gen):
    skip_unless_runnable(OP, backend, device, dtype, T=max(Tq, Tk))
    q = randn(2, 3, Tq, 64, dtype=dtype, device=device, gen=gen)
    k, v = (randn(2, 3, Tk, 64, dtype=dtype, device=device, gen=gen) for _ in range(2))
    check(backend, q, k, v, False, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_non_contiguous_qkv_views(backend, device, causal, gen):
    """q, k, v as the model makes them: head-transposed views of one fused (B, T, 3·C) projection."""
    dtype = lowp_dtype(backend, device)
    skip_unless_runnable(OP, backend, device, dtype)
    B, T, H, D = 2, 113, 3, 40
    qkv = randn(B, T, 3, H, D, dtype=dtype, device=device, gen=gen)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    check(backend, q, k, v, causal, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP, ["cpu", "cuda", "triton", "ext"]))
def test_deterministic(backend, device, gen):
    """Same inputs twice -> bitwise-equal output and gradients (every backend here is deterministic)."""
    dtype = lowp_dtype(backend, device)
    skip_unless_runnable(OP, backend, device, dtype)
    q, k, v = (randn(2, 3, 113, 64, dtype=dtype, device=device, gen=gen) for _ in range(3))
    dout = randn(2, 3, 113, 64, dtype=dtype, device=device, gen=gen)
    results = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = run(backend, *leaves, True, 0.125)
        out.backward(dout)
        results.append([out, *(t.grad for t in leaves)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(a, b), f"{name} differs between two identical calls"


@pytest.mark.parametrize("backend,device", backend_params(OP, ["cpu", "cuda", "triton"]))
def test_fused_backends_reject_dropout(backend, device, gen):
    dtype = lowp_dtype(backend, device)  # the CUDA kernel refuses fp32 before it looks at dropout
    skip_unless_runnable(OP, backend, device, dtype)
    q = randn(1, 1, 4, 16, dtype=dtype, device=device, gen=gen)
    with pytest.raises(ValueError, match="dropout"):
        ops.attention(q, q, q, dropout_p=0.1, backend=backend)


# -- the extension op itself: opcheck, fp64 gradcheck, the C++ boundary -----------------------------


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("causal,Tq,Tk", [(True, 17, 17), (False, 5, 9), (True, 1, 1)])
def test_opcheck(device, causal, Tq, Tk, gen):
    dtype = lowp_dtype("ext", device)
    skip_unless_runnable(OP, "ext", device, dtype)
    q = randn(2, 3, Tq, 16, dtype=dtype, device=device, requires_grad=True, gen=gen)
    k, v = (randn(2, 3, Tk, 16, dtype=dtype, device=device, requires_grad=True, gen=gen) for _ in range(2))
    torch.library.opcheck(torch.ops.pygpt.attention_fwd.default, (q, k, v, causal, 0.25))
    out, lse = torch.ops.pygpt.attention_fwd(q.detach(), k.detach(), v.detach(), causal, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.pygpt.attention_bwd.default, (dout, q.detach(), k.detach(), v.detach(), out, lse, causal, 0.25))


@pytest.mark.parametrize("causal,Tq,Tk", [(True, 6, 6), (False, 3, 7), (True, 1, 1)])
def test_gradcheck_fp64(causal, Tq, Tk, gen):
    skip_unless_runnable(OP, "ext", "cpu")
    q = randn(1, 2, Tq, 8, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen)
    k, v = (randn(1, 2, Tk, 8, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen) for _ in range(2))
    assert torch.autograd.gradcheck(lambda a, b, c: fused_attention(a, b, c, causal, 0.3), (q, k, v))


def test_lse_is_logsumexp(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    q, k, v = (randn(2, 2, 9, 16, dtype=torch.float64, device="cpu", gen=gen) for _ in range(3))
    _, lse = torch.ops.pygpt.attention_fwd(q, k, v, True, 0.25)
    s = (q @ k.transpose(-2, -1)) * 0.25
    s = s.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    assert max_err(lse, torch.logsumexp(s, -1)) < FLOOR[torch.float64]


def test_cpp_boundary_errors(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    q = randn(2, 3, 8, 16, dtype=torch.float32, device="cpu", gen=gen)
    f = torch.ops.pygpt.attention_fwd
    with pytest.raises(RuntimeError, match="4-D"):
        f(q[0], q[0], q[0], True, 0.25)
    with pytest.raises(RuntimeError, match="dtype|Double|Float"):
        f(q, q.double(), q, True, 0.25)
    with pytest.raises(RuntimeError, match="Tq|Tk|causal"):
        f(q, q[:, :, :5], q[:, :, :5], True, 0.25)
    with pytest.raises(RuntimeError, match="scale"):
        f(q, q, q, True, float("nan"))


# -- the Python boundary ----------------------------------------------------------------------------


def test_python_boundary_errors(gen):
    q = randn(2, 3, 8, 16, dtype=torch.float32, device="cpu", gen=gen)
    with pytest.raises(ValueError, match=r"q must be 4-D .* got shape \(3, 8, 16\)"):
        ops.attention(q[0], q, q)
    with pytest.raises(ValueError, match="share a dtype"):
        ops.attention(q, q.double(), q)
    with pytest.raises(ValueError, match="Tq=8, Tk=5"):
        ops.attention(q, q[:, :, :5], q[:, :, :5], causal=True)
    with pytest.raises(ValueError, match="D=16"):
        ops.attention(q, q[..., :8], q[..., :8], causal=False)
    with pytest.raises(ValueError, match="scale .* inf"):
        ops.attention(q, q, q, scale=float("inf"))
    with pytest.raises(ValueError, match="dropout_p .* 1.5"):
        ops.attention(q, q, q, dropout_p=1.5)
    with pytest.raises(ops.BackendUnavailable, match="unknown backend 'flash'"):
        ops.attention(q, q, q, backend="flash")


# -- the CPU kernel's own limits and code paths ------------------------------------------------------


def test_cpu_head_dim_limit(gen):
    """D=256 is the largest head dim the CPU kernel takes (forward and backward); D=257 is refused
    at the C++ boundary with a message naming D."""
    skip_unless_runnable(OP, "cpu", "cpu")
    q, k, v = (randn(1, 2, 37, 256, dtype=torch.float32, device="cpu", gen=gen) for _ in range(3))
    check("cpu", q, k, v, True, gen)
    big = randn(1, 1, 4, 257, dtype=torch.float32, device="cpu", gen=gen)
    with pytest.raises(RuntimeError, match="head dim D=257 exceeds the CPU kernel's maximum of 256"):
        torch.ops.pygpt.attention_fwd(big, big, big, False, 0.125)
    out = torch.zeros_like(big)
    lse = torch.zeros(1, 1, 4)
    with pytest.raises(RuntimeError, match="head dim D=257"):
        torch.ops.pygpt.attention_bwd(big, big, big, big, out, lse, False, 0.125)


def test_cpp_boundary_errors_bwd(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    q = randn(2, 3, 8, 16, dtype=torch.float32, device="cpu", gen=gen)
    out, lse = torch.ops.pygpt.attention_fwd(q, q, q, True, 0.25)
    f = torch.ops.pygpt.attention_bwd
    with pytest.raises(RuntimeError, match=r"lse must have shape"):
        f(out, q, q, q, out, lse[..., :4], True, 0.25)
    with pytest.raises(RuntimeError, match=r"lse must be float32 .* got float64"):
        f(out, q, q, q, out, lse.double(), True, 0.25)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape"):
        f(out[:, :, :4], q, q, q, out, lse, True, 0.25)


@pytest.mark.parametrize("causal,Tq,Tk", [(True, 200, 200), (False, 70, 150)])
def test_cpu_backward_schemes_agree(causal, Tq, Tk, gen):
    """The backward runs per (b, h) when there are enough heads for the threads, and as two passes
    (dK/dV over key tiles, dQ over query tiles) otherwise; both must give the same gradients bit for
    bit (deterministic and independent of the thread count)."""
    skip_unless_runnable(OP, "cpu", "cpu")
    q = randn(1, 2, Tq, 48, dtype=torch.float32, device="cpu", gen=gen)
    k, v = (randn(1, 2, Tk, 48, dtype=torch.float32, device="cpu", gen=gen) for _ in range(2))
    out, lse = torch.ops.pygpt.attention_fwd(q, k, v, causal, 0.2)
    dout = randn(*out.shape, dtype=torch.float32, device="cpu", gen=gen)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # B*H = 2 >= 2 threads: per-head scheme
        a = torch.ops.pygpt.attention_bwd(dout, q, k, v, out, lse, causal, 0.2)
        torch.set_num_threads(2)  # B*H = 2 < 4: two-pass scheme
        b = torch.ops.pygpt.attention_bwd(dout, q, k, v, out, lse, causal, 0.2)
    finally:
        torch.set_num_threads(prev)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


_BASELINE_ISA_SCRIPT = """
import torch
from pygpt.ops.attention import attention_reference, fused_attention
g = torch.Generator().manual_seed(0)
for causal, Tq, Tk, D, dt in [(True, 77, 77, 40, torch.float32), (False, 33, 70, 64, torch.float32),
                              (True, 65, 65, 32, torch.bfloat16)]:
    q = torch.randn(2, 2, Tq, D, generator=g).to(dt).requires_grad_()
    k, v = (torch.randn(2, 2, Tk, D, generator=g).to(dt).requires_grad_() for _ in range(2))
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = fused_attention(q, k, v, causal, 0.2)
    dout = torch.randn(out.shape, generator=g).to(dt)
    out.backward(dout)
    r = attention_reference(*ref, causal=causal, scale=0.2)
    r.backward(dout.double())
    tol = 1e-5 if dt == torch.float32 else 5e-2
    for a, b in [(out, r)] + [(x.grad, y.grad) for x, y in zip((q, k, v), ref)]:
        err = (a.double() - b).abs().max().item()
        assert err < tol * max(1.0, b.abs().max().item()), (causal, Tq, Tk, D, dt, err)
print("ok")
"""


def test_cpu_baseline_isa_path():
    """The kernel is compiled twice (baseline x86-64 and AVX2+FMA, picked at run time); with torch
    pinned to ATEN_CPU_CAPABILITY=default it must take, and pass on, the baseline build."""
    skip_unless_runnable(OP, "cpu", "cpu")
    import pygpt

    env = dict(os.environ, ATEN_CPU_CAPABILITY="default")
    root = str(Path(pygpt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _BASELINE_ISA_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stdout + res.stderr


# -- the CUDA kernel's own limits (run where a GPU is present) --------------------------------------


def test_cuda_boundary_errors(gen):
    skip_unless_runnable(OP, "ext", "cuda", torch.bfloat16)
    q = randn(1, 2, 8, 64, dtype=torch.float32, device="cuda", gen=gen)
    with pytest.raises(RuntimeError, match="float32"):  # tensor cores: fp16/bf16 only
        fused_attention(q, q, q, True, 0.125)
    with pytest.raises(ops.BackendUnavailable, match="float32"):
        ops.attention(q, q, q, backend="cuda")
    big = randn(1, 2, 8, 129, dtype=torch.bfloat16, device="cuda", gen=gen)
    with pytest.raises(RuntimeError, match="129"):
        fused_attention(big, big, big, True, 0.1)
    cpu = q.to("cpu", torch.bfloat16)
    with pytest.raises((RuntimeError, ValueError), match="device"):
        fused_attention(q.bfloat16(), cpu, cpu, False, 0.125)


# The CUDA forward has two versions (kernels/attention.cuh): 64 or 128 query rows per thread block,
# picked by the launcher from PYGPT_ATTN_FWD_ROWS on every call (unset/'auto': 128 at D 33..128).
# Both are parity-tested at the head dims the 128-row one exists for, with T around its tiles
# (17: one partial block; 113: one block with a key tail; 1023: 8 blocks, causal skipping).
@pytest.mark.parametrize("rows", ["64", "128"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("T,D", [(T, D) for T in (17, 113, 1023) for D in (64, 128)])
def test_cuda_forward_versions(rows, dtype, causal, T, D, gen, monkeypatch):
    skip_unless_runnable(OP, "cuda", "cuda", dtype, T=T, D=D)
    monkeypatch.setenv("PYGPT_ATTN_FWD_ROWS", rows)
    B, H = (1, 3) if T > 512 else (2, 3)
    q, k, v = (randn(B, H, T, D, dtype=dtype, device="cuda", gen=gen) for _ in range(3))
    check("cuda", q, k, v, causal, gen)


def test_cuda_forward_rows_env_errors(gen, monkeypatch):
    """PYGPT_ATTN_FWD_ROWS: a value other than unset/'auto'/'64'/'128' is an error naming it; '128'
    at a head dim without a 128-row kernel (D <= 32) is an error naming D; read on every call."""
    skip_unless_runnable(OP, "ext", "cuda", torch.bfloat16)
    f = torch.ops.pygpt.attention_fwd
    q16 = randn(1, 2, 8, 16, dtype=torch.bfloat16, device="cuda", gen=gen)
    q64 = randn(1, 2, 8, 64, dtype=torch.bfloat16, device="cuda", gen=gen)
    monkeypatch.setenv("PYGPT_ATTN_FWD_ROWS", "96")
    with pytest.raises(RuntimeError, match="PYGPT_ATTN_FWD_ROWS='96'"):
        f(q64, q64, q64, True, 0.125)
    monkeypatch.setenv("PYGPT_ATTN_FWD_ROWS", "128")
    with pytest.raises(RuntimeError, match="PYGPT_ATTN_FWD_ROWS=128 .*D=16"):
        f(q16, q16, q16, True, 0.25)
    ref = attention_reference(q64.float(), q64.float(), q64.float(), causal=True, scale=0.125)
    outs = {}
    for rows in ("128", "64", "auto"):
        monkeypatch.setenv("PYGPT_ATTN_FWD_ROWS", rows)
        outs[rows] = f(q64, q64, q64, True, 0.125)[0]
        assert max_err(outs[rows], ref) < 2e-2
    monkeypatch.delenv("PYGPT_ATTN_FWD_ROWS")
    assert max_err(f(q16, q16, q16, False, 0.25)[0],
                   attention_reference(q16.float(), q16.float(), q16.float(), causal=False, scale=0.25)) < 2e-2


def test_cuda_auto_routes_fp32_and_wide_heads_to_triton(gen):
    """'auto' on CUDA: the CUDA kernel for bf16/fp16 with D <= 128, Triton otherwise."""
    skip_unless_runnable(OP, "cuda", "cuda", torch.bfloat16)
    if ops.unavailable_reason(OP, "triton", "cuda") is not None:
        pytest.skip("Triton is not available")
    for dtype, D in ((torch.float32, 64), (torch.bfloat16, 160)):
        q, k, v = (randn(1, 2, 33, D, dtype=dtype, device="cuda", gen=gen) for _ in range(3))
        check("auto", q, k, v, True, gen)
