"""Build checks of the CUDA kernels that need no GPU: they run wherever nvcc is found (CI has it).

`kernels/<op>.cuh` is torch-free device code, so `tests/cuda_build/<op>_instances.cu` (every kernel
variant the launcher in csrc/cuda/<op>_cuda.cu can launch, instantiated explicitly) compiles on its
own in seconds. For each op and each real target (sm_80, sm_90) this test compiles it to a cubin
with `-Xptxas -v` and reads two things no GPU is needed for:

  * ptxas' resource report: no kernel may spill (0 bytes spill
    stores/loads, no local-memory stack frame). A spill there means registers were mis-sized.
  * the SASS (`cuobjdump --dump-sass`): the matmul kernels of attention and gelu_mlp must contain
    HMMA instructions (tensor cores), i.e. the mma.sync code survived to machine code.

Warnings are errors here as in the extension build.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("80", "90")
OPS = ("attention", "layer_norm", "gelu_mlp")
# Which kernels must use tensor cores: a regular expression on the (mangled) kernel name.
MMA_KERNELS = {"attention": r"fwd|dkdv|dq", "gelu_mlp": r"gemm"}
NO_SPILL = ("attention", "layer_norm", "gelu_mlp")
# the flags torch.utils.cpp_extension passes to nvcc, plus ours (setup.py)
NVCC_FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
              "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
              "-D__CUDA_NO_HALF2_OPERATORS__", "-Xcompiler=-Wall,-Wextra,-Werror", "-Werror=all-warnings"]


def find_tool(name: str) -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / name
    if cand.is_file():
        return str(cand)
    found = shutil.which(name)
    if found:
        return found
    if name == "cuobjdump":  # Triton's wheel ships one
        try:
            import triton

            cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
            if cand.is_file():
                return str(cand)
        except ImportError:
            pass
    return None


NVCC, CUOBJDUMP = find_tool("nvcc"), find_tool("cuobjdump")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME): CUDA build checks skipped")


@functools.lru_cache(maxsize=None)
def compile_op(op: str, arch: str, tmp: str):
    """(ptxas log, SASS text) of tests/cuda_build/<op>_instances.cu for sm_<arch>."""
    src = ROOT / "tests" / "cuda_build" / f"{op}_instances.cu"
    if not src.exists():
        pytest.fail(f"{src} is missing: every CUDA op needs its instances file")
    cubin = Path(tmp) / f"{op}.sm_{arch}.cubin"
    cmd = [NVCC, *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-cubin",
           str(src), "-o", str(cubin)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, f"nvcc failed for {op} sm_{arch}:\n{' '.join(cmd)}\n{r.stderr[-6000:]}"
    sass = ""
    if CUOBJDUMP is not None:
        d = subprocess.run([CUOBJDUMP, "--dump-sass", str(cubin)], capture_output=True, text=True)
        assert d.returncode == 0, d.stderr
        sass = d.stdout
    return r.stderr + r.stdout, sass


def ptxas_report(log: str) -> dict:
    """{kernel: {'registers', 'stack', 'spill_stores', 'spill_loads'}} from `-Xptxas -v` output."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = m.group(1)
            out[current] = {}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[current]["registers"] = int(m.group(1))
    return out


def sass_functions(sass: str) -> dict:
    """{kernel: its SASS} from cuobjdump --dump-sass."""
    parts = re.split(r"\n\s*Function : (\S+)\n", "\n" + sass)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cuda_build"))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", OPS)
def test_compiles_and_resources(op, arch, tmp):
    log, _ = compile_op(op, arch, tmp)
    report = ptxas_report(log)
    assert report, f"no kernels compiled for {op} sm_{arch}:\n{log[-3000:]}"
    for name, r in report.items():
        assert "spill_stores" in r and "registers" in r, f"{name}: no resource line in:\n{log[-3000:]}"
        if op in NO_SPILL:
            assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{op} sm_{arch}: {name} spills: {r}"
            assert r["stack"] == 0, f"{op} sm_{arch}: {name} uses a {r['stack']}-byte stack frame (local memory): {r}"


@pytest.mark.skipif(CUOBJDUMP is None, reason="cuobjdump not found")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("op", sorted(MMA_KERNELS))
def test_tensor_core_instructions(op, arch, tmp):
    _, sass = compile_op(op, arch, tmp)
    funcs = sass_functions(sass)
    assert funcs, "cuobjdump listed no functions"
    matmul = {n: body for n, body in funcs.items() if re.search(MMA_KERNELS[op], n)}
    assert matmul, f"no {op} kernel name matches {MMA_KERNELS[op]!r}: {sorted(funcs)}"
    for name, body in matmul.items():
        assert "HMMA" in body, f"{op} sm_{arch}: {name} has no HMMA instruction (tensor cores unused)"
