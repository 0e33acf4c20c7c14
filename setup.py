"""Build script for pygpt and its C++/CUDA extension ``pygpt._C``.

Install (torch must already be installed, in the build you want):

    make setup                              # .venv, torch, this build (see Makefile), or by hand:
    pip install torch                       # or the CUDA/CPU wheel of your choice
    MAX_JOBS=2 pip install -e .             # builds against THAT torch (tools/pygpt_build.py),
                                            # --no-build-isolation works too

Environment switches:
    PYGPT_NO_EXT=1          skip the extension entirely (pure-Python install)
    PYGPT_NO_CUDA=1         build the extension CPU-only even if CUDA is available
    PYGPT_WERROR=1          compile our C++/CUDA sources with -Werror (CI does)
    TORCH_CUDA_ARCH_LIST    CUDA architectures to compile for (default "8.0;9.0")
    CUDA_HOME               CUDA toolkit to use (e.g. /usr/local/cuda)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0"


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _log(msg):
    print(f"pygpt: {msg}", file=sys.stderr, flush=True)


def _rel(paths):
    # setuptools wants source paths relative to setup.py.
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _find_cublaslt(cuda_home):
    """(include dir, linker args) for cuBLASLt, or (None, []) when its header or library is missing.

    The toolkit's own copy comes first; else the one in torch's CUDA wheels (nvidia/cu13 or
    nvidia/cublas), which is the library torch itself loads, so its soname is already resident."""
    candidates = [(os.path.join(cuda_home, "include"), os.path.join(cuda_home, "lib64"))]
    try:
        import nvidia  # torch's CUDA runtime wheels

        for base in list(getattr(nvidia, "__path__", [])):
            for sub in ("cu13", "cu12", "cublas"):
                candidates.append((os.path.join(base, sub, "include"), os.path.join(base, sub, "lib")))
    except ImportError:
        pass
    for inc, lib in candidates:
        if not os.path.isfile(os.path.join(inc, "cublasLt.h")):
            continue
        libs = sorted(glob.glob(os.path.join(lib, "libcublasLt.so*")), key=len)
        if not libs:
            continue
        name = os.path.basename(libs[0])
        link = "-lcublasLt" if name == "libcublasLt.so" else f"-l:{name}"
        return inc, [f"-L{lib}", link, f"-Wl,-rpath,{lib}"]
    return None, []


def _extension_kwargs():
    """ext_modules/cmdclass for pygpt._C, or {} for a pure-Python install."""
    if _env_flag("PYGPT_NO_EXT"):
        _log("PYGPT_NO_EXT=1: skipping the C++ extension (pure-Python install)")
        return {}

    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            f"pygpt: torch is not importable by {sys.executable}: install torch first (`pip install torch`, "
            "or `make setup`), then `pip install -e .` again (or PYGPT_NO_EXT=1 for the pure-Python package)"
        )

    torch_full = str(torch.__version__)
    cuda_home = cpp_extension.CUDA_HOME
    if _env_flag("PYGPT_NO_CUDA"):
        use_cuda, why = False, "PYGPT_NO_CUDA=1"
    elif not torch.version.cuda:
        use_cuda, why = False, f"torch {torch_full} has no CUDA"
    elif not cuda_home or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        use_cuda, why = False, (
            f"torch {torch_full} has CUDA {torch.version.cuda} but nvcc was not found; "
            "set CUDA_HOME to the toolkit"
        )
    else:
        use_cuda, why = True, ""

    # Our own code must be warning-free (-Werror); torch's headers are not ours,
    # so they are demoted to system headers (-isystem wins over -I in gcc/clang).
    torch_includes = cpp_extension.include_paths("cuda" if use_cuda else "cpu")
    isystem = [flag for inc in torch_includes for flag in ("-isystem", inc)]
    defines = [f"-DPYGPT_TORCH_VERSION={torch_full}"]
    # -Werror only where asked (CI sets PYGPT_WERROR=1): a new compiler's new warning must not
    # break a user's install.
    warn = ["-Wall", "-Wextra"] + (["-Werror"] if _env_flag("PYGPT_WERROR") else [])
    # Our sources are C++17; the -std flag is left to torch.utils.cpp_extension, which
    # picks what the installed torch's headers need (C++17 on older torch, C++20 on
    # torch >= 2.14, whose ATen.h refuses to compile as C++17).
    # -fopenmp: at::parallel_for is an inline template that runs SERIALLY unless the including
    # file is compiled with OpenMP (ATen/ParallelOpenMP.h); libgomp.so.1 resolves to torch's own.
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]
    cxx_flags = ["-O3", *openmp, *warn, *isystem, *defines]

    sources = glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))
    sources += glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp"))
    sources += glob.glob(os.path.join(ROOT, "csrc", "python", "*.cpp"))

    if use_cuda:
        lt_include, lt_link = _find_cublaslt(cuda_home)
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch_list:
            arch_list = os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        cu_sources = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
        _log(
            f"building pygpt._C with CUDA {torch.version.cuda} (nvcc in {cuda_home}) "
            f"for TORCH_CUDA_ARCH_LIST={arch_list}, torch {torch_full}; cuBLASLt "
            + (f"from {lt_include}" if lt_include else "not found (gelu_mlp uses the hand-written GEMM only)")
        )
        lt_macros = [("PYGPT_WITH_CUBLASLT", "1")] if lt_include else []
        lt_isystem = ["-isystem", lt_include] if lt_include else []
        ext = cpp_extension.CUDAExtension(
            name="pygpt._C",
            sources=_rel(sources + cu_sources),
            define_macros=[("PYGPT_WITH_CUDA", "1"), *lt_macros],
            extra_link_args=openmp + lt_link,
            extra_compile_args={
                "cxx": cxx_flags + lt_isystem,
                "nvcc": [
                    "-O3",
                    "--expt-relaxed-constexpr",
                    "-lineinfo",  # source lines in compute-sanitizer reports and profiles; no speed cost
                    *isystem,
                    *lt_isystem,
                    *defines,
                    "-Xcompiler=" + ",".join(warn),
                ],
            },
        )
    else:
        _log(f"building CPU-only pygpt._C ({why}), torch {torch_full}")
        ext = cpp_extension.CppExtension(
            name="pygpt._C",
            sources=_rel(sources),
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=openmp,
        )
    return {
        "ext_modules": [ext],
        "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    }


setup(
    packages=find_packages(include=["pygpt", "pygpt.*"]),
    **_extension_kwargs(),
)
