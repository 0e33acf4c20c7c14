"""Which backend runs an op: names, availability, and the 'auto' choice.

Backends:
    eager    pure PyTorch written the lecture's way; the parity baseline, always available
    sdpa     torch.nn.functional.scaled_dot_product_attention (attention only)
    cpu      hand-written C++ kernels in pygpt._C (CPU tensors)
    cuda     hand-written CUDA kernels in pygpt._C (CUDA tensors)
    triton   Triton kernels in pygpt/triton/ (CUDA tensors; CPU only under TRITON_INTERPRET=1)
    auto     the best fused backend available for the tensors' device
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

from .. import _ext

OPS = ("attention", "layer_norm", "gelu_mlp")
BACKENDS = ("eager", "sdpa", "cpu", "cuda", "triton", "auto")
FUSED = ("cpu", "cuda", "triton")
# 'auto' tries these in order, by device type.
AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


# dtypes a backend's kernels take, where not every floating dtype: the CUDA attention kernel runs on
# tensor cores in 16-bit only ('auto' then moves on to the next backend; naming it is an error).
DTYPES = {("attention", "cuda"): (torch.float16, torch.bfloat16)}


def dtype_reason(op: str, backend: str, dtype) -> str | None:
    """None if `backend`'s kernel for `op` takes `dtype`, else why not."""
    allowed = DTYPES.get((op, backend))
    if dtype is None or allowed is None or dtype in allowed:
        return None
    names = ", ".join(str(d).replace("torch.", "") for d in allowed)
    return f"the {backend} {op} kernel takes {names}, not {str(dtype).replace('torch.', '')} (use autocast or another backend)"


class BackendUnavailable(ValueError):
    """Raised when a backend was asked for that cannot run this op here."""


def _triton_reason(op: str, device_type: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if importlib.util.find_spec(f"pygpt.triton.{op}") is None:
        return f"pygpt has no Triton kernel for {op} yet"
    if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
    return None


def unavailable_reason(op: str, backend: str, device_type: str) -> str | None:
    """None if `backend` can run `op` on `device_type`, else why not."""
    key = (op, backend, device_type)
    if key not in _REASONS:
        _REASONS[key] = _reason(op, backend, device_type)
    return _REASONS[key]


def _reason(op: str, backend: str, device_type: str) -> str | None:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops: {', '.join(OPS)}")
    if backend == "eager":
        return None
    if backend == "sdpa":
        return None if op == "attention" else "sdpa is torch's attention; it has no " + op
    if backend == "triton":
        return _triton_reason(op, device_type)
    if backend == "auto":
        reasons = []
        for b in AUTO_ORDER.get(device_type, ()):
            why = unavailable_reason(op, b, device_type)
            if why is None:
                return None
            reasons.append(f"{b}: {why}")
        return f"no fused backend can run {op} on {device_type}" + (f" ({'; '.join(reasons)})" if reasons else "")
    if backend in ("cpu", "cuda"):
        if not _ext.loaded():
            return f"the C++ extension pygpt._C is not built ({_ext.LOAD_ERROR})"
        if device_type != backend:
            return f"the {backend} backend runs on {backend} tensors, these are on {device_type}"
        if op not in _ext.kernel_ops(backend):
            return f"pygpt._C has no hand-written {backend} kernel for {op} yet"
        return None
    raise ValueError(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")


def autocast_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a fused kernel will see for inputs of `dtype`: autocast's, when it is on."""
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else dtype


def autocast_inputs(device_type: str, *tensors):
    """The tensors cast to the autocast dtype when autocast is on for `device_type` (None stays None).

    torch's autocast casts the inputs of its own matmuls and attention; a custom op is not on its
    lists, so the op layer does the same cast before calling a fused kernel. Outside autocast (or
    when the tensors already have its dtype) they are returned as they are."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t for t in tensors)


def autocast_off(device_type: str):
    """A context in which a fused kernel runs with autocast disabled (its inputs are already cast):
    otherwise ATen calls inside the kernel (the CPU gelu_mlp's GEMMs) would be autocast again."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def available_backends(op: str, device_type: str) -> list[str]:
    return [b for b in BACKENDS[:-1] if unavailable_reason(op, b, device_type) is None]


def resolve(op: str, backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """Turn a requested backend into one that can run `op` on `device` (at `dtype`, when given),
    or raise BackendUnavailable.

    Called on every op call, also inside torch.compile'd code: for the usual devices the answer is
    a lookup in a table filled at import (availability cannot change within a process)."""
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    found = _RESOLVED.get((op, backend, device_type))
    if found is None:
        found = _RESOLVED[(op, backend, device_type)] = _resolve_or_message(op, backend, device_type)
    name, message = found
    if message is not None:
        raise BackendUnavailable(message)
    if dtype is not None and (op, name) in DTYPES and dtype_reason(op, name, dtype) is not None:
        if backend != "auto":
            raise BackendUnavailable(f"backend {backend!r} cannot run {op} here: {dtype_reason(op, name, dtype)}")
        # 'auto': the next fused backend for this device that takes the dtype
        for b in AUTO_ORDER[device_type]:
            if unavailable_reason(op, b, device_type) is None and dtype_reason(op, b, dtype) is None:
                return b
        raise BackendUnavailable(f"no fused backend can run {op} on {device_type} at {dtype}: "
                                 f"{dtype_reason(op, name, dtype)}")
    return name


def _resolve_or_message(op, backend, device_type):
    try:
        return _resolve(op, backend, device_type), None
    except BackendUnavailable as e:
        return None, str(e)


def _resolve(op: str, backend: str, device_type: str) -> str:
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r}; backends: {', '.join(BACKENDS)}")
    if backend == "auto":
        why = unavailable_reason(op, "auto", device_type)
        if why is not None:
            raise BackendUnavailable(f"{why}; available: {', '.join(available_backends(op, device_type))}")
        return next(b for b in AUTO_ORDER[device_type] if unavailable_reason(op, b, device_type) is None)
    why = unavailable_reason(op, backend, device_type)
    if why is not None:
        raise BackendUnavailable(
            f"backend {backend!r} cannot run {op} on {device_type}: {why}; "
            f"available: {', '.join(available_backends(op, device_type))}"
        )
    return backend


# Availability depends only on what is installed and built, so it is computed once per process.
_REASONS: dict = {}
_RESOLVED: dict = {}
for _dev in ("cpu", "cuda"):
    for _op in OPS:
        for _b in BACKENDS:
            _RESOLVED[(_op, _b, _dev)] = _resolve_or_message(_op, _b, _dev)
