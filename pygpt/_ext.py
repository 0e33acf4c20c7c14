"""Load the C++ extension `pygpt._C` if it was built; pygpt works without it (pure-PyTorch backends)."""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension needs its symbols)

try:
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR = None
except ImportError as e:  # not built (PYGPT_NO_EXT=1, or a source checkout) or built for another torch
    _C = None
    LOAD_ERROR = str(e)

if _C is not None:
    _built = _C.build_info().get("torch")
    if _built != torch.__version__:
        # C++ ABI is not stable across torch releases: never run kernels built for another one
        LOAD_ERROR = (f"pygpt._C was built against torch {_built} but torch {torch.__version__} is installed; "
                      "rebuild with pip install --no-build-isolation -e .")
        _C = None


def loaded() -> bool:
    return _C is not None


def build_info() -> dict | None:
    """What the extension was built with: {'cuda', 'cuda_version', 'cuda_archs', 'cublaslt', 'compiler', 'torch', 'kernels'}."""
    return _C.build_info() if _C is not None else None


def kernel_ops(device_type: str) -> frozenset:
    """Ops that have a real hand-written kernel in the extension for a device type ('cpu' or 'cuda').

    The extension always registers the op schemas; until a kernel lands, the CPU entry behind a
    schema is a placeholder and is not listed here, so its backend stays unavailable.
    """
    return _KERNELS.get(device_type, frozenset())


_KERNELS = {dev: frozenset(names) for dev, names in build_info()["kernels"].items()} if _C is not None else {}
