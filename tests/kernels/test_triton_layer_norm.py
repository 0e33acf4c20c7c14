"""The Triton LayerNorm (pygpt/triton/layer_norm.py) against the float64 reference, through
pygpt.ops.layer_norm(backend='triton'): y, x+residual, dx, dresidual, dweight, dbias.

Runs on CUDA, or on the CPU under TRITON_INTERPRET=1 (slow: small shapes)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)

from pygpt import ops  # noqa: E402
from pygpt.ops.layer_norm import layer_norm_reference  # noqa: E402
from pygpt.triton import layer_norm as tln  # noqa: E402

from kernel_parity import assert_parity, randn, ref_dtype  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
WIDTHS = (1, 7, 128, 768, 1000, 4097)


def check(x, w, b, residual, gen, eps=1e-5):
    """Outputs and every gradient against the float64 (fp16: float32) reference, with the 2x/3x rule."""
    dt = x.dtype
    dy = randn(*x.shape, dtype=dt, device=DEV, gen=gen)
    dh = randn(*x.shape, dtype=dt, device=DEV, gen=gen) if residual is not None else None

    def forward(xs, ws, bs, rs, fn):
        out = fn(xs, ws, bs, eps, rs)
        y, h = out if rs is not None else (out, None)
        loss = (y * dy.to(y.dtype)).sum() + ((h * dh.to(h.dtype)).sum() if h is not None else 0)
        loss.backward()
        return y, h

    def leaves(cast=None):
        return [None if t is None else (t.detach().to(cast) if cast else t.detach()).requires_grad_() for t in (x, w, b, residual)]

    mine, hi, low = leaves(), leaves(ref_dtype(dt)), leaves()
    y, h = forward(*mine, lambda *a: ops.layer_norm(*a[:4], residual=a[4], backend="triton"))
    y_hi, h_hi = forward(*hi, layer_norm_reference)
    y_lo, h_lo = forward(*low, layer_norm_reference)
    assert y.dtype == dt
    assert_parity("y", y, y_hi, y_lo, 2)
    if residual is not None:
        assert h.dtype == dt
        assert_parity("x+residual", h, h_hi, h_lo, 2)
    for name, a, r, lo in zip(("dx", "dweight", "dbias", "dresidual"), mine, hi, low):
        if a is not None:
            assert_parity(name, a.grad, r.grad, lo.grad, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("C", WIDTHS)
def test_parity(C, residual, bias, dtype, gen):
    for rows in ((1,), (3,), (37,)) if C < 2048 else ((1,), (3,)):
        x = randn(*rows, C, dtype=dtype, device=DEV, gen=gen, scale=2.0) + 3.0  # mean far from 0
        w = randn(C, dtype=dtype, device=DEV, gen=gen)
        b = randn(C, dtype=dtype, device=DEV, gen=gen) if bias else None
        r = randn(*rows, C, dtype=dtype, device=DEV, gen=gen) if residual else None
        check(x, w, b, r, gen)


# The backward's parallel row split (pygpt/triton/layer_norm.py, _bwd_split): under the interpreter
# programs get max(16, cdiv(M, 8)) rows, rounded up to the row tile BLOCK_R (8 rows for C <= 64, 4
# for C = 100): M = 37 runs as 16 + 16 + 5 rows (the last chunk short and its tile masked), M = 301 as
# 7 x 40 + 21, M = 1 as one program with one live row of its tile.
SPLIT_ROWS = (1, 37, 301)
SPLIT_WIDTHS = (1, 17, 100)  # 17 and 100: column masking (BLOCK_C = 32, 128)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("C", SPLIT_WIDTHS)
@pytest.mark.parametrize("M", SPLIT_ROWS)
def test_bwd_row_split_parity(M, C, residual, dtype, gen):
    """dx, dresidual, dweight, dbias through the split backward against the float64 (16-bit: float32)
    reference, with kernel_parity's rule (3x eager's error in the input dtype, plus the floor)."""
    rows, G, block_r = tln._bwd_split(M, C, torch.device(DEV))
    assert rows % block_r == 0 and (G - 1) * rows < M <= G * rows
    if M > 1 and DEV == "cpu":  # the cases this test exists for: several programs, a short last chunk
        assert G > 1 and M % rows != 0 and (M % rows) % block_r != 0, (rows, G, block_r)
    x = randn(M, C, dtype=dtype, device=DEV, gen=gen, scale=2.0) + 3.0
    w = randn(C, dtype=dtype, device=DEV, gen=gen)
    b = randn(C, dtype=dtype, device=DEV, gen=gen)
    r = randn(M, C, dtype=dtype, device=DEV, gen=gen) if residual else None
    check(x, w, b, r, gen)


def test_bwd_row_split_deterministic(gen):
    """Two runs of the split backward (several programs, a short last chunk, dh) are bitwise equal."""
    M, C = 37, 100
    x = randn(M, C, dtype=torch.float32, device=DEV, gen=gen) + 3.0
    r = randn(M, C, dtype=torch.float32, device=DEV, gen=gen)
    w = randn(C, dtype=torch.float32, device=DEV, gen=gen)
    _y, h, mean, rstd = torch.ops.pygpt.triton_layer_norm_fwd(x, r, w, None, 1e-5)
    gy = randn(M, C, dtype=torch.float32, device=DEV, gen=gen)
    gh = randn(M, C, dtype=torch.float32, device=DEV, gen=gen)
    a = torch.ops.pygpt.triton_layer_norm_bwd(gy, gh, h, w, mean, rstd)
    b = torch.ops.pygpt.triton_layer_norm_bwd(gy, gh, h, w, mean, rstd)
    for u, v in zip(a, b):
        assert torch.isfinite(u).all()
        assert torch.equal(u, v)


@pytest.mark.parametrize("sms", [1, 108, 132])
@pytest.mark.parametrize("C", [1, 17, 768, 4097, 16384])
def test_bwd_split_shape(C, sms, monkeypatch):
    """The split's arithmetic for GPU-sized problems: every row covered once, no empty program, rows a
    multiple of the row tile, >= 16 rows per program, partial buffers <= 2^22 elements, and several
    programs per SM once M is large."""
    monkeypatch.setattr(tln, "_sm_count", lambda device: sms)
    for M in (1, 5, 37, 1000, 8192, 16896, 100_003, 1 << 20):
        rows, G, block_r = tln._bwd_split(M, C, torch.device("cpu"))
        assert block_r in (1, 2, 4, 8) and rows % block_r == 0 and rows >= tln.BWD_MIN_ROWS
        assert (G - 1) * rows < M <= G * rows  # contiguous chunks cover [0, M), the last one non-empty
        assert G * C <= max(tln.BWD_MAX_PARTIAL, C)  # bounded partials (one row at least)
        if M >= 16 * tln.BWD_PROGRAMS_PER_SM * sms and G * C * 2 <= tln.BWD_MAX_PARTIAL:
            assert G >= 4 * sms, (M, C, sms, rows, G)


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_non_contiguous_and_3d(residual, gen):
    big = randn(2, 10, 2 * 128, dtype=torch.float32, device=DEV, gen=gen)
    x = big[:, ::3, 1::2]  # strided rows and columns, 3-d
    assert not x.is_contiguous()
    w = randn(128, dtype=torch.float32, device=DEV, gen=gen)
    b = randn(128, dtype=torch.float32, device=DEV, gen=gen)
    r = randn(*x.shape, dtype=torch.float32, device=DEV, gen=gen).transpose(0, 1).contiguous().transpose(0, 1) if residual else None
    check(x, w, b, r, gen)


def test_statistics_and_determinism(gen):
    """mean/rstd are float32 and stable for |mean| >> std; dweight/dbias are bitwise reproducible."""
    x = randn(40, 300, dtype=torch.float32, device=DEV, gen=gen) + 1e4
    w = randn(300, dtype=torch.float32, device=DEV, gen=gen)
    y, h, mean, rstd = torch.ops.pygpt.triton_layer_norm_fwd(x, None, w, None, 1e-5)
    assert h.shape == (0,) and mean.dtype == torch.float32 and rstd.shape == (40,)
    xd = x.double()
    torch.testing.assert_close(mean.double(), xd.mean(-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), 1 / torch.sqrt(xd.var(-1, unbiased=False) + 1e-5), rtol=1e-3, atol=0)
    gy = randn(40, 300, dtype=torch.float32, device=DEV, gen=gen)
    a = torch.ops.pygpt.triton_layer_norm_bwd(gy, None, x, w, mean, rstd)
    b = torch.ops.pygpt.triton_layer_norm_bwd(gy, None, x, w, mean, rstd)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_too_wide_and_empty():
    with pytest.raises(ValueError, match="C = 16385"):
        ops.layer_norm(torch.zeros(1, 16385, device=DEV), torch.ones(16385, device=DEV), backend="triton")
    x = torch.empty(0, 8, device=DEV)
    w = torch.ones(8, device=DEV)
    y, h, mean, rstd = torch.ops.pygpt.triton_layer_norm_fwd(x, x, w, w, 1e-5)
    assert y.shape == (0, 8) and h.shape == (0, 8) and mean.shape == (0,)
    gx, gw, gb = torch.ops.pygpt.triton_layer_norm_bwd(x, None, x, w, mean, rstd)
    assert gx.shape == (0, 8) and torch.equal(gw, torch.zeros(8, device=DEV)) and torch.equal(gb, torch.zeros(8, device=DEV))


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_opcheck(residual, gen):
    x = randn(2, 3, 9, dtype=torch.float32, device=DEV, requires_grad=True, gen=gen)
    w = randn(9, dtype=torch.float32, device=DEV, requires_grad=True, gen=gen)
    b = randn(9, dtype=torch.float32, device=DEV, requires_grad=True, gen=gen)
    r = randn(2, 3, 9, dtype=torch.float32, device=DEV, requires_grad=True, gen=gen) if residual else None
    torch.library.opcheck(tln.triton_layer_norm_fwd, (x, r, w, b, 1e-5))
