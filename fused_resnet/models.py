"""Builders with torchvision's signatures that return converted (fused) models.

Each ``fused_resnet.<name>(weights=None, progress=True, **kwargs)`` calls
``torchvision.models.<name>`` with the same arguments (so weights enums, ``num_classes``,
``zero_init_residual``, ``replace_stride_with_dilation``, ``norm_layer`` behave identically) and
then ``fused_resnet.convert`` on the result.
"""
from __future__ import annotations

import functools

import torchvision.models as tvm

from .swap import convert

NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
         "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def _make(name: str):
    tv_builder = getattr(tvm, name)

    @functools.wraps(tv_builder)
    def builder(*, weights=None, progress: bool = True, **kwargs):
        return convert(tv_builder(weights=weights, progress=progress, **kwargs))

    builder.__doc__ = (f"torchvision.models.{name}(...) converted by fused_resnet.convert: same signature, "
                       f"weights and outputs; eval mode runs fused kernels.\n\n" + (tv_builder.__doc__ or ""))
    return builder


resnet18 = _make("resnet18")
resnet34 = _make("resnet34")
resnet50 = _make("resnet50")
resnet101 = _make("resnet101")
resnet152 = _make("resnet152")
resnext50_32x4d = _make("resnext50_32x4d")
resnext101_32x8d = _make("resnext101_32x8d")
resnext101_64x4d = _make("resnext101_64x4d")
wide_resnet50_2 = _make("wide_resnet50_2")
wide_resnet101_2 = _make("wide_resnet101_2")
