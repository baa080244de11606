"""Drop-in fused versions of torchvision's BasicBlock, Bottleneck and ResNet.

train(): torchvision's forward, untouched (batch statistics, running-stat updates, autograd).
eval():  every conv runs as ``ops.fused_conv2d`` with its BN folded in:

    BasicBlock:  conv1+bn1+relu -> conv2+bn2 (+ downsample conv+bn) + identity -> relu
    Bottleneck:  conv1+bn1+relu -> conv2+bn2+relu -> conv3+bn3 + identity -> relu

Activations run in channels_last inside a block; the block returns its input's memory format.
Inputs the fused path does not take (wrong rank, channel count or dtype, empty batch) and
configurations it cannot fold go through torchvision's forward, so errors and results are exactly
torchvision's. The folded weights are a cache keyed on every source tensor's version, pointer,
dtype and device: it is recomputed after load_state_dict, in-place edits, .to()/.half(), never stale.
"""
from __future__ import annotations

import sys

import torch
import torchvision.models.resnet as tvr

from . import _cpu_graph, _trace
from ._donation import layer_formats, run_layer, run_stem_pool, sole_owner
from ._fused import _alias, _conv, _downsample_pair, _FusedBlock, _FusedMixin


class BasicBlock(_FusedBlock, tvr.BasicBlock):
    """torchvision.models.resnet.BasicBlock whose eval forward runs two fused convs."""

    _reference_forward = _alias(tvr.BasicBlock.forward, "_reference_forward")

    def _main_convs(self):
        return (self.conv1, self.conv2)

    def _fold_pairs(self):
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
        ds = _downsample_pair(self.downsample)
        return pairs + [ds] if ds else pairs

    def _body(self, x, donate, fmt, folded, steps):
        be = self._fused_backend
        f = folded or (None,) * steps.n
        out = _conv(x, f[0], "conv1", be, steps)
        identity, owned = self._identity(x, folded, 2, donate, steps)
        out = _conv(out, f[1], "conv2", be, steps, residual=identity, into_residual=owned)
        return out.contiguous(memory_format=fmt)


class Bottleneck(_FusedBlock, tvr.Bottleneck):
    """torchvision.models.resnet.Bottleneck whose eval forward runs three fused convs."""

    _reference_forward = _alias(tvr.Bottleneck.forward, "_reference_forward")

    def _main_convs(self):
        return (self.conv1, self.conv2, self.conv3)

    def _fold_pairs(self):
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]
        ds = _downsample_pair(self.downsample)
        return pairs + [ds] if ds else pairs

    def _body(self, x, donate, fmt, folded, steps):
        be = self._fused_backend
        f = folded or (None,) * steps.n
        out = _conv(x, f[0], "conv1", be, steps)
        out = _conv(out, f[1], "conv2", be, steps)
        identity, owned = self._identity(x, folded, 3, donate, steps)
        out = _conv(out, f[2], "conv3", be, steps, residual=identity, into_residual=owned)
        return out.contiguous(memory_format=fmt)


class ResNet(_cpu_graph.GraphRoot, _FusedMixin, tvr.ResNet):
    """torchvision ResNet whose eval forward fuses the stem (conv1+bn1+relu) and runs the whole
    network in channels_last (its output, the logits, has no memory format to keep); a no-grad eval
    float32 CPU call runs the whole network as the CPU graph (``_cpu_graph.GraphRoot``)."""

    _reference_forward_impl = _alias(tvr.ResNet._forward_impl, "_reference_forward_impl")

    def _fold_pairs(self):
        return [(self.conv1, self.bn1)]

    def _skipped_modules(self) -> tuple:
        return (self.conv1, self.bn1, self.relu)  # the rest is called as modules: their hooks fire

    def _out_format(self, x) -> tuple:
        return layer_formats(self, x, (self.conv1,))  # (the logits have none; hooked layers see these)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._reference_forward_impl(x)
        out = self._cpu_graph_forward(x)
        if out is not None:
            return out
        return self._run_planned(x, False, self._body)

    def __prepare_scriptable__(self):
        return _FusedBlock.__prepare_scriptable__(self)

    def _fallback(self, x, why: str):
        if not _trace.active():
            return super()._forward_impl(x)
        with _trace.fallback(why):
            return super()._forward_impl(x)

    def _body(self, x, donate, fmt, folded, steps):
        x = _conv(x, folded[0] if folded else None, "conv1", self._fused_backend, steps)
        x = run_stem_pool(self.maxpool, x, fmt[0])
        fresh = not torch.compiler.is_compiling() and sole_owner(x, sys.getrefcount(x))  # (kept elsewhere? _donation)
        for layer, layer_fmt in zip((self.layer1, self.layer2, self.layer3, self.layer4), fmt):
            x, fresh = run_layer(layer, x, fresh, steps.ambient, steps.amp, layer_fmt)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


SWAPS = {tvr.BasicBlock: BasicBlock, tvr.Bottleneck: Bottleneck, tvr.ResNet: ResNet}
