"""No test parametrised over `cuda` may hand the CUDA attention kernel an fp32 tensor.

The CUDA attention kernel runs on tensor cores in fp16/bf16 only and refuses fp32. A GPU test that
builds an fp32 model on the cuda backend, or passes fp32 to reach some other check first, skips on
every CPU machine and fails only on the first GPU that runs it, which is a lent GPU with a
15-minute budget. Four such tests were found by reading the code before any GPU ran them.

This test runs the cuda-parametrised kernel tests here, without a GPU, under the audit plugin
tests/kernels/cuda_dtype_audit.py (fake cuda tensors; see its docstring) and fails if any of them
ended on the kernel's dtype refusal. A second test proves the audit can fail: it audits a small
file holding the mistakes as they were written before this check existed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_TESTS = ROOT / "tests" / "kernels"

pytest.importorskip("torch")
from pygpt import _ext  # noqa: E402

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason=f"pygpt._C not loaded: {_ext.LOAD_ERROR}")


def audit(test_dir: Path, report: Path, *select: str) -> list[dict]:
    env = dict(os.environ, PYGPT_AUDIT_CUDA_DTYPES=str(report), PYTHONPATH=str(test_dir),
               TRITON_INTERPRET="1")
    env.pop("PYTEST_ADDOPTS", None)
    # Only tests of cuda-device cases that are not the Triton backend's (Triton takes fp32)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "cuda_dtype_audit", "-p", "no:cacheprovider",
           "-k", "cuda and not triton", "--rootdir", str(test_dir), *select]
    r = subprocess.run(cmd, cwd=test_dir, env=env, capture_output=True, text=True, timeout=1200)
    assert report.exists(), f"the audit wrote no report:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(report.read_text())


def test_no_cuda_test_hands_the_cuda_attention_kernel_fp32(tmp_path):
    rows = audit(KERNEL_TESTS, tmp_path / "audit.json", str(KERNEL_TESTS))
    refused = [f"{r['test']}: {r['refused']}" for r in rows if r["refused"]]
    assert not refused, ("these tests would fail on a GPU: they give the CUDA attention kernel a dtype "
                         "it refuses (use kernel_parity.lowp_dtype or autocast):\n" + "\n".join(refused))
    # not vacuous: the audit saw the GPU attention tests reach the kernel, the model tests among them
    reached = [r["test"] for r in rows if r["reached"]]
    assert len(reached) >= 100, f"only {len(reached)} cuda tests reached the CUDA attention kernel"
    assert any("test_model_fused.py::test_gpt_fused_matches_eager" in t for t in reached), reached


BAD_TESTS = '''
import pytest
import torch

from pygpt import ops
from pygpt.model import GPT, GPTConfig


@pytest.mark.parametrize("device", ["cuda"])
def test_dropout_refused_fp32(device):  # the dropout test as it was: the dtype refusal fires first
    q = torch.randn(1, 1, 4, 16, device=device)
    with pytest.raises(ValueError, match="dropout"):
        ops.attention(q, q, q, dropout_p=0.1, backend="cuda")


@pytest.mark.parametrize("device", ["cuda"])
def test_fp32_model_on_cuda_backend(device):  # the model test as it was: an fp32 GPT on cuda
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=1, n_head=2, n_embd=32, dropout=0.0, backend="cuda")
    model = GPT(cfg).to(device)
    idx = torch.zeros(2, 16, dtype=torch.long, device=device)
    model(idx)


@pytest.mark.parametrize("device", ["cuda"])
def test_fine(device):  # bf16 reaches the kernel
    q = torch.randn(1, 1, 4, 16, device=device, dtype=torch.bfloat16)
    ops.attention(q, q, q, backend="cuda")
'''


def test_audit_catches_fp32_given_to_the_cuda_kernel(tmp_path):
    for name in ("conftest.py", "kernel_parity.py", "cuda_dtype_audit.py"):
        shutil.copy(KERNEL_TESTS / name, tmp_path / name)
    (tmp_path / "test_bad.py").write_text(textwrap.dedent(BAD_TESTS))
    rows = {r["test"].split("::")[-1]: r for r in audit(tmp_path, tmp_path / "audit.json", "test_bad.py")}
    assert rows["test_dropout_refused_fp32[cuda]"]["refused"], rows
    assert rows["test_fp32_model_on_cuda_backend[cuda]"]["refused"], rows
    assert not rows["test_fine[cuda]"]["refused"] and rows["test_fine[cuda]"]["reached"], rows
