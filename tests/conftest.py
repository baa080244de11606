"""Shared fixtures. Nothing here touches a GPU at import; GPU tests are marked and skipped without one."""
import os

import pytest
import torch

# Deterministic, and 2-core friendly.
torch.manual_seed(0)

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _no_backend_env(monkeypatch):
    """Tests choose backends explicitly; a developer's FUSED_RESNET_BACKEND must not leak in."""
    if "FUSED_RESNET_BACKEND" in os.environ:
        monkeypatch.delenv("FUSED_RESNET_BACKEND")
