"""pytest-benchmark settings for the per-level benchmark files (bench_*.py).

    pytest benchmarks/ --benchmark-only                 # CPU: a small default set
    FUSED_RESNET_BENCH_DEVICE=cuda pytest benchmarks/ --benchmark-only

Each benchmark is checked against its baseline before it is timed (a fast wrong kernel is a bug, not
a result). On CUDA every timed call ends with a synchronize, so the numbers are wall-clock per call.
"""
import os

import pytest
import torch

DEVICE = os.environ.get("FUSED_RESNET_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
GPU = DEVICE.startswith("cuda")
DTYPE = torch.float16 if GPU else torch.float32


def timed(fn):
    """fn followed by a device sync (so pytest-benchmark's wall clock covers the GPU work)."""
    if not GPU:
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def fused_backends():
    from fused_resnet import available_backends

    return [b for b in available_backends() if GPU or b == "eager"]


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield
