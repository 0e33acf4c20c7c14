"""Shared machinery of the kernel parity tests (tests/kernels/test_<op>.py).

Every test is parametrized over (backend, device). A backend that cannot run here is skipped with
the reason pygpt.ops gives. Besides the user-facing backends there is one test-only entry:

    'ext'  the extension's custom op (torch.ops.pygpt.<op>_fwd/bwd with the Python fake functions and
           autograd) called directly on the device, whether the C++ behind it is a hand-written
           kernel or a placeholder. It keeps the op plumbing (schemas, fakes, autograd, opcheck)
           tested before and after the kernels land; 'cpu' and 'cuda' then test the kernels
           through the public op layer.

Parity follows flash-attention: the reference is computed in float64 (for fp32 inputs) or in float32
(for bf16/fp16 inputs) from the same inputs; the backend's error against it must be at most
2x (gradients: 3x) the error of the eager reference run in the backend's own dtype, plus a floor.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from pygpt import _ext, ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The parity dtypes: fp32 and bf16 everywhere, fp16 too where a GPU is present (the CUDA kernels'
# second tensor-core dtype; the CPU kernels' fp16 has its own tests in test_<op>.py).
PARITY_DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if torch.cuda.is_available() else [])


def lowp_dtype(backend: str, device: str):
    """fp32 unless the backend's kernel on this device runs only in 16-bit (then bf16)."""
    return torch.bfloat16 if device == "cuda" and backend in ("cuda", "ext") else torch.float32
BACKENDS = ["eager", "sdpa", "cpu", "cuda", "triton", "ext"]


def backend_params(op: str, backends=BACKENDS):
    """(backend, device) pairs worth a test id; unavailable ones are skipped at run time."""
    out = []
    for b in backends:
        if b == "sdpa" and op != "attention":
            continue
        for d in DEVICES:
            if b in ("cpu", "cuda") and b != d:
                continue
            out.append(pytest.param(b, d, id=f"{b}-{d}"))
    return out


# Under TRITON_INTERPRET=1 (Triton on the CPU, as CI runs it) every program is interpreted in
# Python: only small shapes are affordable, and tl.dot on bf16 is wrong in Triton 3.8/3.9. The
# full shape list and bf16 run where Triton has a GPU.
INTERPRETER_MAX = {"T": 128, "D": 64, "BH": 16, "M": 128, "C": 1024}


def skip_unless_runnable(op: str, backend: str, device: str, dtype=None, **sizes) -> None:
    """Skip (with the reason) unless `backend` can run `op` on `device` at this dtype and size."""
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernels take fp32, fp16 and bf16")
    if backend == "triton" and device == "cpu":
        if dtype == torch.bfloat16 and op in ("attention", "gelu_mlp"):  # the ops built on tl.dot
            pytest.skip("Triton's interpreter computes tl.dot on bf16 wrongly (3.8/3.9); bf16 is tested on a GPU")
        for k, v in sizes.items():
            if v > INTERPRETER_MAX[k]:
                pytest.skip(f"{k}={v} is too slow for the Triton interpreter (max {INTERPRETER_MAX[k]}); run on a GPU")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend in ("cuda", "ext") and device == "cuda":
        why = ops.dtype_reason(op, "cuda", dtype)
        if why is not None:
            pytest.skip(why)
    if backend == "ext":
        if not _ext.loaded():
            pytest.skip(f"pygpt._C not loaded: {_ext.LOAD_ERROR}")
        if device == "cuda" and op not in _ext.kernel_ops("cuda"):
            pytest.skip(f"pygpt._C has no CUDA kernel for {op}")
        return
    why = ops.unavailable_reason(op, backend, device)
    if why is not None:
        pytest.skip(why)


@contextlib.contextmanager
def poisoned_empty():
    """Make every torch.empty (in Python and in C++ kernels) return NaN-filled memory, so an output
    element a kernel forgets to write shows up as NaN instead of a lucky zero."""
    import torch.utils.deterministic as det

    prev_det, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def ref_dtype(dtype):
    """Where the reference is computed: float64 for fp32/fp64 inputs, float32 for bf16/fp16."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


# The floor covers cases where eager is exact by luck (e.g. dq = 0 when T = 1) while a kernel that
# accumulates differently is off by a rounding; it scales with the reference's magnitude.
FLOOR = {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 1e-3, torch.float16: 2e-4}


def max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_parity(name, out, ref_hi, ref_lowp, mult, floor=None):
    """|out - ref_hi| <= mult * |ref_lowp - ref_hi| + floor, elementwise max; NaN/inf fail."""
    assert out.shape == ref_hi.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref_hi.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten output?)"
    floor = FLOOR[out.dtype] * max(1.0, ref_hi.abs().max().item() if ref_hi.numel() else 0.0) if floor is None else floor
    err, base = max_err(out, ref_hi), max_err(ref_lowp, ref_hi)
    assert err <= mult * base + floor, f"{name}: error {err:.3e} > {mult} x eager's {base:.3e} + {floor:.0e}"


def randn(*shape, dtype, device, requires_grad=False, scale=1.0, gen=None):
    t = torch.randn(*shape, generator=gen, dtype=torch.float32).mul_(scale).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


