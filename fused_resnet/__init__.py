"""fused_resnet: drop-in fused inference blocks for torchvision ResNets.

    import fused_resnet, torch
    model = fused_resnet.resnet50(weights=...).eval().cuda().half()   # or fused_resnet.convert(tv_model)
    with torch.inference_mode():
        y = model(x)                          # each conv + BN (+ residual) + ReLU is one kernel
    print(fused_resnet.explain(model, x))     # which backend ran each conv, and why

See README.md for the backends, numerics and benchmarks.
"""
from . import ops, tactics  # noqa: F401  (fused_resnet.tactics: the registry)
from ._selector import BackendUnavailableError, available_backends, use_backend
from .blocks import BasicBlock, Bottleneck, ResNet
from .explain import explain
from .folding import fold_bn
from .models import (resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                     resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)
from .optimize import OptimizedModel, optimize
from .swap import convert, refresh

__version__ = "0.1.0"

__all__ = [
    "BasicBlock", "Bottleneck", "ResNet", "convert", "refresh", "explain", "fold_bn", "ops", "optimize", "OptimizedModel",
    "available_backends", "use_backend", "BackendUnavailableError",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
]
