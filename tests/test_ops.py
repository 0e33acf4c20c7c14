"""The op layer's routing that does not depend on a kernel: per-dtype backend choice and autocast."""

from __future__ import annotations

import pytest
import torch

from pygpt import _ext, ops
from pygpt.ops import _backends


def test_dtype_reason():
    assert ops.dtype_reason("attention", "cuda", torch.bfloat16) is None
    assert ops.dtype_reason("attention", "cuda", torch.float16) is None
    why = ops.dtype_reason("attention", "cuda", torch.float32)
    assert "float16, bfloat16" in why and "float32" in why
    assert ops.dtype_reason("attention", "cpu", torch.float32) is None
    assert ops.dtype_reason("layer_norm", "cuda", torch.float32) is None


@pytest.fixture
def cpu_attention_fp16_only(monkeypatch):
    """Pretend the cpu attention kernel took fp16 only (the CUDA kernel's kind of limit), on the CPU."""
    if ops.unavailable_reason("attention", "cpu", "cpu") is not None:
        pytest.skip("the cpu backend is not built")
    monkeypatch.setitem(_backends.DTYPES, ("attention", "cpu"), (torch.float16,))


def test_explicit_backend_with_unsupported_dtype_is_a_clear_error(cpu_attention_fp16_only):
    with pytest.raises(ops.BackendUnavailable, match="takes float16, not float32"):
        ops.resolve("attention", "cpu", "cpu", torch.float32)
    assert ops.resolve("attention", "cpu", "cpu", torch.float16) == "cpu"


def test_auto_skips_a_backend_without_the_dtype(cpu_attention_fp16_only):
    # 'auto' on the CPU has no other fused backend: a clear error naming the dtype
    with pytest.raises(ops.BackendUnavailable, match="float32"):
        ops.resolve("attention", "auto", "cpu", torch.float32)
    assert ops.resolve("attention", "auto", "cpu", torch.float16) == "cpu"


def test_autocast_inputs_cast_like_torch_matmuls():
    x = torch.randn(3, 4)
    assert ops._backends.autocast_inputs("cpu", x, None)[0] is x  # autocast off: untouched
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, none, i = ops._backends.autocast_inputs("cpu", x, None, torch.arange(3))
    assert a.dtype == torch.bfloat16 and none is None and i.dtype == torch.int64


@pytest.mark.skipif(not _ext.loaded(), reason="pygpt._C not built")
def test_fused_gelu_mlp_under_autocast_runs_in_the_autocast_dtype():
    """Under autocast F.linear computes in bf16; the fused op must see bf16 too (not fp32 weights)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 16, generator=g, requires_grad=True)
    w1, b1 = torch.randn(64, 16, generator=g, requires_grad=True), torch.randn(64, generator=g, requires_grad=True)
    w2, b2 = torch.randn(16, 64, generator=g, requires_grad=True), torch.randn(16, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.gelu_mlp(x, w1, b1, w2, b2, backend="cpu")
        ref = ops.gelu_mlp(x, w1, b1, w2, b2, backend="eager")
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=0.1, rtol=0.05)
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32 and w1.grad.dtype == torch.float32  # grads flow back through the cast
