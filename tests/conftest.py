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
