"""Model level: torchvision ResNet-50 (eval, NCHW and channels_last) vs converted, per backend.
torch.compile / TorchScript baselines live in `python -m fused_resnet bench` (their compile step is
reported apart there)."""
import copy

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet.testing import randomize_bn

from conftest import DEVICE, DTYPE, GPU, fused_backends, timed

BATCH = 64 if GPU else 1
PROVIDERS = ["torchvision", "torchvision_cl"] + [f"fused_{b}" for b in fused_backends()]
_model = {}


def _tv():
    if "m" not in _model:
        torch.manual_seed(0)
        _model["m"] = randomize_bn(torchvision.models.resnet50()).eval().to(DEVICE, DTYPE)
    return _model["m"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_resnet50(benchmark, provider):
    tv = _tv()
    x = torch.randn(BATCH, 3, 224, 224, device=DEVICE, dtype=DTYPE)
    if provider == "torchvision":
        m = tv
    elif provider == "torchvision_cl":
        m, x = copy.deepcopy(tv).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    else:
        m = fused_resnet.convert(copy.deepcopy(tv), backend=provider[len("fused_"):])
        torch.testing.assert_close(m(x), tv(x), rtol=5e-2, atol=5e-2)  # sanity, not the numerics test
    benchmark.extra_info.update(model="resnet50", batch=BATCH)
    benchmark(timed(lambda: m(x)))
