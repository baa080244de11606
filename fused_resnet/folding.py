"""Batch-norm folding and the never-stale cache of folded weights.

For inference, ``bn(conv(x, w) + b)`` equals ``conv(x, w * s) + (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)`` (torchvision's FrozenBatchNorm2d formula). Folding is computed in
float64 from the stored parameters and cast once, so the folded weights carry one rounding only.
"""
from __future__ import annotations

import itertools
import operator
import weakref
from typing import List, NamedTuple, Optional, Union

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from . import _signals
from ._packing import invalidate, mark_stable, version

BatchNorm = Union[nn.BatchNorm2d, FrozenBatchNorm2d]


def fold_bn(conv_weight: torch.Tensor, conv_bias: Optional[torch.Tensor], bn: BatchNorm):
    """Fold an inference-mode BatchNorm2d / FrozenBatchNorm2d into the conv before it.

    Args:
        conv_weight: (Cout, Cin/groups, KH, KW) conv weight.
        conv_bias: (Cout,) conv bias or None.
        bn: the BatchNorm2d (running statistics are used) or FrozenBatchNorm2d after the conv.
    Returns:
        (weight, bias): folded weight in conv_weight's dtype and a (Cout,) bias in fp32 (float64 for a
        float64 conv), both computed in float64 and rounded once. Differentiable w.r.t. all inputs.
    """
    if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
        raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
    var = bn.running_var
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)  # affine=False
    beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
    return _fold(conv_weight, conv_bias, gamma, beta, bn.running_mean, var, bn.eps)


def _fold(conv_weight, conv_bias, gamma, beta, mean, var, eps: float):
    gamma, beta, mean, var = gamma.double(), beta.double(), mean.double(), var.double()
    scale = gamma * torch.rsqrt(var + eps)
    bias = beta - mean * scale
    if conv_bias is not None:
        bias = bias + conv_bias.double() * scale
    weight = conv_weight.double() * scale.reshape(-1, 1, 1, 1)
    # The kernels take an fp32 bias for fp32/fp16/bf16 convs; a float64 model keeps float64 throughout.
    bias_dtype = torch.float64 if conv_weight.dtype == torch.float64 else torch.float32
    return weight.to(conv_weight.dtype), bias.to(bias_dtype)


class FoldedConv(NamedTuple):
    """A conv with its following BN folded in, plus the conv's geometry."""

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def tensor_dicts(pairs) -> tuple:
    """The ``_parameters`` and ``_buffers`` dicts of every conv and BN of ``pairs``. The fused blocks
    keep these dict objects and read the tensors out of them on every call: functional_call,
    torch.func and stateless reparametrization swap tensors by writing these dicts directly, with no
    hook or version bump, so a tensor read once and kept would miss them."""
    return tuple([d for conv, bn in pairs for m in (conv, bn) for d in (m._parameters, m._buffers)])


def sources_of(dicts: tuple) -> list:
    """Every tensor the folded result depends on, read now out of ``tensor_dicts(pairs)`` (absent
    ones, e.g. a conv without bias, are left out). A train-mode BN forward updates running_mean/var
    inside its kernel without bumping their _version, but num_batches_tracked.add_(1) does: it is
    one of the sources, which catches that."""
    return [t for d in dicts for t in d.values() if t is not None]


def source_slots(dicts: tuple) -> tuple:
    """(dicts, keys): the (dict, key) slot of every tensor ``sources_of(dicts)`` returns. The hot path
    reads them with ``list(map(dict.__getitem__, *slots))``: the same tensors, C-level. A slot emptied
    since gives None or KeyError, which the caller treats as a change."""
    slots = [(d, k) for d in dicts for k, t in d.items() if t is not None]
    return tuple([d for d, _ in slots]), tuple([k for _, k in slots])


# Bumped whenever any module anywhere registers a parameter, buffer or submodule (assignment,
# load_state_dict(assign=True), module replacement): while it is unchanged, a module's (conv, bn)
# pairs and their source tensors are the same objects as last time, so the hot path may reuse
# them instead of re-reading ~30 attributes per block. Tensor contents are checked by stamp().
_EPOCH = [0]


def _bump_epoch(*_args) -> None:
    _EPOCH[0] += 1


_INSTALLED = []


def install_epoch_hooks() -> None:
    """Install the process-wide registration hooks that bump the epoch, once: on the first convert()
    or the first fused call (a module unpickled in a new process), never at import (a process that
    imports fused_resnet without converting a model keeps PyTorch's hooks untouched)."""
    if _INSTALLED:
        return
    _signals.install()  # optimizer steps: fused ones bump no version (stamp() counts them)
    _INSTALLED.append((nn.modules.module.register_module_parameter_registration_hook(_bump_epoch),
                       nn.modules.module.register_module_buffer_registration_hook(_bump_epoch),
                       nn.modules.module.register_module_module_registration_hook(_bump_epoch)))
    _EPOCH[0] += 1  # whatever was read before the hooks existed is re-read


def structure_epoch() -> int:
    return _EPOCH[0]



def attr_dicts(pairs) -> tuple:
    """(conv instance dicts, BN instance dicts) of ``pairs``: stamp() reads the geometry and eps out of
    them directly (an attribute lookup on an nn.Module walks its class hierarchy first)."""
    return tuple([vars(conv) for conv, _ in pairs]), tuple([vars(bn) for _, bn in pairs])


def stamp(sources, pairs, dicts: Optional[tuple] = None) -> tuple:
    """Changes whenever the folded result or the conv's geometry could: _version moves on every
    in-place write (load_state_dict, optimizer steps, running-stat updates); data_ptr moves on .to(),
    .half(), ``.data = ...`` and parameter replacement (the cache keeps the old tensors alive, so a
    new one never reuses their address); the conv attributes, BN eps and BN training flag are
    compared by value.
    Writes *through* ``.data`` change none of these (PyTorch gives them no version bump): eval() and
    fused_resnet.refresh() are the refresh points for those (ARCHITECTURE.md). The hot path of every
    fused block runs this over ~25 tensors, so it is kept to C-level maps. ``dicts``: attr_dicts(pairs)."""
    try:
        versions = list(map(_VERSION, sources))
    except RuntimeError:  # inference tensors (made inside torch.inference_mode) have no version counter
        versions = [version(t) for t in sources]
    convs, bns = dicts if dicts is not None else attr_dicts(pairs)
    return (versions, list(map(_DATA_PTR, sources)), list(map(_GEOMETRY, convs)), list(map(_EPS, bns)),
            _signals.STEPS[0])  # any optimizer step, fused ones included (their writes bump no version)


_GEOMETRY = operator.itemgetter("stride", "padding", "dilation", "groups", "padding_mode")
_EPS = operator.itemgetter("eps", "training")  # BN eps, and a BN switched to train() on its own
_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr


def fold_conv_bn(conv: nn.Conv2d, bn: BatchNorm) -> FoldedConv:
    """Fold ``bn`` into ``conv``; the result is differentiable when grad mode is on."""
    if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
        raise ValueError(f"cannot fuse conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
    weight, bias = fold_bn(conv.weight, conv.bias, bn)
    return FoldedConv(weight, bias, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)


_CACHES: "weakref.WeakValueDictionary[int, FoldCache]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


class FoldCache:
    """Folded (conv, bn) pairs of one module, recomputed only when a source tensor changed.

    ``refresh(pairs)`` returns the folded convs and bumps ``generation`` whenever it refolds (launch
    plans and CUDA graphs built on the old values check it). A refold writes into the existing
    folded tensors when their shapes, dtypes and devices still match, so a torch.compile graph that
    holds them as inputs sees the new values; otherwise it allocates new ones. The folded tensors are
    ordinary (non-inference) tensors even when first made inside torch.inference_mode(), so they can
    be refreshed in place outside it.
    """

    def __init__(self) -> None:
        self.generation = 0
        self.value: Optional[tuple[FoldedConv, ...]] = None
        self.pairs: Optional[tuple] = None  # the (conv, bn) modules the cached folds were made from
        self.stamp: Optional[tuple] = None  # stamp() of their tensors then
        self._sources: list = []
        self.handle = next(_HANDLES)  # names this cache in the compiled-graph refresh op
        _CACHES[self.handle] = self

    def invalidate(self) -> None:
        """Refold on the next refresh even if no source looks changed (writes through ``.data``)."""
        self.stamp = None

    def stale(self) -> bool:
        """Has a source tensor of the last fold been written or moved since? (Reads the stored
        tensors themselves, not module attributes: usable while torch.export swaps those for fakes.)"""
        return self.stamp is None or stamp(self._sources, self.pairs) != self.stamp

    def matches(self, pairs) -> bool:
        """Built for these very modules (folded tensors usable as compiled-graph inputs)?"""
        return self.value is not None and self.pairs == tuple(pairs)

    def refresh(self, pairs, in_place_only: bool = False, sources: Optional[list] = None) -> tuple[FoldedConv, ...]:
        """The folded pairs, refolded first if a source changed. ``sources``: the pairs' tensors
        (``sources_of(tensor_dicts(pairs))``) if the caller already read them."""
        pairs = tuple(pairs)
        if sources is None:
            sources = sources_of(tensor_dicts(pairs))
        new_stamp = stamp(sources, pairs)
        if new_stamp == self.stamp and pairs == self.pairs:
            return self.value
        with torch.inference_mode(False), torch.no_grad():  # in this order: inference_mode(False) turns grad mode on
            new = tuple([fold_conv_bn(c, b) for c, b in pairs])
            old = self.value if pairs == self.pairs else None
            same = old is not None and [
                (o.weight.shape, o.weight.dtype, o.weight.device, o.bias.shape, o.bias.device) for o in old] == [
                (n.weight.shape, n.weight.dtype, n.weight.device, n.bias.shape, n.bias.device) for n in new]
            if same:
                for o, n in zip(old, new):
                    invalidate(o.weight)  # its packed layouts are remade from the new values
                    o.weight.copy_(n.weight)
                    o.bias.copy_(n.bias)
                new = tuple(n._replace(weight=o.weight, bias=o.bias) for o, n in zip(old, new))
            elif in_place_only:
                raise RuntimeError(
                    "fused_resnet: a compiled graph holds this module's folded weights, but its parameters "
                    "changed shape, dtype or device since it was traced; call torch._dynamo.reset() (or "
                    "compile again) after .to()/.half() or replacing parameters")
        for folded in new:
            mark_stable(folded.weight)  # packed layouts of it may be cached
        self.value, self.pairs, self.stamp = new, pairs, new_stamp
        self._sources = sources
        self.generation += 1
        return new


@torch.library.custom_op("fused_resnet::_refresh_folds", mutates_args=("folded",))
def _refresh_folds(folded: List[torch.Tensor], handle: int) -> None:
    """Inside a torch.compile graph: refold the cache ``handle`` in place if a parameter changed.

    The graph reads the folded tensors as inputs; this op (opaque to the compiler, a few version
    checks when nothing changed) runs before them, so a compiled model never uses stale folds and
    never refolds per call."""
    cache = _CACHES.get(handle)
    if cache is not None and cache.pairs is not None:
        cache.refresh(cache.pairs, in_place_only=True)
        # Write through the arguments too: a compile backend that does not re-inplace mutations
        # (aot_eager) hands this op copies and copies them back over the cache after the graph.
        current = [t for f in cache.value for t in (f.weight, f.bias)]
        for arg, value in zip(folded, current):
            if arg.data_ptr() != value.data_ptr():
                arg.copy_(value)


@_refresh_folds.register_fake
def _(folded, handle):
    return None


def foldable(conv, bn) -> Optional[str]:
    """None if (conv, bn) can be folded into one fused conv, else why not."""
    if type(conv) is not nn.Conv2d:
        return f"{type(conv).__name__} is not a plain Conv2d"
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return f"conv padding {conv.padding!r}/{conv.padding_mode} not supported"
    if isinstance(bn, nn.BatchNorm2d) and type(bn) is nn.BatchNorm2d:
        return None if bn.track_running_stats else "BatchNorm2d without running statistics"
    if type(bn) is FrozenBatchNorm2d:
        return None
    return f"norm layer {type(bn).__name__} cannot be folded"


def downsample_pair(ds) -> Optional[tuple]:
    """(conv, bn) of torchvision's Sequential(conv1x1, norm) downsample, else None."""
    if isinstance(ds, nn.Sequential) and len(ds) == 2 and foldable(ds[0], ds[1]) is None:
        return ds[0], ds[1]
    return None
