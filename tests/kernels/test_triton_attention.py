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


# -- tile configs: register footprint by head dim (pure Python), spills (compiled for sm_80/sm_90) ----

HEAD_DIMS = (32, 64, 96, 128, 160, 256)
# The footprint bound per kernel, stated here independently of the module (its _REG_BUDGET must agree),
# in 32-bit registers per thread of the estimate below.
BOUND = {"fwd": 128, "dkdv": 144, "dq": 88}


def footprint(kernel, m, n, bd, warps):
    """fp32 accumulators + fp32 score tiles + 16-bit operand tiles (half a register each), per thread."""
    words = {"fwd": m * bd + m * n + (m * bd + 2 * n * bd) / 2,
             "dkdv": 2 * n * bd + 2 * n * m + (2 * n * bd + 2 * m * bd) / 2,
             "dq": m * bd + 2 * m * n + (2 * m * bd + 2 * n * bd) / 2}[kernel]
    return words / (32 * warps)


def _key(c):
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages


def _configs_used(kernel, D, causal):
    """(fixed config of PYGPT_TRITON_AUTOTUNE=0, autotune candidates) on a GPU at head dim D."""
    from pygpt.triton import attention as ta

    bd = ta._block_d(D)
    fixed = ta._fixed_config(kernel, bd, interpret=False)
    tuned = {"fwd": ta._attn_fwd_tuned, "dkdv": ta._attn_bwd_dkdv_tuned, "dq": ta._attn_bwd_dq_tuned}[kernel]
    # the prune hook exactly as the autotuner calls it (constexprs arrive as keyword arguments)
    pruned = tuned.early_config_prune(tuned.configs, {}, BLOCK_D=bd, CAUSAL=causal, PREC=None)
    return bd, fixed, pruned


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_configs_fit_register_bound(kernel, D):
    from pygpt.triton import attention as ta

    assert ta._REG_BUDGET == BOUND
    for causal in (True, False):
        bd, fixed, pruned = _configs_used(kernel, D, causal)
        assert pruned, f"{kernel} D={D}: the prune left no config"
        for c in [fixed, *pruned]:
            m, n, w, _ = _key(c)
            f = footprint(kernel, m, n, bd, w)
            assert f == ta.regs_per_thread(kernel, m, n, bd, w)
            assert f <= BOUND[kernel], f"{kernel} D={D} {_key(c)}: {f} registers/thread > {BOUND[kernel]}"
            if causal:
                assert m % n == 0, f"{kernel} {_key(c)}: causal needs BLOCK_M % BLOCK_N == 0"
        # the prune removed exactly the candidates over the bound (and, causal, off the tile rule)
        want = [_key(c) for c in ta._tune_configs(kernel)
                if footprint(kernel, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], bd, c.num_warps) <= BOUND[kernel]
                and (not causal or c.kwargs["BLOCK_M"] % c.kwargs["BLOCK_N"] == 0)]
        assert [_key(c) for c in pruned] == (want or [_key(fixed)])


def test_former_default_is_over_the_bound_at_d160():
    """The check bites: the former one-size 64 x 64 x 4-warp config at D = 160 (BLOCK_D = 256), which
    ptxas showed spilling kilobytes in all three kernels, is far over every bound."""
    for kernel in ("fwd", "dkdv", "dq"):
        assert footprint(kernel, 64, 64, 256, 4) > 2 * BOUND[kernel]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("tiles", ["interpreter", "gpu-fixed"])
def test_parity_d160(tiles, dtype, causal, gen, monkeypatch):
    """D = 160 (BLOCK_D = 256, masked head-dim tail), with the interpreter's tiles and with the
    tiles a GPU runs at D = 160 under PYGPT_TRITON_AUTOTUNE=0 (the _FIXED D > 128 configs), so the
    small 8-warp / 16-key tiles chosen for the register bound are exercised too. T = 70: partial
    query and key tiles in every kernel."""
    from pygpt.triton import attention as ta

    if tiles == "gpu-fixed":
        if DEVICE == "cuda":
            pytest.skip("on a GPU the regular tests run the configs already")
        monkeypatch.setattr(ta, "_INTERPRET", False)  # pick the GPU table; Triton still interprets
        monkeypatch.setattr(ta, "_AUTOTUNE", False)
    q, k, v = (randn(1, 2, 70, 160, dtype=dtype, device=DEVICE, gen=gen) for _ in range(3))
    check(q, k, v, causal, gen)


_SPILL_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from pygpt.triton import attention as ta
fns = {"fwd": ta._attn_fwd, "dkdv": ta._attn_bwd_dkdv, "dq": ta._attn_bwd_dq}
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
out = []
for kernel, arch, bd, bm, bn, w, st in json.loads(sys.argv[1]):
    fn = fns[kernel]
    sig = {}
    for n in fn.arg_names:
        if n in ("LSE", "DELTA"): sig[n] = "*fp32"
        elif n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV"): sig[n] = "*fp16"
        elif n == "sm_scale": sig[n] = "fp32"
        elif n in ("CAUSAL", "BLOCK_D", "PREC", "BLOCK_M", "BLOCK_N"): sig[n] = "constexpr"
        else: sig[n] = "i32"
    const = {"CAUSAL": True, "BLOCK_D": bd, "PREC": None, "BLOCK_M": bm, "BLOCK_N": bn}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    kern = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": w, "num_stages": st})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kern.asm["cubin"]); f.flush()
        res = subprocess.run([cuobjdump, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    out.append([kernel, arch, bm, bn, w, st, int(m.group(1)), int(m.group(2))])
print(json.dumps(out))
"""


def test_no_spills_at_d160_sm80_sm90():
    """Compile (no GPU needed: triton.compile for a GPUTarget, then cuobjdump's resource usage) every
    config a GPU can run at D = 160 -- the fixed one and the pruned autotune candidates of all three
    kernels, fp16, causal -- for sm_80 and sm_90, and require 0 bytes of stack (= no spills)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").is_file():
        pytest.skip("Triton's bundled cuobjdump not found")
    jobs = set()
    for kernel in ("fwd", "dkdv", "dq"):
        bd, fixed, pruned = _configs_used(kernel, 160, True)
        for c in [fixed, *pruned]:
            for arch in (80, 90):
                jobs.add((kernel, arch, bd, *_key(c)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real jit functions
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", _SPILL_SCRIPT, json.dumps(sorted(jobs))], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(results) == len(jobs)
    spilling = [x for x in results if x[7] != 0]
    assert not spilling, f"(kernel, sm, BLOCK_M, BLOCK_N, warps, stages, registers, stack bytes): {spilling}"
