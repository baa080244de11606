"""add_relu: out = relu(x + identity), elementwise, in x's dtype and memory format.

Used where the conv itself is not fused (e.g. a conv run by another library). Backends: eager
(torch ops), triton (fused_resnet.triton.add_relu). NaN propagates as in torch.relu.
"""
from __future__ import annotations

import torch

from .. import _selector
from .._geometry import memory_format_of

# Inductor must hand the op tensors with the strides seen at trace time: the output layout
# follows the input layout (channels_last in, channels_last out).
_FIXED_STRIDES = (torch.Tag.needs_fixed_stride_order,)


def add_relu_ref(x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    return torch.relu(x + identity)


def _run(x, identity, backend):
    choice = _selector.select_elementwise(x, backend)
    if choice.backend == "triton":
        from ..triton.add_relu import add_relu_triton

        return add_relu_triton(x, identity)
    if choice.backend == "cuda":
        from .. import _ext  # noqa: F401  (defines the op schema)

        cl = torch.channels_last
        out = torch.ops.fused_resnet._add_relu_cuda(x.contiguous(memory_format=cl), identity.contiguous(memory_format=cl))
        return out.contiguous(memory_format=memory_format_of(x))
    return add_relu_ref(x, identity)


@torch.library.custom_op("fused_resnet::add_relu", mutates_args=(), tags=_FIXED_STRIDES)
def _add_relu_op(x: torch.Tensor, identity: torch.Tensor, backend: str) -> torch.Tensor:
    return _run(x, identity, backend)


@_add_relu_op.register_fake
def _(x, identity, backend):
    return torch.empty_like(x)


def add_relu(x: torch.Tensor, identity: torch.Tensor, *, backend=None) -> torch.Tensor:
    """relu(x + identity) in one pass. x and identity: same shape, dtype and device."""
    if x.shape != identity.shape:
        raise ValueError(f"add_relu: shapes differ: {tuple(x.shape)} vs {tuple(identity.shape)}")
    if x.dtype != identity.dtype:
        raise RuntimeError(f"add_relu: dtypes differ: {x.dtype} vs {identity.dtype}")
    if x.device != identity.device:
        raise RuntimeError(f"add_relu: devices differ: {x.device} vs {identity.device}")
    requested = _selector.requested_backend(backend)
    if torch.is_grad_enabled() and (x.requires_grad or identity.requires_grad):
        return add_relu_ref(x, identity)
    return _add_relu_op(x, identity, requested)
