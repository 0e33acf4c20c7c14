"""The CUDA kernels' real device code, run on the CPU by a small emulator and checked against float64.

There is no GPU in CI, so `tests/test_cuda_build.py` can only prove that kernels/*.cuh compile (no
spills, tensor-core instructions present). This test goes further: it compiles the UNMODIFIED
kernels/<op>.cuh with g++ together with `tests/cuda_emu/emu.h` (a host emulator of the CUDA subset the
kernels use) and runs `tests/cuda_emu/test_<op>.cpp`, which drives each header's launch helpers exactly
as `csrc/cuda/<op>_cuda.cu` does (padding, strides, path choices, launch order) on random inputs,
NaN-poisons every output, and compares every output, forward and every gradient, with a float64
reference. The binary prints one line per case with the measured errors (relative max error
max|v - ref| / max|ref|; tolerances are stated at the top of each test_<op>.cpp) and exits non-zero
on any failure or emulator error.

How the emulator works (details in tests/cuda_emu/emu.h): every CUDA thread of a block is a fiber;
`__syncthreads` is a real block barrier; warp collectives (`__shfl*_sync`, `__syncwarp`, and the PTX
the kernels wrap: `mma.sync.m16n8k16` f16/bf16, `ldmatrix.x4(.trans)`) collect all 32 lanes'
operands and compute every lane's result from them with the PTX ISA's fragment layouts, aborting on
divergence (a lane at another collective, at a barrier, or exited); `cp.async` reads its source at
issue (bounds- and alignment-checked) but lands in shared memory only at the issuing thread's
`cp.async.wait_group` (the destination is NaN-poisoned meanwhile); shared memory is poisoned before
every block and checked for writes past the launch's dynamic size; device buffers sit between guard
pages (an out-of-bounds load or store faults and is reported with the kernel, block and thread) with
poisoned gaps; launches are validated like the runtime's (dynamic smem above 48 KiB needs
cudaFuncSetAttribute). Fibers switch only at barriers and collectives; a seeded scheduler either
interleaves random lanes of all warps or runs one warp as far as it can (maximal skew) per block.
The kernel headers carry only two kinds of hooks: their PTX wrapper bodies call the emulator under
`#ifdef PYGPT_CUDA_EMULATION`, and launches go through `PYGPT_LAUNCH(...)`, which is the plain
`<<<...>>>` launch for nvcc.

What this proves: the index math, masking, tile/tail handling, cp.async pipelines (a missing or
too-weak wait shows up as NaNs when the scheduler interleaves the threads that way), fragment
layouts and register shuffles, reductions and epilogues compute the right numbers, for the shapes
listed in the test files, under our reading of the PTX ISA.

What it does NOT prove (left to the GPU check, `python -m pygpt.gpucheck`):
  * real warp scheduling and timing: fibers switch only at barriers and warp collectives, in a
    seeded random order; there is no memory model and no race detector, so a race (e.g. a missing
    __syncthreads) is only caught if one of those orders exposes it (the ones we tried were);
  * cp.async is asynchronous only in the sense above (data lands at the issuing thread's wait);
    hardware may complete earlier or later than that;
  * PTX semantics are our reading of the ISA (fragment layouts, ldmatrix, ex2.approx); mma is
    modelled as exact products summed in double and rounded once to fp32 per k16 step, which is
    more accurate than the tensor cores' own rounding; MUFU ex2 is modelled as exact;
  * out-of-bounds reads that stay inside a buffer's rounding gap (< 16 bytes) or inside another
    valid buffer; plain loads of shared memory beyond a static __shared__ array;
  * register pressure, spills, bank conflicts, occupancy and anything about speed (meaningless here);
  * the torch launchers themselves (csrc/cuda/*_cuda.cu) and cuBLASLt (a host library).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"
OPS = ("attention", "layer_norm", "gelu_mlp")
# -ffp-contract=off: __fmul_rn and friends must not be fused into FMAs (and x86/ARM agree);
# -fno-strict-aliasing: the kernels type-pun 16-bit arrays as 32/128-bit words, as GPU code may;
# -fno-extern-tls-init: __shared__ is thread_local here, and the kernels' block-scope
# `extern __shared__` arrays must not go through g++'s TLS init wrappers.
CXXFLAGS = ["-std=c++17", "-O2", "-DPYGPT_CUDA_EMULATION", "-ffp-contract=off", "-fno-strict-aliasing",
            "-fno-extern-tls-init", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Wall", "-Wextra",
            "-Wno-unknown-pragmas"]
RUN_TIMEOUT_S = 600

PROBE = '#include <cuda_runtime.h>\n#include <cuda_fp16.h>\n#include <cuda_bf16.h>\nint main() { return 0; }\n'


def find_cxx() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx) and "g++" in Path(cxx).name:
        return shutil.which(cxx)
    return shutil.which("g++")


def candidate_include_dirs() -> list[Path]:
    dirs = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]) / "include")
    dirs.append(Path("/usr/local/cuda/include"))
    for entry in sys.path:  # the CUDA wheels torch depends on
        p = Path(entry) / "nvidia"
        if p.is_dir():
            dirs.extend(sorted(p.glob("*/include")))
    return [d for d in dirs if (d / "cuda_runtime.h").is_file() and (d / "cuda_fp16.h").is_file()
            and (d / "cuda_bf16.h").is_file()]


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    """(g++, CUDA include dir, emu.o) or a skip saying what is missing."""
    if platform.system() != "Linux":
        pytest.skip("the CUDA emulator needs Linux (ELF TLS, dl_iterate_phdr, mmap)")
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("g++ not found: the CUDA emulation tests need a host C++17 compiler")
    tmp = tmp_path_factory.mktemp("cuda_emu")
    probe = tmp / "probe.cpp"
    probe.write_text(PROBE)
    tried = []
    for inc in candidate_include_dirs():
        r = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-isystem", str(inc), str(probe)],
                           capture_output=True, text=True)
        if r.returncode == 0:
            break
        tried.append(f"{inc}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'failed'}")
    else:
        pytest.skip("no usable CUDA include directory with cuda_runtime.h, cuda_fp16.h and cuda_bf16.h "
                    "(set CUDA_HOME; tried: " + ("; ".join(tried) or "none found") + ")")
    emu_o = tmp / "emu.o"
    cmd = [cxx, *CXXFLAGS, "-isystem", str(inc), "-I", str(ROOT), "-c", str(EMU / "emu.cpp"), "-o", str(emu_o)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compiling the emulator failed:\n{' '.join(cmd)}\n{r.stderr[-6000:]}"
    return cxx, inc, emu_o, tmp


@pytest.mark.parametrize("op", OPS)
def test_kernels_on_emulator(op, toolchain):
    cxx, inc, emu_o, tmp = toolchain
    exe = tmp / f"test_{op}"
    cmd = [cxx, *CXXFLAGS, "-isystem", str(inc), "-I", str(ROOT), str(EMU / f"test_{op}.cpp"), str(emu_o),
           "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"compiling test_{op}.cpp failed:\n{' '.join(cmd)}\n{r.stderr[-8000:]}"
    env = dict(os.environ)
    env.setdefault("PYGPT_EMU_SEED", "1")  # the scheduler's interleavings are reproducible
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    out = r.stdout + ("\n" + r.stderr if r.stderr else "")
    failed = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0, (
        f"{op} on the CUDA emulator: exit code {r.returncode}, {len(failed)} failing case(s):\n"
        + "\n".join(failed[:40]) + "\n--- tail of the output ---\n" + out[-6000:])
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{op}:") and " 0 failures" in summary, out[-3000:]
    print(summary)
