"""The op schemas of the extension, with fake (shape) implementations: they trace under torch.compile
even where the extension is not built; csrc/fused_resnet_api.cpp registers the CUDA implementations."""
from __future__ import annotations

import torch

from .._geometry import out_size

_LIB = torch.library.Library("fused_resnet", "FRAGMENT")
_LIB.define("_conv2d_cutlass(Tensor x, Tensor w, Tensor bias, Tensor? residual, int[] stride, int[] padding, "
            "int[] dilation, bool relu, int tile) -> Tensor")
_LIB.define("_bias_residual_act_cuda(Tensor x, Tensor? bias, Tensor? residual, bool relu) -> Tensor")
_LIB.define("_add_relu_cuda(Tensor x, Tensor y) -> Tensor")

_LIB.define("_conv2d_sm90(Tensor x, Tensor w, Tensor bias, Tensor? residual, int[] stride, int[] padding, "
            "int[] dilation, bool relu, int config) -> Tensor")


def _fake_conv_out(x, w, stride, padding, dilation):
    """The channels_last output both CUTLASS conv ops return, for tracing."""
    n, _, h, wd = x.shape
    k, _, r, s = w.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(wd, s, stride[1], padding[1], dilation[1])
    return torch.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.register_fake("fused_resnet::_conv2d_cutlass")
def _(x, w, bias, residual, stride, padding, dilation, relu, tile):
    return _fake_conv_out(x, w, stride, padding, dilation)


@torch.library.register_fake("fused_resnet::_conv2d_sm90")
def _(x, w, bias, residual, stride, padding, dilation, relu, config):
    return _fake_conv_out(x, w, stride, padding, dilation)


@torch.library.register_fake("fused_resnet::_bias_residual_act_cuda")
def _(x, bias, residual, relu):
    return torch.empty_like(x)


@torch.library.register_fake("fused_resnet::_add_relu_cuda")
def _(x, y):
    return torch.empty_like(x)

