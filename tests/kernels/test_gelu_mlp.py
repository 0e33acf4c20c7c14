"""Parity of every gelu_mlp backend with the float64 reference: output and the five gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pygpt import ops
from pygpt.ops.gelu_mlp import fused_gelu_mlp, gelu_mlp_reference

from kernel_parity import PARITY_DTYPES, assert_parity, lowp_dtype, backend_params, poisoned_empty, randn, ref_dtype, skip_unless_runnable

OP = "gelu_mlp"
DTYPES = PARITY_DTYPES


def run(backend, x, w1, b1, w2, b2, approximate):
    if backend == "ext":
        return fused_gelu_mlp(x, w1, b1, w2, b2, approximate)
    return ops.gelu_mlp(x, w1, b1, w2, b2, approximate=approximate, backend=backend)


def make(lead, C, Hd, dtype, device, gen, bias=True):
    s1, s2 = C ** -0.5, Hd ** -0.5  # nn.Linear-like scales keep the activations O(1)
    return (
        randn(*lead, C, dtype=dtype, device=device, gen=gen),
        randn(Hd, C, dtype=dtype, device=device, gen=gen, scale=s1),
        randn(Hd, dtype=dtype, device=device, gen=gen, scale=0.5) if bias else None,
        randn(C, Hd, dtype=dtype, device=device, gen=gen, scale=s2),
        randn(C, dtype=dtype, device=device, gen=gen, scale=0.5) if bias else None,
    )


def check(backend, args, approximate, gen):
    x = args[0]
    dout = randn(*x.shape, dtype=x.dtype, device=x.device, gen=gen)

    def leaves(cast=None):
        return [None if t is None else (t.detach().to(cast) if cast else t.detach()).requires_grad_() for t in args]

    mine, hi, low = leaves(), leaves(ref_dtype(x.dtype)), leaves()
    with poisoned_empty():
        out = run(backend, *mine, approximate)
        out.backward(dout)
    ref = gelu_mlp_reference(*hi, approximate)
    ref.backward(dout.to(ref.dtype))
    lo = gelu_mlp_reference(*low, approximate)
    lo.backward(dout)
    assert out.dtype == x.dtype
    assert_parity("out", out, ref, lo, 2)
    for name, a, r, l in zip(("dx", "dw_fc", "db_fc", "dw_proj", "db_proj"), mine, hi, low):
        if a is not None:
            assert_parity(name, a.grad, r.grad, l.grad, 3)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("lead,C", [((1,), 1), ((2, 17), 64), ((3, 113), 40), ((1, 64), 128), ((97,), 80)])
def test_parity(backend, device, dtype, approximate, lead, C, gen):
    skip_unless_runnable(OP, backend, device, dtype, M=math.prod(lead), C=C)
    check(backend, make(lead, C, 4 * C, dtype, device, gen), approximate, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
def test_no_bias_odd_hidden_and_non_contiguous(backend, device, gen):
    skip_unless_runnable(OP, backend, device, M=5 * 33)
    x, w1, _, w2, _ = make((5, 33), 48, 100, torch.float32, device, gen, bias=False)
    wide = randn(5, 33, 96, dtype=torch.float32, device=device, gen=gen)
    x = wide[..., ::2]  # a strided view
    assert not x.is_contiguous()
    check(backend, (x, w1, None, w2, None), "tanh", gen)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_opcheck(device, approximate, bias, gen):
    skip_unless_runnable(OP, "ext", device)
    args = [t.requires_grad_() if t is not None else None for t in make((3, 7), 24, 40, torch.float32, device, gen, bias)]
    torch.library.opcheck(torch.ops.pygpt.gelu_mlp_fwd.default, (*args, approximate))
    x, w1, b1, w2, b2 = (t.detach() if t is not None else None for t in args)
    out, pre = torch.ops.pygpt.gelu_mlp_fwd(x, w1, b1, w2, b2, approximate)
    torch.library.opcheck(torch.ops.pygpt.gelu_mlp_bwd.default, (torch.randn_like(out), x, pre, w1, w2, approximate))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gradcheck_fp64(approximate, gen):
    skip_unless_runnable(OP, "ext", "cpu")
    args = [t.requires_grad_() for t in make((2, 3), 5, 12, torch.float64, "cpu", gen)]
    assert torch.autograd.gradcheck(lambda *a: fused_gelu_mlp(*a, approximate), args)


def test_cpp_boundary_errors(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x, w1, b1, w2, b2 = make((4,), 8, 32, torch.float32, "cpu", gen)
    f = torch.ops.pygpt.gelu_mlp_fwd
    with pytest.raises(RuntimeError, match="approximate"):
        f(x, w1, b1, w2, b2, "sigmoid")
    with pytest.raises(RuntimeError, match="w_fc"):
        f(x, w1[:, :5], b1, w2, b2, "tanh")
    with pytest.raises(RuntimeError, match="w_proj"):
        f(x, w1, b1, w2[:, :7], b2, "tanh")


def test_python_boundary_errors(gen):
    x, w1, b1, w2, b2 = make((4,), 8, 32, torch.float32, "cpu", gen)
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none', got 'sigmoid'"):
        ops.gelu_mlp(x, w1, b1, w2, b2, approximate="sigmoid")
    with pytest.raises(ValueError, match=r"w_fc must be \(hidden, 8\)"):
        ops.gelu_mlp(x, w1[:, :5], b1, w2, b2)
    with pytest.raises(ValueError, match=r"w_proj must be \(8, 32\)"):
        ops.gelu_mlp(x, w1, b1, w2.t(), b2)
    with pytest.raises(ValueError, match=r"b_fc must be \(32,\)"):
        ops.gelu_mlp(x, w1, b2, w2, b2)
    with pytest.raises(ValueError, match="w_fc is torch.float64"):
        ops.gelu_mlp(x, w1.double(), b1, w2, b2)


# --------------------------------------------------------------------------- kernel-specific checks


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_parity_fp16_fp64(backend, device, dtype, approximate, gen):
    skip_unless_runnable(OP, backend, device, dtype, M=3 * 41)
    check(backend, make((3, 41), 64, 256, dtype, device, gen), approximate, gen)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_math_over_a_wide_range(approximate):
    """Identity weights expose the kernel's own GELU and GELU' (hand-written exp/erfc on the CPU)
    over [-12, 12] and at extreme values; each must be as accurate as eager float32 + a few ulp."""
    skip_unless_runnable(OP, "ext", "cpu")
    F = torch.nn.functional
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([-1e4, -100.0, -30.0, 0.0, 1e-30, 30.0, 100.0, 1e4])])
    x = x.reshape(-1, 1)
    one = torch.ones(1, 1)
    out, pre = torch.ops.pygpt.gelu_mlp_fwd(x, one, None, one, None, approximate)
    gx, *_ = torch.ops.pygpt.gelu_mlp_bwd(torch.ones_like(x), x, pre, one, one, approximate)
    xd = x.double().requires_grad_()
    ref = F.gelu(xd, approximate=approximate)
    ref.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(gx).all()
    assert ((out.double() - ref.detach()).abs() / ref.detach().abs().clamp_min(1)).max() < 5e-7
    assert (gx.double() - xd.grad).abs().max() < 5e-7


def test_db_fc_deterministic_across_thread_counts(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x, w1, b1, w2, b2 = make((700,), 16, 64, torch.float32, "cpu", gen)
    out, pre = torch.ops.pygpt.gelu_mlp_fwd(x, w1, b1, w2, b2, "tanh")
    dout = torch.randn_like(out)
    prev = torch.get_num_threads()
    dbs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            dbs.append(torch.ops.pygpt.gelu_mlp_bwd(dout, x, pre, w1, w2, "tanh")[2])
    finally:
        torch.set_num_threads(prev)
    assert all(torch.equal(dbs[0], d) for d in dbs[1:])


def test_bf16_pre_is_rounded_once_and_consistent(gen):
    """bf16: pre is x.w_fc^T + b_fc rounded once to bf16; out is computed from that stored pre."""
    skip_unless_runnable(OP, "ext", "cpu")
    F = torch.nn.functional
    x, w1, b1, w2, b2 = make((9, 5), 32, 128, torch.bfloat16, "cpu", gen)
    out, pre = torch.ops.pygpt.gelu_mlp_fwd(x, w1, b1, w2, b2, "none")
    assert out.dtype == pre.dtype == torch.bfloat16 and pre.shape == (9, 5, 128)
    pre_ref = F.linear(x.double(), w1.double(), b1.double())
    assert (pre.double() - pre_ref).abs().max() <= 2 ** -8 * pre_ref.abs().max() + 1e-6
    out_ref = F.linear(F.gelu(pre.double(), approximate="none"), w2.double(), b2.double())
    assert (out.double() - out_ref).abs().max() <= 2 ** -8 * out_ref.abs().max() + 1e-4


def test_empty_rows():
    skip_unless_runnable(OP, "ext", "cpu")
    x = torch.empty(0, 8)
    w1, w2, b1, b2 = torch.randn(32, 8), torch.randn(8, 32), torch.randn(32), torch.randn(8)
    out, pre = torch.ops.pygpt.gelu_mlp_fwd(x, w1, b1, w2, b2, "tanh")
    assert out.shape == (0, 8) and pre.shape == (0, 32)
    gx, gw1, gb1, gw2, gb2 = torch.ops.pygpt.gelu_mlp_bwd(out, x, pre, w1, w2, "tanh")
    assert gx.shape == (0, 8) and torch.equal(gb1, torch.zeros(32)) and torch.equal(gw1, torch.zeros(32, 8))


def test_cpp_boundary_errors_more(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x, w1, b1, w2, b2 = make((4,), 8, 32, torch.float32, "cpu", gen)
    f = torch.ops.pygpt.gelu_mlp_fwd
    with pytest.raises(RuntimeError, match="b_proj must have shape"):
        f(x, w1, b1, w2, b1, "tanh")
    with pytest.raises(RuntimeError, match="dtype mismatch: b_fc is float64 but x is float32"):
        f(x, w1, b1.double(), w2, b2, "tanh")
    with pytest.raises(RuntimeError, match="unsupported dtype int64 for x"):
        f(x.long(), w1.long(), None, w2.long(), None, "tanh")
    out, pre = f(x, w1, b1, w2, b2, "tanh")
    g = torch.ops.pygpt.gelu_mlp_bwd
    with pytest.raises(RuntimeError, match="pre must have shape"):
        g(out, x, pre[:, :16], w1, w2, "tanh")
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        g(out[:2], x, pre, w1, w2, "tanh")
    with pytest.raises(RuntimeError, match="dtype mismatch: pre is bfloat16 but x is float32"):
        g(out, x, pre.bfloat16(), w1, w2, "tanh")


# -- the CUDA backend's two GEMM paths (run where a GPU is present) ---------------------------------


@pytest.mark.parametrize("path", ["mma", "cublaslt", "auto"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("lead,C", [((339,), 40), ((3, 113), 80), ((2, 64), 128), ((7,), 12)])
def test_cuda_gemm_paths(path, dtype, approximate, lead, C, gen, monkeypatch):
    """PYGPT_GEMM forces the hand-written mma.sync GEMM or cuBLASLt (tanh only; 'none' and shapes it
    cannot take run on mma / at::mm); every path must keep parity. C=12 is not a multiple of 8."""
    skip_unless_runnable(OP, "cuda", "cuda", dtype)
    monkeypatch.setenv("PYGPT_GEMM", path)
    check("cuda", make(lead, C, 4 * C + 8, dtype, "cuda", gen), approximate, gen)


def test_cuda_gemm_env_is_checked(gen, monkeypatch):
    skip_unless_runnable(OP, "cuda", "cuda", torch.bfloat16)
    monkeypatch.setenv("PYGPT_GEMM", "fast")
    x, w1, b1, w2, b2 = make((4,), 16, 64, torch.bfloat16, "cuda", gen)
    with pytest.raises(RuntimeError, match="PYGPT_GEMM.*fast"):
        ops.gelu_mlp(x, w1, b1, w2, b2, backend="cuda")


@pytest.mark.parametrize("path", ["mma", "cublaslt"])
def test_cuda_deterministic(path, gen, monkeypatch):
    skip_unless_runnable(OP, "cuda", "cuda", torch.bfloat16)
    monkeypatch.setenv("PYGPT_GEMM", path)
    args = make((5, 77), 64, 256, torch.bfloat16, "cuda", gen)
    dout = randn(5, 77, 64, dtype=torch.bfloat16, device="cuda", gen=gen)
    results = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in args]
        out = ops.gelu_mlp(*leaves, backend="cuda")
        out.backward(dout)
        results.append([out, *(t.grad for t in leaves)])
    for a, b in zip(*results):
        assert torch.equal(a, b)
