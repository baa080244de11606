"""Model level: torchvision ResNet-50 (eval, NCHW and channels_last) vs converted, per backend.
torch.compile / TorchScript baselines live in `python -m fused_resnet bench` (their compile step is
reported apart there)."""
import pytest
import torch
import torchvision

from fused_resnet.testing import randomize_bn

from conftest import DEVICE, DTYPE, GPU, fused_backends, provider_model, timed

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
    m, x = provider_model(provider, tv, x, rtol=5e-2)
    benchmark.extra_info.update(model="resnet50", batch=BATCH)
    benchmark(timed(lambda: m(x)))
