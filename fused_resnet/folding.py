"""Batch-norm folding and the never-stale cache of folded weights.

For inference, ``bn(conv(x, w) + b)`` equals ``conv(x, w * s) + (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)`` (torchvision's FrozenBatchNorm2d formula). Folding is computed in
float64 from the stored parameters and cast once, so the folded weights carry one rounding only.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ._packing import mark_stable, version

BatchNorm = Union[nn.BatchNorm2d, FrozenBatchNorm2d]


def _bn_tensors(bn: BatchNorm):
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    return weight, bias, bn.running_mean, bn.running_var


def fold_bn(conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], bn: BatchNorm):
    """Fold an inference-mode BatchNorm2d / FrozenBatchNorm2d into the conv before it.

    Args:
        conv_weight: (Cout, Cin/groups, KH, KW) conv weight.
        conv_bias: (Cout,) conv bias or None.
        bn: the BatchNorm2d (running statistics are used) or FrozenBatchNorm2d after the conv.
    Returns:
        (weight, bias): folded weight in conv_weight's dtype (fp32 for fp32 models) and a (Cout,)
        fp32 bias, both computed in float64 and rounded once. Differentiable w.r.t. all inputs.
    """
    if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    gamma, beta, mean, var = (t.double() for t in _bn_tensors(bn))
    scale = gamma * torch.rsqrt(var + bn.eps)
    bias = beta - mean * scale
    if conv_bias is not None:
        bias = bias + conv_bias.double() * scale
    weight = conv_weight.double() * scale.reshape(-1, 1, 1, 1)
    return weight.to(conv_weight.dtype), bias.float()


class FoldedConv(NamedTuple):
    """A conv with its following BN folded in, plus the conv's geometry."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _fingerprint(t: Optional[torch.Tensor]):
    # _version moves on every in-place write (load_state_dict, optimizer steps, running-stat
    # updates); data_ptr/dtype/device move on .to()/.half()/parameter replacement.
    if t is None:
        return None
    return (id(t), version(t), t.data_ptr(), t.dtype, t.device)


def conv_bn_key(conv: nn.Conv2d, bn: BatchNorm) -> tuple:
    """Cheap validity key: changes whenever the folded result could change."""
    return (
        _fingerprint(conv.weight),
        _fingerprint(conv.bias),
        *(_fingerprint(t) for t in _bn_tensors_raw(bn)),
        float(bn.eps),
    )


def _bn_tensors_raw(bn: BatchNorm):
    # A train-mode BN forward updates running_mean/var inside the kernel without bumping their
    # _version, but it also does num_batches_tracked.add_(1), which does: that catches it.
    return (bn.weight, bn.bias, bn.running_mean, bn.running_var, getattr(bn, "num_batches_tracked", None))


def fold_conv_bn(conv: nn.Conv2d, bn: BatchNorm) -> FoldedConv:
    """Fold ``bn`` into ``conv``; the result is differentiable when grad mode is on."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ValueError(f"cannot fuse conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    weight, bias = fold_bn(conv.weight, conv.bias, bn)
    return FoldedConv(weight, bias, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)


class FoldCache:
    """Folded (conv, bn) pairs of one module, recomputed only when a source tensor changed."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._value: Optional[tuple[FoldedConv, ...]] = None

    def get(self, pairs: list[tuple[nn.Conv2d, BatchNorm]]) -> tuple[FoldedConv, ...]:
        key = tuple(conv_bn_key(c, b) for c, b in pairs)
        if key != self._key:
            with torch.no_grad():
                self._value = tuple(fold_conv_bn(c, b) for c, b in pairs)
            for folded in self._value:
                mark_stable(folded.weight)  # packed layouts of it may be cached
            self._key = key
        return self._value
