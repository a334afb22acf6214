import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Every test sees a registry built from the current environment (no cross-test leaks)."""
    from mertlab.registry import reset_registry

    reset_registry()
    yield
    reset_registry()
