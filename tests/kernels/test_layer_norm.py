"""Parity of every layer_norm backend with the float64 reference: y, x+residual, dx, dresidual, dweight, dbias."""

from __future__ import annotations

import pytest
import torch

from pygpt import ops
from pygpt.ops.layer_norm import fused_layer_norm, layer_norm_reference

from kernel_parity import PARITY_DTYPES, assert_parity, lowp_dtype, backend_params, poisoned_empty, randn, ref_dtype, skip_unless_runnable

OP = "layer_norm"
WIDTHS = (1, 7, 128, 768, 1000, 4097)
DTYPES = PARITY_DTYPES


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
    skip_unless_runnable(OP, backend, device, dtype, C=C)
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


# --------------------------------------------------------------------------- kernel-specific checks


@pytest.mark.parametrize("backend,device", backend_params(OP))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("C", (7, 768, 1000))
def test_parity_fp16_fp64(backend, device, dtype, residual, C, gen):
    skip_unless_runnable(OP, backend, device, dtype, C=C)
    x = randn(3, 37, C, dtype=dtype, device=device, gen=gen, scale=2.0) + 3.0
    w = randn(C, dtype=dtype, device=device, gen=gen)
    b = randn(C, dtype=dtype, device=device, gen=gen)
    r = randn(3, 37, C, dtype=dtype, device=device, gen=gen) if residual else None
    check(backend, x, w, b, r, gen)


@pytest.mark.parametrize("backend,device", backend_params(OP, ["cpu", "cuda", "ext"]))
def test_large_mean_statistics(backend, device, gen):
    """Rows with |mean| >> std: a one-pass E[h^2] - E[h]^2 variance would cancel catastrophically."""
    skip_unless_runnable(OP, backend, device)
    x = randn(16, 1000, dtype=torch.float32, device=device, gen=gen) + 1e4
    w = torch.ones(1000, device=device)
    y, h, mean, rstd = torch.ops.pygpt.layer_norm_fwd(x, None, w, None, 1e-5)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(xd.var(-1, unbiased=False) + 1e-5), rtol=1e-3, atol=0)
    assert (y.double().std(-1) - 1).abs().max() < 1e-2


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_statistics_of_rounded_h(residual, gen):
    """bf16: h is rounded to bf16, and y / mean / rstd are those of that rounded h."""
    skip_unless_runnable(OP, "ext", "cpu")
    x = randn(5, 300, dtype=torch.bfloat16, device="cpu", gen=gen, scale=3.0) + 2.0
    r = randn(5, 300, dtype=torch.bfloat16, device="cpu", gen=gen) if residual else None
    w = randn(300, dtype=torch.float32, device="cpu", gen=gen)  # weight in another dtype is allowed
    y, h, mean, rstd = torch.ops.pygpt.layer_norm_fwd(x, r, w, None, 1e-5)
    hh = h if residual else x
    if residual:
        assert h.dtype == torch.bfloat16
        assert torch.equal(h, (x.float() + r.float()).to(torch.bfloat16))
    hf = hh.float()
    torch.testing.assert_close(mean, hf.mean(-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd, 1 / torch.sqrt(hf.var(-1, unbiased=False) + 1e-5), rtol=1e-5, atol=0)
    y_ref = ((hf - mean[:, None]) * rstd[:, None] * w).to(torch.bfloat16)
    assert (y.float() - y_ref.float()).abs().max() <= 2 ** -7 * y_ref.float().abs().max()
    gy = randn(5, 300, dtype=torch.bfloat16, device="cpu", gen=gen)
    _, gw, gb = torch.ops.pygpt.layer_norm_bwd(gy, None, hh, w, mean, rstd)
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32


def test_backward_deterministic_across_thread_counts(gen):
    """dweight/dbias use a fixed row chunking: bitwise the same for 1 and 2 threads."""
    skip_unless_runnable(OP, "ext", "cpu")
    x = randn(1000, 96, dtype=torch.float32, device="cpu", gen=gen)
    w = randn(96, dtype=torch.float32, device="cpu", gen=gen)
    gy = randn(1000, 96, dtype=torch.float32, device="cpu", gen=gen)
    gh = randn(1000, 96, dtype=torch.float32, device="cpu", gen=gen)
    _, _, mean, rstd = torch.ops.pygpt.layer_norm_fwd(x, None, w, None, 1e-5)
    prev = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(torch.ops.pygpt.layer_norm_bwd(gy, gh, x, w, mean, rstd))
    finally:
        torch.set_num_threads(prev)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)


def test_empty_rows():
    skip_unless_runnable(OP, "ext", "cpu")
    x = torch.empty(0, 8)
    w = torch.ones(8)
    y, h, mean, rstd = torch.ops.pygpt.layer_norm_fwd(x, x, w, w, 1e-5)
    assert y.shape == (0, 8) and h.shape == (0, 8) and mean.shape == (0,) and rstd.shape == (0,)
    gx, gw, gb = torch.ops.pygpt.layer_norm_bwd(x, None, x, w, mean, rstd)
    assert gx.shape == (0, 8) and torch.equal(gw, torch.zeros(8)) and torch.equal(gb, torch.zeros(8))


def test_cpp_boundary_errors_more(gen):
    skip_unless_runnable(OP, "ext", "cpu")
    x = randn(4, 8, dtype=torch.float32, device="cpu", gen=gen)
    w = randn(8, dtype=torch.float32, device="cpu", gen=gen)
    f = torch.ops.pygpt.layer_norm_fwd
    with pytest.raises(RuntimeError, match="eps must be finite"):
        f(x, None, w, None, float("inf"))
    with pytest.raises(RuntimeError, match="dtype mismatch: residual is float64 but x is float32"):
        f(x, x.double(), w, None, 1e-5)
    with pytest.raises(RuntimeError, match="dtype mismatch: bias is float64 but weight is float32"):
        f(x, None, w, w.double(), 1e-5)
    with pytest.raises(RuntimeError, match="non-empty last dimension"):
        f(torch.empty(4, 0), None, torch.empty(0), None, 1e-5)
    y, _, mean, rstd = f(x, None, w, None, 1e-5)
    b = torch.ops.pygpt.layer_norm_bwd
    with pytest.raises(RuntimeError, match="mean must have shape"):
        b(y, None, x, w, mean[:3], rstd)
    with pytest.raises(RuntimeError, match="grad_h must have shape"):
        b(y, y[:2], x, w, mean, rstd)
    with pytest.raises(RuntimeError, match="grad_y must have shape"):
        b(y[:, :4], None, x, w, mean, rstd)


@pytest.mark.parametrize("backend,device", backend_params(OP, ["cpu", "cuda", "triton"]))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic(backend, device, dtype, gen):
    """Same inputs twice -> bitwise-equal y, h and all gradients (partial sums reduced in a fixed order)."""
    skip_unless_runnable(OP, backend, device, dtype, C=768, M=4 * 129)
    x, r = (randn(4, 129, 768, dtype=dtype, device=device, gen=gen) for _ in range(2))
    w, b = (randn(768, dtype=dtype, device=device, gen=gen) for _ in range(2))
    gy, gh = (randn(4, 129, 768, dtype=dtype, device=device, gen=gen) for _ in range(2))
    results = []
    for _ in range(2):
        leaves = [t.detach().requires_grad_() for t in (x, w, b, r)]
        y, h = ops.layer_norm(leaves[0], leaves[1], leaves[2], residual=leaves[3], backend=backend)
        torch.autograd.backward((y, h), (gy, gh))
        results.append([y, h, *(t.grad for t in leaves)])
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)
