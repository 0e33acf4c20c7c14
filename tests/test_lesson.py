"""The lecture's "mathematical trick in self-attention" (pygpt.lesson): four ways to aggregate the past."""

from __future__ import annotations

import pytest
import torch

from pygpt.lesson import SingleHeadSelfAttention, v1_loops, v2_matmul, v3_softmax, v4_self_attention

SHAPES = [(4, 8, 2), (2, 1, 3), (3, 33, 5), (1, 64, 16)]


def rand(shape, dtype, seed=0):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_v2_v3_bitwise_equal(shape, dtype):
    x = rand(shape, dtype)
    a, b = v2_matmul(x), v3_softmax(x)
    assert a.dtype == b.dtype == dtype and a.shape == b.shape == shape
    assert torch.equal(a, b)  # both multiply by the same weights 1/(t+1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_v1_agrees_with_v2_to_rounding(shape, dtype, tol):
    # v1 computes sum/n (torch.mean), v2 sum of x·(1/n): equal up to rounding, not bitwise
    x = rand(shape, dtype, seed=1)
    a, b = v1_loops(x), v2_matmul(x)
    assert a.dtype == dtype and a.shape == shape
    assert (a - b).abs().max().item() < tol


@pytest.mark.parametrize("fn", [v1_loops, v2_matmul, v3_softmax])
def test_running_mean_values(fn):
    x = rand((2, 6, 3), torch.float64, seed=2)
    out = fn(x)
    assert torch.equal(out[:, 0], x[:, 0])  # position 0 only sees itself
    for t in range(6):
        torch.testing.assert_close(out[:, t], x[:, : t + 1].mean(dim=1), atol=1e-15, rtol=0)


def test_v3_weights_are_v2_weights():
    T = 7
    tril = torch.tril(torch.ones(T, T))
    wei2 = tril / tril.sum(1, keepdim=True)
    wei3 = torch.softmax(torch.zeros(T, T).masked_fill(tril == 0, float("-inf")), dim=-1)
    assert torch.equal(wei2, wei3)
    assert torch.equal(wei2[3, :4], torch.full((4,), 0.25)) and torch.all(wei2[3, 4:] == 0)


def _v4_head(C, head_size=16, seed=1337, dtype=torch.float32):
    """The head v4_self_attention builds (same seeded initialisation)."""
    g = torch.Generator().manual_seed(seed)
    head = SingleHeadSelfAttention(C, head_size).to(dtype=dtype)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * C ** -0.5)
    return head


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_v4_is_causal(dtype):
    B, T, C = 2, 12, 8
    x = rand((B, T, C), dtype, seed=3)
    base = v4_self_attention(x)
    assert base.shape == (B, T, 16) and base.dtype == dtype
    for t in (0, 1, 5, T - 1):
        x2 = x.clone()
        x2[:, t] += rand((B, C), dtype, seed=100 + t)
        out = v4_self_attention(x2)
        assert torch.equal(out[:, :t], base[:, :t]), f"perturbing position {t} changed an earlier output"
        assert (out[:, t] - base[:, t]).abs().min() > 0, f"perturbing position {t} did not change its own output"


def test_v4_deterministic_and_matches_head():
    x = rand((3, 10, 8), torch.float32, seed=4)
    a, b = v4_self_attention(x), v4_self_attention(x)
    assert torch.equal(a, b)
    with torch.no_grad():
        torch.testing.assert_close(a, _v4_head(8)(x), atol=0, rtol=0)
    assert not torch.equal(v4_self_attention(x, seed=1), a)
    assert v4_self_attention(x, head_size=4).shape == (3, 10, 4)


def test_v4_weighting_is_data_dependent():
    x = rand((2, 10, 8), torch.float64, seed=5)
    head = _v4_head(8, dtype=torch.float64)
    with torch.no_grad():
        out = head(x)
        v = head.value(x)
        uniform = v2_matmul(v)  # what a running mean of the values would give
    torch.testing.assert_close(out[:, 0], v[:, 0], atol=1e-14, rtol=0)  # position 0 attends only to itself
    assert (out[:, 1:] - uniform[:, 1:]).abs().amax(dim=-1).min() > 1e-6  # every later position differs
    # with zero queries every affinity is 0: the softmax gives version 3's uniform weights back
    with torch.no_grad():
        head.query.weight.zero_()
        torch.testing.assert_close(head(x), v3_softmax(v), atol=1e-14, rtol=0)
