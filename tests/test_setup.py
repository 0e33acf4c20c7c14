"""The two-command set-up (Makefile + tools/bootstrap.py), the PEP 517 backend (tools/pygpt_build.py)
and pygpt.info's last line.

The two slow tests are the whole thing as a new user meets it: a copy of the checkout without .venv
runs `make train` and `make test`, and a fresh venv with torch runs plain (isolated) `pip install -e .`.
Both build pygpt._C CPU-only (PYGPT_NO_CUDA=1: minutes, not ten) against the torch this suite runs on.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# a nested run of this file (inside a copy the slow tests made) must not copy itself again
NESTED = os.environ.get("PYGPT_SETUP_TEST_NESTED") == "1"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bootstrap():
    return _load("bootstrap")


# -- data step -------------------------------------------------------------------------------------

def test_data_from_a_path_then_skipped(bootstrap, tmp_path, capsys, shakespeare_path):
    src = shakespeare_path
    out = bootstrap.step_data(str(src), root=str(tmp_path))
    assert (Path(out) / "meta.json").is_file() and (Path(out) / "train.bin").stat().st_size > 0
    assert "preparing data/shakespeare_char from" in capsys.readouterr().out
    bootstrap.step_data(str(src), root=str(tmp_path))  # idempotent: nothing rewritten
    assert "is prepared in data/shakespeare_char" in capsys.readouterr().out


def test_data_from_pygpt_data_dir(bootstrap, tmp_path, monkeypatch, capsys, shakespeare_path):
    shared = tmp_path / "shared"
    (shared / "tinyshakespeare").mkdir(parents=True)
    shutil.copyfile(shakespeare_path, shared / "tinyshakespeare" / "input.txt")
    monkeypatch.setenv("PYGPT_DATA_DIR", str(shared))
    out = bootstrap.step_data(None, root=str(tmp_path / "co"))
    assert (Path(out) / "meta.json").is_file()
    assert not (shared / "shakespeare_char").exists(), "the shared folder is read, never written"
    # a prepared set there is copied as it is
    monkeypatch.setenv("PYGPT_DATA_DIR", str(tmp_path / "co" / "data"))
    out2 = bootstrap.step_data(None, root=str(tmp_path / "co2"))
    assert (Path(out2) / "meta.json").read_bytes() == (Path(out) / "meta.json").read_bytes()
    assert "using the prepared tiny Shakespeare" in capsys.readouterr().out


def test_data_offline_says_what_to_provide(bootstrap, tmp_path, monkeypatch, capsys):
    from pygpt import data as D

    monkeypatch.delenv("PYGPT_DATA_DIR", raising=False)
    monkeypatch.setattr(D, "SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")  # nothing listens there
    with pytest.raises(SystemExit):
        bootstrap.step_data(None, root=str(tmp_path))
    err = capsys.readouterr().err
    assert "could not download tiny Shakespeare" in err and "DATA=/path/to/input.txt" in err
    assert "PYGPT_DATA_DIR" in err
    with pytest.raises(SystemExit):
        bootstrap.step_data(str(tmp_path / "missing.txt"), root=str(tmp_path))
    assert "missing.txt is not a file" in capsys.readouterr().err


# -- the build backend -----------------------------------------------------------------------------

def test_backend_finds_the_target_torch(monkeypatch):
    """Under isolation torch is not importable; the backend asks the target interpreter (here: this
    one, whose torch it must report) and appends that site-packages, after the build env's paths."""
    backend = _load("pygpt_build")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    backend._use_target_torch()
    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    assert sys.path[-1] == site


def test_backend_without_torch_stops_in_one_line(monkeypatch, tmp_path):
    backend = _load("pygpt_build")
    monkeypatch.setitem(sys.modules, "torch", None)
    no_torch = tmp_path / "python"
    no_torch.write_text("#!/bin/sh\nexit 1\n")  # an interpreter in which nothing imports
    no_torch.chmod(0o755)
    monkeypatch.setattr(backend, "_candidates", lambda: [(str(no_torch), dict(os.environ))])
    with pytest.raises(SystemExit) as e:
        backend._use_target_torch()
    msg = str(e.value)
    assert "\n" not in msg and f"torch is not installed in {no_torch}" in msg and "pip install torch" in msg


def test_backend_hooks_are_setuptools():
    backend = _load("pygpt_build")
    from setuptools import build_meta

    for hook in ("build_wheel", "build_editable", "build_sdist", "get_requires_for_build_editable",
                 "prepare_metadata_for_build_editable"):
        assert getattr(backend, hook) is getattr(build_meta, hook)


# -- pygpt.info's last line ------------------------------------------------------------------------

def _info(**kw):
    base = {"extension": {"cuda": True}, "extension_error": None, "cuda_available": False, "torch": "2.x",
            "torch_cuda": "13.0", "nvcc": "cuda_13"}
    return {**base, **kw}


@pytest.mark.parametrize("info,want", [
    (_info(extension=None, extension_error="No module named 'pygpt._C'"), "next: build the kernels"),
    (_info(extension=None, extension_error="pygpt._C is there but does not load (x)"), "next: rebuild the kernels"),
    (_info(extension=None, extension_error="pygpt._C was built against torch 1 but torch 2 is installed"),
     "next: rebuild the kernels"),
    (_info(extension={"cuda": False}, cuda_available=True), "has no CUDA kernels (it was built CPU-only"),
    (_info(extension={"cuda": False}, cuda_available=True, nvcc=None), "nvcc was not found"),
    (_info(extension={"cuda": False}, cuda_available=True, torch_cuda=None), "torch has no CUDA"),
    (_info(), "next: all good"),
])
def test_info_next_step(info, want):
    from pygpt import info as I

    line = I.next_step(info)
    assert line.startswith("next: ") and want in line, line


def test_info_ends_with_next_step():
    r = subprocess.run([sys.executable, "-m", "pygpt.info"], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1].startswith("next: ")


# -- the Makefile ----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_train_command_line():
    r = subprocess.run(["make", "-n", "train", "ITERS=7", "DEVICE=cpu"], cwd=REPO_ROOT, capture_output=True,
                       text=True, check=True)
    assert "tools/bootstrap.py setup" in r.stdout
    assert "-m pygpt.train --preset shakespeare-cpu --fused --device cpu --data data/shakespeare_char" in r.stdout
    assert "--max-iters 7" in r.stdout
    r = subprocess.run(["make", "-n", "test"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert "setup --venv" in r.stdout and "--test" in r.stdout and "-m pytest tests -q" in r.stdout


# -- slow: as a new user --------------------------------------------------------------------------

# what a copy leaves out when the source is not a git checkout (the .gitignore's build outputs)
NOT_SOURCE = (".venv*", "venv*", "build", "dist", "data", "out", "out-*", "*.so", "__pycache__", "*.egg-info",
              ".pytest_cache", ".git")


def _copy_checkout(dst: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files (so no .venv, build, data, *.so)."""
    git = shutil.which("git")
    r = git and subprocess.run([git, "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT, capture_output=True)
    if not r or r.returncode != 0:  # a source tree without git (an unpacked archive)
        shutil.copytree(REPO_ROOT, dst, ignore=shutil.ignore_patterns(*NOT_SOURCE))
        return dst
    for f in filter(None, r.stdout.split(b"\0")):
        src = REPO_ROOT / os.fsdecode(f)
        if src.is_file():
            (dst / os.fsdecode(f)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / os.fsdecode(f))
    return dst


def _torch_requirement() -> str:
    v = torch.__version__
    return f"torch=={v}" if "+cpu" in v else f"torch=={v.split('+')[0]}"  # the wheel this suite runs on


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env.update(PYGPT_NO_CUDA="1", MAX_JOBS=env.get("MAX_JOBS", "2"), PYGPT_SETUP_TEST_NESTED="1", **extra)
    return env


@pytest.mark.slow
@pytest.mark.skipif(NESTED, reason="already inside a copy made by this test")
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_two_commands_on_a_fresh_copy(tmp_path, shakespeare_path):
    co = _copy_checkout(tmp_path / "pygpt")
    assert not (co / ".venv").exists()
    env = _env(TORCH=_torch_requirement(), DATA=str(shakespeare_path))
    py = sys.executable  # `python -m venv` from a venv makes one on the base interpreter
    r = subprocess.run(["make", "train", "ITERS=20", "DEVICE=cpu", f"PYTHON={py}"], cwd=co, env=env,
                       capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    for step in ("creating", "installing torch", "building pygpt._C", "preparing data/shakespeare_char"):
        assert f"== pygpt setup: {step}" in out, out[-6000:]
    assert "---- sample ----" in out and r.stdout.split("---- sample ----")[-1].strip(), out[-3000:]
    assert (co / ".venv" / "bin" / "python").exists() and (co / "out" / "shakespeare-cpu" / "ckpt.pt").is_file()
    # command 2, a fast subset; the set-up is done, so every step says so and nothing is rebuilt
    r = subprocess.run(["make", "test", "PYTEST_ARGS=tests/test_data.py -q -x", f"PYTHON={py}"], cwd=co,
                       env=env, capture_output=True, text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "passed" in r.stdout and "building pygpt._C" not in out, out[-6000:]
    assert "pygpt._C is built for this torch and newer than its sources" in out
    assert "installing the test dependencies" in out or "test dependencies are installed" in out


@pytest.mark.slow
@pytest.mark.skipif(NESTED, reason="already inside a copy made by this test")
def test_plain_pip_install_builds_against_the_envs_torch(tmp_path):
    co = _copy_checkout(tmp_path / "pygpt")
    venv = tmp_path / "venv"
    py = sys.executable
    env = _env()
    subprocess.run([py, "-m", "venv", str(venv)], check=True, env=env)
    vpy = str(venv / "bin" / "python")
    subprocess.run([vpy, "-m", "pip", "install", "-q", "-U", "pip"], check=True, env=env)
    subprocess.run([vpy, "-m", "pip", "install", "-q", _torch_requirement()], check=True, env=env, timeout=1200)
    # plain `pip install -e .`: an isolated build, whose environment has no torch
    r = subprocess.run([vpy, "-m", "pip", "install", "-v", "-e", str(co)], env=env, capture_output=True,
                       text=True, timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "pygpt: building against torch" in out, "the build did not go through the target's torch"
    r = subprocess.run([vpy, "-c", "import torch, pygpt._C as C, pygpt._ext as e; "
                        "print(C.build_info()['torch'], torch.__version__, e.loaded())"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    built, installed, loaded = r.stdout.split()
    assert built == installed and loaded == "True", r.stdout
