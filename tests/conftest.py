"""Shared fixtures for the pygpt test suite.

Nothing here imports pygpt._C: every test outside tests/kernels and test_extension.py runs on a
plain source checkout with the pure-PyTorch backends.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE_PATH = REPO_ROOT.parent / "shared/data/tinyshakespeare/input.txt"


def shakespeare_text_path() -> Path:
    """The tiny Shakespeare input.txt next to the repository, or pytest.skip if it is not there."""
    if not SHAKESPEARE_PATH.is_file():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE_PATH} (no network downloads in tests)")
    return SHAKESPEARE_PATH


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """Path of tiny Shakespeare's input.txt; skips the test if the shared data is missing."""
    return shakespeare_text_path()


@pytest.fixture(scope="session")
def shakespeare_text(shakespeare_path) -> str:
    return shakespeare_path.read_text(encoding="utf-8")


# -- the GPU check's hooks (python -m pygpt.gpucheck runs the kernel tests with these) -------------
#
# --gpu-plan     run a planned subset of the parametrised cases instead of the full cross product:
#                enough cases that every kernel, dtype and code path runs at least once (see
#                gpu_plan below). A lent GPU has minutes, and every Triton case compiles its own
#                specialisations; the full product runs in CI on the CPU and wherever time allows.
# PYGPT_STOP_AT=<unix time>   tests that would start after then are skipped with the reason
#                "gpucheck budget reached", so pytest still prints its summary (a killed pytest
#                prints nothing).

# The parameters whose every value must run at least once per (test, backend, device), and the
# pairs whose every combination must: the shape values are separate code paths (T = 1, odd tails,
# padded head dims), and dtype x causal are the kernels' compiled variants.
PLAN_PAIRS = (("dtype", "causal"),)
PLAN_FIXED = ("backend", "device")


def pytest_addoption(parser):
    parser.addoption("--gpu-plan", action="store_true", default=False,
                     help="run the GPU check's planned subset of parametrised kernel cases")


def _plan_features(params: dict) -> set:
    feats = {(k, repr(v)) for k, v in params.items() if k not in PLAN_FIXED}
    for a, b in PLAN_PAIRS:
        if a in params and b in params:
            feats.add(((a, b), repr(params[a]), repr(params[b])))
    return feats


def _refused_dtype(item) -> bool:
    """A case the CUDA kernel refuses by dtype (it would only skip): not worth a slot in the plan."""
    params = item.callspec.params
    if params.get("device") != "cuda" or params.get("backend") not in ("cuda", "ext") or "dtype" not in params:
        return False
    op = item.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").removeprefix("triton_")
    from pygpt import ops

    return op in ops.OPS and ops.dtype_reason(op, "cuda", params["dtype"]) is not None


def gpu_plan(items):
    """(kept, dropped): per (module, test function, backend, device), a greedy set cover of the
    parametrised cases over _plan_features, in collection order. Unparametrised tests are kept."""
    groups, kept, dropped = {}, [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", None)
        if not params:
            kept.append(item)
            continue
        if _refused_dtype(item):
            dropped.append(item)
            continue
        key = (item.module.__name__, item.originalname, params.get("backend"), params.get("device"))
        groups.setdefault(key, []).append(item)
    chosen = set()
    for cases in groups.values():
        need = set().union(*(_plan_features(c.callspec.params) for c in cases))
        while need:
            best = max(cases, key=lambda c: len(_plan_features(c.callspec.params) & need))
            chosen.add(best.nodeid)
            need -= _plan_features(best.callspec.params)
    decided = {id(it) for it in kept} | {id(it) for it in dropped}
    for item in items:
        if id(item) not in decided:
            (kept if item.nodeid in chosen else dropped).append(item)
    order = {id(it): i for i, it in enumerate(items)}
    kept.sort(key=lambda it: order[id(it)])
    return kept, dropped


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--gpu-plan"):
        return
    kept, dropped = gpu_plan(items)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


def pytest_runtest_setup(item):
    import os
    import time

    stop_at = os.environ.get("PYGPT_STOP_AT")
    if stop_at and time.time() > float(stop_at):
        pytest.skip("gpucheck budget reached (PYGPT_STOP_AT): not run")
