import pytest
import torch


@pytest.fixture
def gen():
    """A seeded generator: fresh random inputs in every test, the same ones on every run."""
    return torch.Generator().manual_seed(0)
