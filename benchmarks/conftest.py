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


def provider_model(provider, tv, x, rtol=3e-2):
    """(model, input) for a block/model-level provider: torchvision as is, torchvision in
    channels_last, or a converted copy on one backend (sanity-checked against torchvision first)."""
    import copy

    import fused_resnet

    if provider == "torchvision":
        return tv, x
    if provider == "torchvision_cl":
        return copy.deepcopy(tv).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    m = fused_resnet.convert(copy.deepcopy(tv), backend=provider[len("fused_"):])
    torch.testing.assert_close(m(x), tv(x), rtol=rtol, atol=rtol)  # sanity, not the numerics test
    return m, x


@pytest.fixture(autouse=True)
def _inference():
    with torch.inference_mode():
        yield
