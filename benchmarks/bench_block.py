"""Block level: torchvision Bottleneck / BasicBlock (eval) vs the fused block, per backend."""
import pytest
import torch
import torchvision.models.resnet as tvr

from fused_resnet.testing import randomize_bn

from conftest import DEVICE, DTYPE, GPU, fused_backends, provider_model, timed

BATCH = 32 if GPU else 2
# (name, block, inplanes, planes, stride, downsample, spatial): ResNet-50 layer1.0 / layer3.1, ResNet-18 layer2.0
BLOCKS = [("r50_layer1.0", tvr.Bottleneck, 64, 64, 1, True, 56), ("r50_layer3.1", tvr.Bottleneck, 1024, 256, 1, False, 14),
          ("r18_layer2.0", tvr.BasicBlock, 64, 128, 2, True, 56)]
PROVIDERS = ["torchvision", "torchvision_cl"] + [f"fused_{b}" for b in fused_backends()]


def _block(block, inplanes, planes, stride, ds):
    downsample = (torch.nn.Sequential(tvr.conv1x1(inplanes, planes * block.expansion, stride),
                                      torch.nn.BatchNorm2d(planes * block.expansion)) if ds else None)
    torch.manual_seed(0)
    return randomize_bn(block(inplanes, planes, stride, downsample)).eval().to(DEVICE, DTYPE)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("cfg", BLOCKS, ids=lambda c: c[0])
def test_block(benchmark, cfg, provider):
    name, block, inplanes, planes, stride, ds, hw = cfg
    tv = _block(block, inplanes, planes, stride, ds)
    x = torch.randn(BATCH, inplanes, hw, hw, device=DEVICE, dtype=DTYPE)
    m, x = provider_model(provider, tv, x, rtol=3e-2)
    benchmark.extra_info.update(block=name, batch=BATCH)
    benchmark(timed(lambda: m(x)))
