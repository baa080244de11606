"""Test helpers: run torchvision and fused_resnet side by side against a float64 reference."""
import copy

import torch

import fused_resnet
from fused_resnet.testing import compare, randomize_bn

CL = torch.channels_last


def assert_matches_torchvision(tv_model, x, *, fused=None, dtype=torch.float32, backend=None):
    """Convert a copy of eval-mode ``tv_model`` and check it against torchvision on input x (float64
    reference vs same-dtype torchvision, ARCHITECTURE.md's rule). Returns the fused output."""
    tv_model = tv_model.eval()
    with torch.no_grad():
        ref = copy.deepcopy(tv_model).double()(x.double())
    tv = copy.deepcopy(tv_model).to(dtype)
    fused = fused if fused is not None else fused_resnet.convert(copy.deepcopy(tv), backend=backend)
    xd = x.to(dtype)
    with torch.no_grad():
        eager = tv(xd)
        out = fused(xd)
    assert out.dtype == eager.dtype
    assert out.shape == eager.shape
    if isinstance(out, torch.Tensor) and out.dim() == 4:
        # same memory format as torchvision returns
        assert out.is_contiguous(memory_format=CL) == eager.is_contiguous(memory_format=CL)
        assert out.is_contiguous() == eager.is_contiguous()
    cmp = compare(out, eager, ref)
    assert cmp.ok, str(cmp)
    return out


def random_model(builder, **kwargs):
    torch.manual_seed(0)
    return randomize_bn(builder(**kwargs)).eval()
