"""A pytest plugin that runs the GPU-parametrised kernel tests on a machine WITHOUT a GPU, to find
tests that would hand the CUDA attention kernel a tensor it refuses (fp32: the kernel runs on tensor
cores in fp16/bf16 only). Such a test passes its collection here, skips on every CPU run, and fails
only on the first GPU that runs it: the costliest place to learn about it.

    PYGPT_AUDIT_CUDA_DTYPES=report.json PYTHONPATH=tests/kernels \\
        python -m pytest -p cuda_dtype_audit tests/kernels -k cuda

How: torch.cuda.is_available() is made to answer True (so kernel_parity collects the cuda
parameters and fp16), the cuda and triton backends are declared available, and every test whose
id names cuda runs under torch's FakeTensorMode, in which a tensor on "cuda" is a shape, a dtype and
a device with no memory behind it (the ops' fake functions compute the output metadata). The model
is built outside fake mode (real CPU parameters; `.to("cuda")` then makes them fake). Tests fail
here for many harmless reasons (no numbers: `.item()` on a fake tensor, Triton has no device); the
audit records only two things per test:

  refused  the test ended on the CUDA attention kernel's dtype refusal: `pygpt.ops` raising
           BackendUnavailable for it, or the extension op being called on a cuda tensor of another
           dtype than fp16/bf16 (the C++ TORCH_CHECK the real kernel would raise, raised here
           by a wrapper around `fused_attention`). A refusal the test expects (inside
           pytest.raises) is caught by the test and does not end it, so it is not counted.
  reached  the test got as far as calling the CUDA attention kernel with a dtype it takes (the
           audit is not vacuous: the report counts these).

The report (JSON) lists every audited test with both flags; tests/test_gpu_test_dtypes.py reads it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

REPORT = os.environ.get("PYGPT_AUDIT_CUDA_DTYPES")
CUDA_ATTENTION_DTYPES = (torch.float16, torch.bfloat16)
_REFUSAL_TEXT = "the CUDA attention kernel takes float16/bfloat16"
# ours (the extension's TORCH_CHECK, stood in for) and pygpt.ops' BackendUnavailable for that dtype
_REFUSAL_TEXTS = (_REFUSAL_TEXT, "the cuda attention kernel takes")
_state = {"current": None, "reached": set(), "refused": {}, "audited": []}


class CudaDtypeRefused(RuntimeError):
    """What the CUDA attention kernel's TORCH_CHECK would raise."""


def _install():
    import sys

    real_available = torch.cuda.is_available

    def is_available():
        # True for the tests (kernel_parity.DEVICES, skips) and for torch.autocast (which would
        # switch itself off); the rest of torch (FakeTensorMode among it) keeps the real answer,
        # or it would try to initialise a driver that is not there
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("torch") and not caller.startswith(("torch.amp", "torch.cuda.amp")):
            return real_available()
        return True  # tests, pygpt and autocast (torch.amp, torch.cuda.amp.common) see a GPU

    torch.cuda.is_available = is_available
    torch.cuda.is_bf16_supported = lambda *a, **kw: True  # autocast(dtype=bfloat16) asks

    import importlib

    from pygpt import _ext
    from pygpt.ops import _backends

    attention_mod = importlib.import_module("pygpt.ops.attention")  # the module (pygpt.ops.attention is also the op)

    real_reason = _backends._reason

    def reason(op, backend, device_type):
        if device_type == "cuda" and backend in ("cuda", "triton") and _ext.loaded():
            return None  # declared available: the fake functions stand in for the kernels
        return real_reason(op, backend, device_type)

    _backends._reason = reason
    _backends._REASONS.clear()
    for key in list(_backends._RESOLVED):
        _backends._RESOLVED[key] = _backends._resolve_or_message(*key)

    real_fused = attention_mod.fused_attention

    def fused_attention(q, k, v, causal, scale):
        if q.device.type == "cuda":
            if q.dtype not in CUDA_ATTENTION_DTYPES:
                raise CudaDtypeRefused(f"{_REFUSAL_TEXT}, got {q.dtype}")
            if _state["current"] is not None:
                _state["reached"].add(_state["current"])
        return real_fused(q, k, v, causal, scale)

    attention_mod.fused_attention = fused_attention

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from pygpt import model as model_mod

    real_init = model_mod.GPT.__init__

    def gpt_init(self, *a, **kw):
        with unset_fake_temporarily():  # real CPU parameters; .to("cuda") fakes them
            real_init(self, *a, **kw)

    model_mod.GPT.__init__ = gpt_init

    real_backward = torch.autograd.backward

    def backward(tensors, grad_tensors=None, *a, **kw):
        # The autograd engine cannot run on fake cuda tensors (it asks the driver for a context).
        # The audit needs only the forward calls, so a backward here gives every leaf a zero
        # gradient (tests go on to their next forward) instead of running the graph.
        tensors = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        if not any(getattr(t, "device", None) is not None and t.device.type == "cuda" for t in tensors):
            return real_backward(tensors, grad_tensors, *a, **kw)
        stack, seen = [t.grad_fn for t in tensors if t.grad_fn is not None], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            var = getattr(fn, "variable", None)  # an AccumulateGrad node: its leaf
            if var is not None and var.grad is None:
                var.grad = torch.zeros_like(var)
            stack.extend(f for f, _ in fn.next_functions)

    torch.autograd.backward = backward


def _is_cuda_test(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return params.get("device") == "cuda" or "cuda" in item.name


def _refusal(excinfo) -> str | None:
    """The refusal this test ended on: the exception itself or one it was raised while handling
    (pytest.raises(ValueError, match="dropout") that met the dtype refusal instead fails with an
    AssertionError whose context is the refusal; torch.compile wraps it in its own errors)."""
    e, seen = excinfo.value if excinfo is not None else None, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        # torch.compile re-raises what it met as its own error, with the message but no chain
        if isinstance(e, CudaDtypeRefused) or any(t in str(e) for t in _REFUSAL_TEXTS):
            return str(e)
        e = e.__cause__ or e.__context__
    return None


if REPORT:
    _install()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pyfunc_call(pyfuncitem):
        if not _is_cuda_test(pyfuncitem):
            yield
            return
        from torch._subclasses.fake_tensor import FakeTensorMode

        _state["current"] = pyfuncitem.nodeid
        with FakeTensorMode(allow_non_fake_inputs=True):
            yield
        _state["current"] = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        if call.when == "call" and _is_cuda_test(item):
            rep = outcome.get_result()
            why = _refusal(call.excinfo) if rep.failed else None  # a skip's reason may quote it
            _state["audited"].append({"test": item.nodeid, "outcome": rep.outcome,
                                      "reached": item.nodeid in _state["reached"], "refused": why})

    def pytest_sessionfinish(session):
        with open(REPORT, "w", encoding="utf-8") as f:
            json.dump(_state["audited"], f, indent=1)
