"""python -m pygpt.info: versions, the extension's build, and which backend can run which op where."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import types

import torch

from . import __version__, _ext, ops


def _first_line(cmd) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[-1] if cmd[-1] == "--version" and "nvcc" in cmd[0] else (out[0] if out else None)


def collect() -> dict:
    """Everything `python -m pygpt.info` prints, as a dict (also used by the benchmarks)."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    triton = None
    if importlib.util.find_spec("triton") is not None:
        try:
            import triton

            triton = triton.__version__
        except Exception as e:  # a broken install should not break info
            triton = f"unusable ({type(e).__name__})"
    cuda_home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    cxx = os.environ.get("CXX", "c++")
    backends = {}
    for dev in devices:
        backends[dev] = {}
        for op in ops.OPS:
            backends[dev][op] = {b: ops.unavailable_reason(op, b, dev) for b in ops.BACKENDS[:-1]}
    return {
        "pygpt": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "triton": triton,
        "cxx": _first_line([cxx, "--version"]) if shutil.which(cxx) else None,
        "nvcc": _first_line([nvcc, "--version"]) if nvcc and os.path.exists(nvcc) else None,
        "extension": _ext.build_info(),
        "extension_error": _ext.LOAD_ERROR,
        "backends": backends,
    }


def report(info: dict | None = None) -> str:
    info = info or collect()
    lines = [
        f"pygpt {info['pygpt']}  python {info['python']}  {info['platform']}",
        f"torch {info['torch']} (CUDA {info['torch_cuda'] or 'none'}; "
        f"GPU: {info['gpu'] or 'none visible'})  triton {info['triton'] or 'not installed'}",
        f"C++ compiler: {info['cxx'] or 'not found'}",
        f"nvcc: {info['nvcc'] or 'not found'}",
    ]
    ext = info["extension"]
    if ext is None:
        lines.append(f"extension pygpt._C: NOT BUILT - pure-PyTorch backends only ({info['extension_error']})")
    else:
        cuda = (f"CUDA {ext['cuda_version']} for {', '.join(ext['cuda_archs'])}"
                f" ({'with' if ext.get('cublaslt') else 'without'} cuBLASLt)") if ext["cuda"] else "CPU only"
        lines.append(f"extension pygpt._C: built against torch {ext['torch']} with {ext['compiler']}, {cuda}")
        for dev, names in ext["kernels"].items():
            lines.append(f"  hand-written {dev} kernels: {', '.join(names) if names else 'none yet'}")
    for dev, per_op in info["backends"].items():
        lines.append(f"backends on {dev}:")
        for op, per_backend in per_op.items():
            ok = [b for b, why in per_backend.items() if why is None]
            lines.append(f"  {op:<11} usable: {', '.join(ok)}")
            for b, why in per_backend.items():
                if why is not None and b in ops.FUSED:
                    lines.append(f"  {'':<11}   {b}: {why}")
    lines.append(next_step(info))
    return "\n".join(lines)


def next_step(info: dict) -> str:
    """The report's last line: what to run next (build missing, CUDA present but not built, all good)."""
    ext = info["extension"]
    if ext is None:
        err = info["extension_error"] or ""
        if err.startswith("pygpt._C is there but") or "was built against torch" in err:
            return f"next: rebuild the kernels for torch {info['torch']}: {_ext.REBUILD}"
        return f"next: build the kernels (pygpt._C is not built; pure-PyTorch backends only): {_ext.REBUILD}"
    if info["cuda_available"] and not ext["cuda"]:
        if not info["torch_cuda"]:
            why = "torch has no CUDA: install a CUDA build of torch (make setup TORCH=cuda)"
        elif not info["nvcc"]:
            why = "nvcc was not found: set CUDA_HOME to the CUDA toolkit"
        else:
            why = "it was built CPU-only (PYGPT_NO_CUDA=1?)"
        return (f"next: a GPU is visible but pygpt._C has no CUDA kernels ({why}), then rebuild: "
                f"{_ext.REBUILD}")
    dev = "--device cuda" if info["cuda_available"] else "--device cpu"
    return f"next: all good: `make train` (or python -m pygpt.train --fused {dev}), `make test`"


def main(argv=None) -> int:
    print(report())
    return 0


class _CallableModule(types.ModuleType):
    """`pygpt.info` is this module (for `python -m pygpt.info`) and also callable: `pygpt.info()`
    prints the report and returns it."""

    def __call__(self) -> str:
        text = report()
        print(text)
        return text


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
