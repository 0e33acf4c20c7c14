"""Tests of the C++ extension pygpt._C: build_info, op registration, and the CPU
implementations of the six pygpt ops against pure-PyTorch math (forward) and
torch.autograd (backward), plus the boundary checks' error messages.

The CPU ops are composite-ATen placeholders for now; these tests pin their
semantics so the hand-written kernels that replace them must match.
"""
import math

import pytest
import torch

try:
    import pygpt._C as _C
except ImportError as e:  # pragma: no cover - depends on the build
    pytest.skip(
        f"pygpt._C is not built ({e}); build it with "
        "`pip install --no-build-isolation -e .`",
        allow_module_level=True,
    )

OPS = (
    "attention_fwd",
    "attention_bwd",
    "layer_norm_fwd",
    "layer_norm_bwd",
    "gelu_mlp_fwd",
    "gelu_mlp_bwd",
)
DT = torch.float64


def ops():
    return torch.ops.pygpt


def close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- build_info


def test_build_info_keys_and_types():
    info = _C.build_info()
    assert set(info) == {"cuda", "cuda_version", "cuda_archs", "cublaslt", "compiler", "torch", "kernels"}
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cublaslt"], bool) and (info["cuda"] or not info["cublaslt"])
    assert info["cuda_version"] is None or isinstance(info["cuda_version"], str)
    assert isinstance(info["cuda_archs"], list)
    assert all(isinstance(a, str) and a.startswith("sm_") for a in info["cuda_archs"])
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["torch"], str)
    assert info["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["kernels"], dict)
    assert isinstance(info["kernels"]["cpu"], list)
    assert isinstance(info["kernels"]["cuda"], list)
    for device_ops in info["kernels"].values():
        assert set(device_ops) <= {"attention", "layer_norm", "gelu_mlp"}
    if info["cuda"]:
        assert isinstance(info["cuda_version"], str) and info["cuda_archs"]
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == []
        assert info["kernels"]["cuda"] == []


@pytest.mark.skipif(not torch.version.cuda, reason="torch built without CUDA")
def test_build_info_cuda_build():
    info = _C.build_info()
    if not info["cuda"]:
        pytest.skip("pygpt._C was built CPU-only (PYGPT_NO_CUDA=1 or no nvcc)")
    assert info["cuda_archs"], "a CUDA build must report its compiled architectures"
    assert info["cuda_version"].split(".")[0].isdigit()


@pytest.mark.parametrize("op", OPS)
def test_ops_registered(op):
    assert hasattr(ops(), op)
    assert callable(getattr(ops(), op))


# --------------------------------------------------------------------------- attention


def attention_ref(q, k, v, causal, scale):
    s = (q @ k.transpose(-2, -1)) * scale
    if causal:
        tq, tk = s.shape[-2:]
        mask = torch.ones(tq, tk, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v, torch.logsumexp(s, dim=-1)


@pytest.mark.parametrize(
    "causal,tq,tk", [(False, 5, 5), (True, 5, 5), (False, 3, 7), (False, 6, 2)]
)
def test_attention_fwd_bwd(causal, tq, tk):
    g = torch.Generator().manual_seed(0)
    B, H, D = 2, 3, 8
    q = torch.randn(B, H, tq, D, dtype=DT, generator=g, requires_grad=True)
    k = torch.randn(B, H, tk, D, dtype=DT, generator=g, requires_grad=True)
    v = torch.randn(B, H, tk, D, dtype=DT, generator=g, requires_grad=True)
    scale = 1.0 / math.sqrt(D)

    out, lse = ops().attention_fwd(q.detach(), k.detach(), v.detach(), causal, scale)
    ref_out, ref_lse = attention_ref(q, k, v, causal, scale)
    assert out.shape == (B, H, tq, D) and out.dtype == DT and out.is_contiguous()
    assert lse.shape == (B, H, tq) and lse.dtype == torch.float64
    close(out, ref_out.detach())
    close(lse, ref_lse.detach())

    grad_out = torch.randn(B, H, tq, D, dtype=DT, generator=g)
    ref_out.backward(grad_out)
    dq, dk, dv = ops().attention_bwd(grad_out, q.detach(), k.detach(), v.detach(), out, lse, causal, scale)
    close(dq, q.grad)
    close(dk, k.grad)
    close(dv, v.grad)


def test_attention_float32_lse_dtype():
    q = torch.randn(1, 2, 4, 8)
    out, lse = ops().attention_fwd(q, q, q, True, 0.5)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32


# --------------------------------------------------------------------------- layer_norm


@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("with_grad_h", [False, True])
def test_layer_norm_fwd_bwd(with_residual, with_grad_h):
    g = torch.Generator().manual_seed(1)
    shape, C, eps = (2, 3, 16), 16, 1e-5
    x = torch.randn(*shape, dtype=DT, generator=g, requires_grad=True)
    r = torch.randn(*shape, dtype=DT, generator=g, requires_grad=True)
    w = torch.randn(C, dtype=DT, generator=g, requires_grad=True)
    b = torch.randn(C, dtype=DT, generator=g, requires_grad=True)

    y, h, mean, rstd = ops().layer_norm_fwd(
        x.detach(), r.detach() if with_residual else None, w.detach(), b.detach(), eps
    )
    h_ref = x + r if with_residual else x
    y_ref = torch.nn.functional.layer_norm(h_ref, (C,), w, b, eps)
    close(y, y_ref.detach())
    assert y.dtype == DT
    if with_residual:
        close(h, h_ref.detach())
    else:
        assert h.shape == (0,) and h.dtype == DT
    hd = h_ref.detach().reshape(-1, C)
    assert mean.shape == (6,) and rstd.shape == (6,) and mean.dtype == torch.float64
    close(mean, hd.mean(-1))
    close(rstd, 1.0 / torch.sqrt(hd.var(-1, unbiased=False) + eps))

    grad_y = torch.randn(*shape, dtype=DT, generator=g)
    grad_h = torch.randn(*shape, dtype=DT, generator=g) if with_grad_h else None
    # d/dh of  sum(y * grad_y) + sum(h * grad_h)  (grad_h: h's own downstream use).
    loss = (y_ref * grad_y).sum()
    if with_grad_h:
        loss = loss + (h_ref * grad_h).sum()
    loss.backward()
    h_saved = h if with_residual else x.detach()
    gx, gw, gb = ops().layer_norm_bwd(grad_y, grad_h, h_saved, w.detach(), mean, rstd)
    close(gx, x.grad)
    if with_residual:
        close(gx, r.grad)
    close(gw, w.grad)
    close(gb, b.grad)
    assert gw.shape == (C,) and gb.shape == (C,)


def test_layer_norm_without_bias_returns_grad_bias():
    x = torch.randn(4, 8, dtype=DT)
    w = torch.ones(8, dtype=DT)
    y, h, mean, rstd = ops().layer_norm_fwd(x, None, w, None, 1e-5)
    close(y, torch.nn.functional.layer_norm(x, (8,), w, None, 1e-5))
    gy = torch.randn(4, 8, dtype=DT)
    _, gw, gb = ops().layer_norm_bwd(gy, None, x, w, mean, rstd)
    close(gb, gy.sum(0))


# --------------------------------------------------------------------------- gelu_mlp


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_gelu_mlp_fwd_bwd(approximate, bias):
    g = torch.Generator().manual_seed(2)
    C, Hd = 8, 32
    x = torch.randn(2, 5, C, dtype=DT, generator=g, requires_grad=True)
    w_fc = torch.randn(Hd, C, dtype=DT, generator=g, requires_grad=True)
    b_fc = torch.randn(Hd, dtype=DT, generator=g, requires_grad=True)
    w_proj = torch.randn(C, Hd, dtype=DT, generator=g, requires_grad=True)
    b_proj = torch.randn(C, dtype=DT, generator=g, requires_grad=True)
    F = torch.nn.functional

    pre_ref = F.linear(x, w_fc, b_fc if bias else None)
    pre_ref.retain_grad()
    out_ref = F.linear(F.gelu(pre_ref, approximate=approximate), w_proj, b_proj if bias else None)
    out, pre = ops().gelu_mlp_fwd(
        x.detach(), w_fc.detach(), b_fc.detach() if bias else None,
        w_proj.detach(), b_proj.detach() if bias else None, approximate,
    )
    assert out.shape == (2, 5, C) and pre.shape == (2, 5, Hd)
    close(out, out_ref.detach())
    close(pre, pre_ref.detach())

    grad_out = torch.randn(2, 5, C, dtype=DT, generator=g)
    out_ref.backward(grad_out)
    gx, gwf, gbf, gwp, gbp = ops().gelu_mlp_bwd(
        grad_out, x.detach(), pre, w_fc.detach(), w_proj.detach(), approximate
    )
    close(gx, x.grad)
    close(gwf, w_fc.grad)
    close(gwp, w_proj.grad)
    assert gbf.shape == (Hd,) and gbp.shape == (C,)
    close(gbf, pre_ref.grad.sum((0, 1)))  # dL/db_fc = sum of dL/dpre, bias or not
    close(gbp, grad_out.sum((0, 1)))


# --------------------------------------------------------------------------- bad inputs


def _raises(match, fn, *args):
    with pytest.raises(RuntimeError, match=match):
        fn(*args)


def test_attention_rejects_bad_inputs():
    q = torch.randn(2, 3, 4, 8)
    k = torch.randn(2, 3, 6, 8)
    _raises(r"q must be a 4-D \(B, H, T, D\) tensor, got 3-D tensor of shape \[2, 3, 4\]",
            ops().attention_fwd, torch.randn(2, 3, 4), q, q, False, 1.0)
    _raises(r"dtype mismatch: k is float64 but q is float32",
            ops().attention_fwd, q, q.double(), q, False, 1.0)
    _raises(r"causal attention requires Tq == Tk, got Tq=4, Tk=6",
            ops().attention_fwd, q, k, k, True, 1.0)
    _raises(r"head dim D of q, k, v must match",
            ops().attention_fwd, q, torch.randn(2, 3, 4, 4), q, False, 1.0)
    _raises(r"batch/head dims", ops().attention_fwd, q, torch.randn(2, 2, 4, 8), q, False, 1.0)
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        _raises(r"scale must be finite and > 0", ops().attention_fwd, q, q, q, False, bad)
    _raises(r"unsupported dtype int64 for q",
            ops().attention_fwd, q.long(), q.long(), q.long(), False, 1.0)


def test_layer_norm_rejects_bad_inputs():
    x = torch.randn(3, 8)
    w = torch.ones(8)
    _raises(r"weight must have shape \[8\]", ops().layer_norm_fwd, x, None, torch.ones(7), None, 1e-5)
    _raises(r"residual must have shape \[3, 8\]",
            ops().layer_norm_fwd, x, torch.randn(3, 7), w, None, 1e-5)
    _raises(r"eps must be finite and > 0", ops().layer_norm_fwd, x, None, w, None, 0.0)
    _raises(r"eps must be finite and > 0", ops().layer_norm_fwd, x, None, w, None, float("nan"))
    _raises(r"unsupported dtype int64 for x", ops().layer_norm_fwd, x.long(), None, w, None, 1e-5)


def test_gelu_mlp_rejects_bad_inputs():
    x = torch.randn(2, 8)
    w_fc, w_proj = torch.randn(32, 8), torch.randn(8, 32)
    _raises(r'approximate must be "tanh" or "none", got "erf"',
            ops().gelu_mlp_fwd, x, w_fc, None, w_proj, None, "erf")
    _raises(r"w_fc must have shape \(Hd, C\) with C = x.shape\[-1\] = 8",
            ops().gelu_mlp_fwd, x, torch.randn(32, 7), None, w_proj, None, "tanh")
    _raises(r"w_proj must have shape \[8, 32\]",
            ops().gelu_mlp_fwd, x, w_fc, None, torch.randn(8, 16), None, "tanh")
    _raises(r"b_fc must have shape \[32\]",
            ops().gelu_mlp_fwd, x, w_fc, torch.randn(8), w_proj, None, "none")
    _raises(r"dtype mismatch: w_fc is float64 but x is float32",
            ops().gelu_mlp_fwd, x, w_fc.double(), None, w_proj, None, "none")
    _raises(r'approximate must be "tanh" or "none", got "fast"',
            ops().gelu_mlp_bwd, x, x, torch.randn(2, 32), w_fc, w_proj, "fast")
