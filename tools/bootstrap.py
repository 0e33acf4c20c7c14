"""The set-up behind `make train` / `make test`: each step checks first and does only what is missing.

    python3 tools/bootstrap.py setup [--venv .venv] [--torch auto|cpu|cuda|REQUIREMENT] [--data PATH] [--test]

Steps, in order (one `== pygpt setup:` line each, saying what it did or why it skipped):
  venv    create the virtual environment (Python >= 3.10) with current pip, setuptools, wheel, ninja
  torch   install torch when it is missing (or when --torch names a requirement):
            auto  the CUDA build when `nvidia-smi -L` lists a GPU, else the CPU build
            cuda  `pip install torch` (PyPI's Linux wheel is the CUDA build)
            cpu   `pip install torch --index-url https://download.pytorch.org/whl/cpu` on Linux (PyPI's
                  wheel elsewhere); when that index cannot be reached, PyPI's wheel, which runs on a
                  CPU too, with a line saying so
            anything else  a pip requirement, e.g. torch==2.13.0 (extra pip arguments may follow)
  build   `pip install --no-build-isolation -e .` (with the environment's own setuptools, wheel and
          ninja: nothing to fetch, works offline; plain `pip install -e .` builds against the same
          torch too, see tools/pygpt_build.py) unless pygpt._C loads, was built for this torch and is newer than
          every source; the compiler's progress is shown as [k/n] lines, the full log kept in
          <venv>/pygpt-build.log; CUDA_HOME defaults to /usr/local/cuda when nvcc is there
  test    (--test) the test extras of pyproject.toml that are not importable yet
  data    tiny Shakespeare prepared into ./data/shakespeare_char (what `make train` trains on), from,
          in order: --data PATH (an input.txt), $PYGPT_DATA_DIR/shakespeare_char (already prepared)
          or $PYGPT_DATA_DIR/tinyshakespeare/input.txt, else the checksum-verified download; offline
          with none of these, it stops and says exactly which to provide.
The steps after `venv` run inside the environment's own Python (this script re-runs itself there).
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MIN_PYTHON = (3, 10)


def say(msg: str) -> None:
    print(f"== pygpt setup: {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"pygpt setup: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def venv_python(venv: str) -> str:
    return os.path.join(venv, "Scripts" if os.name == "nt" else "bin", "python")


def pip(*args: str, quiet: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", *(["-q"] if quiet else []), *args]
    print("   $ " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)


# -- venv (runs under the Python that `make` found) ------------------------------------------------

def step_venv(venv: str) -> None:
    py = venv_python(venv)
    if os.path.exists(py):
        say(f"environment {venv} exists")
        return
    if sys.version_info[:2] < MIN_PYTHON:
        fail(f"{sys.executable} is Python {platform.python_version()}; pygpt needs >= "
             f"{'.'.join(map(str, MIN_PYTHON))} (make PYTHON=python3.12 ...)")
    say(f"creating {venv} (Python {platform.python_version()})")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "-U", "pip", "setuptools", "wheel", "ninja"], check=True)


# -- the rest runs inside the environment ----------------------------------------------------------

def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=8):
            return True
    except Exception:  # any failure to connect means: not usable from here
        return False


def torch_version() -> str | None:
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def step_torch(choice: str) -> None:
    have = torch_version()
    if choice == "auto":
        if have:
            say(f"torch {have} is installed")
            return
        choice = "cuda" if _has_gpu() else "cpu"
        say(f"installing torch ({'a GPU is visible: CUDA' if choice == 'cuda' else 'no GPU visible: CPU'} "
            "build; TORCH=cpu|cuda|<requirement> overrides)")
    elif choice in ("cpu", "cuda") and have:
        # an explicit build kind with torch present: keep it when it is that kind
        is_cuda = "+cpu" not in have and subprocess.run(
            [sys.executable, "-c", "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"]).returncode == 0
        if is_cuda == (choice == "cuda"):
            say(f"torch {have} is installed ({choice} build)")
            return
        say(f"torch {have} is not the {choice} build: installing it")
    if choice == "cuda":
        pip("install", "torch")
    elif choice == "cpu":
        if sys.platform != "linux":
            pip("install", "torch")  # macOS / Windows wheels on PyPI are the CPU (and MPS) builds
        elif _reachable(CPU_INDEX + "/torch/"):
            pip("install", "torch", "--index-url", CPU_INDEX)
        else:
            say(f"{CPU_INDEX} cannot be reached: installing torch from your default index instead "
                "(PyPI's Linux wheel is the CUDA build; it runs on a CPU too, and is larger)")
            pip("install", "torch")
    else:
        say(f"installing {choice}")
        pip("install", *choice.split())
    have = torch_version()
    if not have:
        fail("torch still does not import after installing it; see pip's output above")
    say(f"torch {have} installed")


def _sources() -> list[str]:
    files = [os.path.join(ROOT, f) for f in ("setup.py", "pyproject.toml", os.path.join("tools", "pygpt_build.py"))]
    for folder in ("csrc", "kernels"):
        files += [p for p in glob.glob(os.path.join(ROOT, folder, "**", "*"), recursive=True) if os.path.isfile(p)]
    return files


_CHECK_EXT = r"""
import json, os, sys, torch
import pygpt, pygpt._ext as e
print(json.dumps({"root": os.path.dirname(os.path.dirname(os.path.abspath(pygpt.__file__))),
                  "loaded": e.loaded(), "error": e.LOAD_ERROR,
                  "so": getattr(e._C, "__file__", None)}))
"""


def extension_state() -> dict | None:
    import json

    with_tmp = dict(os.environ, PYTHONPATH="")
    r = subprocess.run([sys.executable, "-c", _CHECK_EXT], capture_output=True, text=True, cwd="/", env=with_tmp)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def step_build(venv: str) -> None:
    state = extension_state()
    if state and state["loaded"] and os.path.samefile(state["root"], ROOT):
        newest = max(os.path.getmtime(p) for p in _sources())
        if os.path.getmtime(state["so"]) >= newest:
            say("pygpt._C is built for this torch and newer than its sources")
            return
        why = "sources changed since the last build"
    elif state and os.path.samefile(state["root"], ROOT):
        why = state["error"] or "the extension does not load"
    elif state:
        why = f"pygpt is installed from {state['root']}, not this checkout"
    else:
        why = "pygpt is not installed in this environment"
    env = dict(os.environ)
    if not env.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
        env["CUDA_HOME"] = "/usr/local/cuda"  # torch's own guess from a PATH wrapper can miss cudart
    log_path = os.path.join(venv, "pygpt-build.log")
    say(f"building pygpt._C ({why}); the compiler's progress below, the whole log in {log_path}")
    # The build tools are the environment's own (step venv installs them), hence no isolated build
    # environment to create: nothing is fetched for the build, so it also works offline.
    from importlib import util

    missing = [m for m in ("setuptools", "wheel", "ninja") if util.find_spec(m) is None]
    if missing:
        pip("install", *missing)
    cmd = [sys.executable, "-m", "pip", "install", "-v", "--no-build-isolation", "-e", ROOT]
    step = re.compile(r"^\s*\[(\d+)/(\d+)\]\s.*?(\S+\.(?:cpp|cu))\b")
    shown = set()
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        for line in p.stdout:
            log.write(line)
            m = step.match(line)
            if m:
                print(f"   [{m.group(1)}/{m.group(2)}] {os.path.relpath(m.group(3), ROOT)}", flush=True)
            elif line.lstrip().startswith("pygpt:") and "building" in line and line.strip() not in shown:
                shown.add(line.strip())  # the backend's hooks each print it once
                print("   " + line.strip(), flush=True)
        rc = p.wait()
    if rc != 0:
        with open(log_path) as f:
            tail = f.readlines()[-40:]
        sys.stdout.write("".join(tail))
        fail(f"building pygpt._C failed (pip exit {rc}); the whole log is {log_path}")
    state = extension_state()
    if not (state and state["loaded"]):
        fail(f"pygpt._C was built but does not load: {state and state['error']}")
    say("pygpt._C built")


def step_test_extras() -> None:
    from importlib import metadata

    reqs = [r.split(";")[0].strip() for r in (metadata.requires("pygpt") or []) if 'extra == "test"' in r]
    missing = []
    for req in reqs:
        name = re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0]
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(req)
    if not missing:
        say("test dependencies are installed")
        return
    say(f"installing the test dependencies {', '.join(missing)}")
    pip("install", *missing)


def step_data(data: str | None, root: str = ROOT) -> str:
    """Prepare tiny Shakespeare into <root>/data/shakespeare_char (see the module docstring); returns it."""
    sys.path.insert(0, ROOT)
    from pygpt import data as D

    out = os.path.join(root, "data", "shakespeare_char")
    if os.path.isfile(os.path.join(out, "meta.json")):
        say(f"tiny Shakespeare is prepared in {os.path.relpath(out, root)}")
        return out
        return
    shared = os.environ.get("PYGPT_DATA_DIR")
    source = None
    if data:
        if not os.path.isfile(data):
            fail(f"DATA={data} is not a file (give the path of tiny Shakespeare's input.txt)")
        source = data
    elif shared and os.path.isfile(os.path.join(shared, "shakespeare_char", "meta.json")):
        say(f"using the prepared tiny Shakespeare in {shared}/shakespeare_char")
        shutil.copytree(os.path.join(shared, "shakespeare_char"), out)
        return out
    elif shared and os.path.isfile(os.path.join(shared, "tinyshakespeare", "input.txt")):
        source = os.path.join(shared, "tinyshakespeare", "input.txt")
    if source is None:
        say(f"downloading tiny Shakespeare ({D.SHAKESPEARE_URL}, sha256 checked)")
        try:
            source = D.fetch_shakespeare(os.path.join(out, "input.txt"))
        except ConnectionError as e:
            fail(f"{e}.\nNo local copy either: pass DATA=/path/to/input.txt (make train DATA=...), or set "
                 "PYGPT_DATA_DIR to a folder holding tinyshakespeare/input.txt or a prepared shakespeare_char/")
    else:
        digest = D.sha256_file(source)
        if digest != D.SHAKESPEARE_SHA256:
            say(f"note: {source} is not the canonical tiny Shakespeare (sha256 {digest[:12]}...); using it as given")
    say(f"preparing {os.path.relpath(out, root)} from {source}")
    meta = D.prepare_shakespeare_char(out, source)
    say(f"prepared: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="tools/bootstrap.py", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["setup"])
    p.add_argument("--venv", default=os.path.join(ROOT, ".venv"))
    p.add_argument("--torch", default="auto")
    p.add_argument("--data", default=None)
    p.add_argument("--test", action="store_true", help="also the test dependencies")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # re-run inside the venv
    args = p.parse_args(argv)
    args.venv = os.path.abspath(args.venv)
    if not args.inside:
        step_venv(args.venv)
        cmd = [venv_python(args.venv), os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
               "--inside"]
        return subprocess.run(cmd).returncode
    step_torch(args.torch.strip() or "auto")
    step_build(args.venv)
    if args.test:
        step_test_extras()
    step_data(args.data or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
