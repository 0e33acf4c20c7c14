"""The whole GPT on a fused backend: same logits and gradients as eager, and torch.compile traces it."""

from __future__ import annotations

import pytest
import torch

from pygpt import ops
from pygpt.model import GPT, GPTConfig

from kernel_parity import DEVICES


def _need_all(backend, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    missing = {op: ops.unavailable_reason(op, backend, device) for op in ops.OPS}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        pytest.skip("; ".join(f"{k}: {v}" for k, v in missing.items()))


def _pair(backend, device, **kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=65, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0, backend="eager")
    cfg.update(kw)
    ref = GPT(GPTConfig(**cfg)).to(device)
    fused = GPT(GPTConfig(**{**cfg, "backend": backend})).to(device)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton", "auto"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gpt_fused_matches_eager(backend, device, bias):
    _need_all(backend, device)
    ref, fused = _pair(backend, device, bias=bias)
    idx = torch.randint(0, 65, (3, 32), device=device)
    lr, loss_r = ref(idx, idx)
    lf, loss_f = fused(idx, idx)
    loss_r.backward()
    loss_f.backward()
    torch.testing.assert_close(lf, lr, rtol=1e-4, atol=1e-4)
    for (name, pr), pf in zip(ref.named_parameters(), fused.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["cpu", "cuda", "triton"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_traces_fused_ops(backend, device):
    """fullgraph=True: the custom ops and their autograd go through Dynamo/AOTAutograd without a break."""
    _need_all(backend, device)
    ref, fused = _pair(backend, device)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    idx = torch.randint(0, 65, (2, 32), device=device)
    logits, loss = compiled(idx, idx)
    loss.backward()
    lr, loss_r = ref(idx, idx)
    loss_r.backward()
    torch.testing.assert_close(logits, lr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.lm_head.weight.grad, ref.lm_head.weight.grad, rtol=1e-3, atol=1e-5)
