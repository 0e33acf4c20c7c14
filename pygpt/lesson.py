"""The lecture's "mathematical trick in self-attention": four ways for token t to aggregate tokens 0..t.

Each function maps x (B, T, C) to out[b, t] that depends only on x[b, :t+1] (versions 1-3 keep
C channels; version 4 returns head_size channels, the values of a single head).
Versions 1-3 compute the same thing, the running mean of the past; version 4 replaces the
uniform weights with data-dependent ones (single-head self-attention).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F


def v1_loops(x):
    """Version 1: for every batch row and time step, average the vectors up to and including t."""
    B, T, C = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            out[b, t] = torch.mean(x[b, : t + 1], dim=0)
    return out


def v2_matmul(x):
    """Version 2: the same average as a matrix multiply with a row-normalised lower-triangular matrix."""
    T = x.size(1)
    wei = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))
    wei = wei / wei.sum(1, keepdim=True)  # row t holds 1/(t+1) in columns 0..t
    return wei @ x  # (T, T) @ (B, T, C) broadcasts to (B, T, C)


def v3_softmax(x):
    """Version 3: zeros where allowed, -inf in the future, softmax: the same weights, attention's form."""
    T = x.size(1)
    tril = torch.tril(torch.ones(T, T, device=x.device))
    wei = torch.zeros(T, T, dtype=x.dtype, device=x.device)
    wei = wei.masked_fill(tril == 0, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    return wei @ x


class SingleHeadSelfAttention(nn.Module):
    """Version 4: the weights come from the data: every token emits a query and a key, and
    affinity(t, s) = q_t · k_s / sqrt(head_size), masked to s <= t and softmax-normalised."""

    def __init__(self, n_embd: int, head_size: int):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)

    def forward(self, x):
        T = x.size(1)
        k, q = self.key(x), self.query(x)
        wei = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, T)
        tril = torch.tril(torch.ones(T, T, device=x.device))
        wei = wei.masked_fill(tril == 0, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        return wei @ self.value(x)


def v4_self_attention(x, head_size: int = 16, seed: int = 1337):
    """Version 4 as a function: a freshly initialised (seeded) single head applied to x."""
    g = torch.Generator().manual_seed(seed)
    head = SingleHeadSelfAttention(x.size(-1), head_size).to(dtype=x.dtype)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * x.size(-1) ** -0.5)
    return head.to(x.device)(x)
