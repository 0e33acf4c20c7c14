"""Load the C++ extension `pygpt._C` if it was built; pygpt works without it (pure-PyTorch backends)."""

from __future__ import annotations

import glob
import os

import torch  # noqa: F401  (loads libtorch before the extension needs its symbols)

# How to (re)build the extension, for the messages below and pygpt.info's last line.
REBUILD = "`make setup` in the checkout, or `pip install -e .` in this environment"

try:
    from . import _C  # type: ignore[attr-defined]

    LOAD_ERROR = None
except ImportError as e:  # not built (PYGPT_NO_EXT=1, or a source checkout) or built for another torch
    _C = None
    LOAD_ERROR = str(e)
    if glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C.*")):  # built, does not load
        LOAD_ERROR = (f"pygpt._C is there but does not load ({e}); most likely it was built against another "
                      f"torch than the installed {torch.__version__}: rebuild it with {REBUILD}")

if _C is not None:
    _built = _C.build_info().get("torch")
    if _built != torch.__version__:
        # C++ ABI is not stable across torch releases: never run kernels built for another one
        LOAD_ERROR = (f"pygpt._C was built against torch {_built} but torch {torch.__version__} is installed; "
                      f"rebuild it with {REBUILD}")
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
