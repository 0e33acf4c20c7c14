"""pygpt's PEP 517 build backend: setuptools' own, plus the torch of the environment being installed into.

Why it exists. The C++/CUDA extension pygpt._C must be compiled against the very torch it will be
imported with (torch has no stable C++ ABI across releases). But `pip install -e .` builds in an
*isolated* environment that holds only the build requirements of pyproject.toml, and torch cannot
be one of them: pip would download a second, multi-GB torch — possibly another release or another
CUDA/CPU variant than the one installed — and build against that. So setuptools alone leaves two
bad choices: a wrong extension, or `--no-build-isolation`.

What it does. At import (before any hook runs) it checks whether torch is importable. Without
isolation it is, and this backend is exactly setuptools.build_meta. Under isolation it asks the
*target* interpreter where its torch lives, by running it in a subprocess with the isolation
switched off:
  1. the same interpreter pip runs the hook with (`sys.executable`) but without PYTHONPATH, which
     is how pip hides the target's site-packages (pip puts a sitecustomize there);
  2. else $VIRTUAL_ENV/bin/python, then $CONDA_PREFIX/bin/python (pypa/build and uv build in a
     throwaway venv of their own; the activated environment is the target).
A candidate counts only if its Python has the same major.minor as this one and imports torch.
Its site-packages folder (the one holding torch, and so torch's own dependencies) is APPENDED to
sys.path, and its bin folder appended to PATH (for ninja). Then setup.py imports that torch.

Why it is safe.
  * Nothing is installed or changed in either environment; only this build process's sys.path and
    PATH are extended, and only when torch is missing from the build environment.
  * Appended, not prepended: setuptools and wheel still come from the isolated build environment
    (the versions pyproject.toml asks for); only modules the build environment lacks — torch and
    what torch imports — resolve from the target.
  * The extension is compiled with the headers and linked against the libraries of the torch that
    will import it, which is the point; pygpt also refuses at import an extension built for another
    torch (pygpt/_ext.py), so a mismatch can never run.
  * With no torch anywhere it stops before building, in one line naming the interpreter it looked
    in and what to install. PYGPT_NO_EXT=1 (pure-Python install) needs no torch and skips all this.
`pip install --no-build-isolation -e .` keeps working unchanged (torch is importable: no probing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517 / 660 hooks, unchanged)

_PROBE = (
    "import json, os, sys, torch; "
    "print(json.dumps({'python': list(sys.version_info[:2]), 'torch': torch.__version__, "
    "'site': os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))}))"
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _candidates() -> list[tuple[str, dict]]:
    """(interpreter, environment) pairs that may be the environment pygpt is installed into."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE")}
    out = [(sys.executable, base)]
    for var in ("VIRTUAL_ENV", "CONDA_PREFIX"):
        prefix = os.environ.get(var)
        if prefix:
            exe = os.path.join(prefix, "Scripts" if os.name == "nt" else "bin", "python")
            if os.path.exists(exe) and exe not in (c[0] for c in out):
                out.append((exe, base))
    return out


def _probe(exe: str, env: dict) -> dict | None:
    try:
        with tempfile.TemporaryDirectory() as cwd:  # not the source tree: nothing local shadows torch
            r = subprocess.run([exe, "-c", _PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0 or not r.stdout.strip():
        return None
    try:
        found = json.loads(r.stdout.strip().splitlines()[-1])
    except ValueError:
        return None
    return found if tuple(found["python"]) == tuple(sys.version_info[:2]) else None


def _use_target_torch() -> None:
    try:
        import torch  # noqa: F401  (no isolation, or torch in the build environment: nothing to do)

        return
    except ImportError:
        pass
    looked = []
    for exe, env in _candidates():
        looked.append(exe)
        found = _probe(exe, env)
        if found is None:
            continue
        sys.path.append(found["site"])
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + os.path.dirname(exe)
        # setup.py (a subprocess of this one for some hooks) must see the same torch
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), found["site"]) if p)
        print(f"pygpt: building against torch {found['torch']} from {found['site']} "
              f"(the environment of {exe})", file=sys.stderr, flush=True)
        return
    raise SystemExit(
        f"pygpt: torch is not installed in {' or '.join(dict.fromkeys(looked))}: install torch first "
        "(`pip install torch`, or run `make setup`), then `pip install -e .` again "
        "(or PYGPT_NO_EXT=1 for the pure-Python package)"
    )


if not _flag("PYGPT_NO_EXT"):
    _use_target_torch()

