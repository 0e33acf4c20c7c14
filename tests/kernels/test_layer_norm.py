"""Parity of every layer_norm backend with the float64 reference: y, x+residual, dx, dresidual, dweight, dbias."""

from __future__ import annotations

import pytest
import torch

from pygpt import ops
from pygpt.ops.layer_norm import fused_layer_norm, layer_norm_reference

from kernel_parity import assert_parity, backend_params, poisoned_empty, randn, ref_dtype, skip_unless_runnable

OP = "layer_norm"
WIDTHS = (1, 7, 128, 768, 1000, 4097)
DTYPES = [torch.float32, torch.bfloat16]


def run(backend, x, w, b, eps, residual):
    if backend == "ext":
        return fused_layer_norm(x, w, b, eps, residual)
    return ops.layer_norm(x, w, b, eps, residual=residual, backend=backend)


def check(backend, x, w, b, residual, gen, eps=1e-5):
    """Outputs and every gradient against the reference; the loss touches both outputs (y and x+res)."""
    dev, dt = x.device, x.dtype
    dy = randn(*x.shape, dtype=dt, device=dev, gen=gen)
    dh = randn(*x.shape, dtype=dt, device=dev, gen=gen) if residual is not None else None

    def forward(xs, ws, bs, rs, fn):
        out = fn(xs, ws, bs, eps, rs)
        y, h = out if rs is not None else (out, None)
        loss = (y * dy.to(y.dtype)).sum() + ((h * dh.to(h.dtype)).sum() if h is not None else 0)
        loss.backward()
        return y, h

    def leaves(cast=None):
        ts = [x, w, b, residual]
        return [None if t is None else (t.detach().to(cast) if cast else t.detach()).requires_grad_() for t in ts]

    mine, hi, low = leaves(), leaves(ref_dtype(dt)), leaves()
    with poisoned_empty():
        y, h = forward(*mine, lambda *a: run(backend, *a))
    y_hi, h_hi = forward(*hi, layer_norm_reference)
    y_lo, h_lo = forward(*low, layer_norm_reference)
    assert y.dtype == dt
    assert_parity("y", y, y_hi, y_lo, 2)
    if residual is not None:
        assert_parity("x+residual", h, h_hi, h_lo, 2)
    for name, a, r, lo in zip(("dx", "dweight", "dbias", "dresidual"), mine, hi, low):
        if a is not None:
            assert_parity(name, a.grad, r.grad, lo.grad, 3)


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("C", WIDTHS)
def test_parity(backend, device, dtype, residual, C, gen):
    skip_unless_runnable(OP, backend, device)
    rows = (3, 37) if C < 2048 else (2, 5)
    x = randn(*rows, C, dtype=dtype, device=device, gen=gen, scale=2.0)
    x = x + 3.0  # a mean far from zero: naive one-pass variance would lose digits here
    w = randn(C, dtype=dtype, device=device, gen=gen)
    b = randn(C, dtype=dtype, device=device, gen=gen)
    r = randn(*rows, C, dtype=dtype, device=device, gen=gen) if residual else None
    check(backend, x, w, b, r, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
def test_no_bias_and_non_contiguous(backend, device, gen):
    skip_unless_runnable(OP, backend, device)
    big = randn(64, 2 * 768, dtype=torch.float32, device=device, gen=gen)
    x = big[::2, 1::2]  # strided rows and columns
    assert not x.is_contiguous()
    w = randn(768, dtype=torch.float32, device=device, gen=gen)
    check(backend, x, w, None, randn(32, 768, dtype=torch.float32, device=device, gen=gen), gen)
    check(backend, x, w, None, None, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP))
def test_single_row_and_3d(backend, device, gen):
    skip_unless_runnable(OP, backend, device)
    for shape in ((1, 1000), (2, 3, 5, 64)):
        x = randn(*shape, dtype=torch.float32, device=device, gen=gen)
        w = randn(shape[-1], dtype=torch.float32, device=device, gen=gen)
        check(backend, x, w, w.detach().clone(), randn(*shape, dtype=torch.float32, device=device, gen=gen), gen)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_opcheck(device, residual, bias, gen):
    skip_unless_runnable(OP, "ext", device)
    x = randn(3, 5, 33, dtype=torch.float32, device=device, requires_grad=True, gen=gen)
    w = randn(33, dtype=torch.float32, device=device, requires_grad=True, gen=gen)
    b = randn(33, dtype=torch.float32, device=device, requires_grad=True, gen=gen) if bias else None
    r = randn(3, 5, 33, dtype=torch.float32, device=device, requires_grad=True, gen=gen) if residual else None
    torch.library.opcheck(torch.ops.pygpt.layer_norm_fwd.default, (x, r, w, b, 1e-5))
    y, h, mean, rstd = torch.ops.pygpt.layer_norm_fwd(x.detach(), None if r is None else r.detach(), w.detach(), None, 1e-5)
    hh = h if residual else x.detach()
    gh = torch.randn_like(y) if residual else None
    torch.library.opcheck(torch.ops.pygpt.layer_norm_bwd.default, (torch.randn_like(y), gh, hh, w.detach(), mean, rstd))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_gradcheck_fp64(residual, gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x = randn(4, 7, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen)
    w = randn(7, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen)
    b = randn(7, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen)
    r = randn(4, 7, dtype=torch.float64, device="cpu", requires_grad=True, gen=gen)
    if residual:
        assert torch.autograd.gradcheck(lambda *a: fused_layer_norm(a[0], a[1], a[2], 1e-5, a[3]), (x, w, b, r))
    else:
        assert torch.autograd.gradcheck(lambda *a: fused_layer_norm(a[0], a[1], a[2], 1e-5), (x, w, b))


def test_cpp_boundary_errors(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x = randn(4, 8, dtype=torch.float32, device="cpu", gen=gen)
    w = randn(8, dtype=torch.float32, device="cpu", gen=gen)
    f = torch.ops.pygpt.layer_norm_fwd
    with pytest.raises(RuntimeError, match="weight"):
        f(x, None, w[:5], None, 1e-5)
    with pytest.raises(RuntimeError, match="residual"):
        f(x, x[:2], w, None, 1e-5)
    with pytest.raises(RuntimeError, match="eps"):
        f(x, None, w, None, -1.0)


def test_python_boundary_errors(gen):
    x = randn(4, 8, dtype=torch.float32, device="cpu", gen=gen)
    w = randn(8, dtype=torch.float32, device="cpu", gen=gen)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        ops.layer_norm(x, w[:5])
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        ops.layer_norm(x, w, w[:3])
    with pytest.raises(ValueError, match=r"residual must have x's shape \(4, 8\)"):
        ops.layer_norm(x, w, residual=x[:2])
    with pytest.raises(ValueError, match="residual is torch.float64"):
        ops.layer_norm(x, w, residual=x.double())
    with pytest.raises(ValueError, match="eps .* -1"):
        ops.layer_norm(x, w, eps=-1)
    with pytest.raises(ValueError, match="sdpa is torch's attention"):
        ops.layer_norm(x, w, backend="sdpa")
