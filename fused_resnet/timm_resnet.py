"""Fused versions of timm's ResNet classes (timm.models.resnet: BasicBlock, Bottleneck, ResNet).

``fused_resnet.convert`` imports this module only when it meets a module whose class comes from
timm, so ``import fused_resnet`` never imports timm. The swap is in place, as for torchvision: same
parameters, buffers, hooks and state_dict keys; train mode runs timm's own forward.

timm 1.0's blocks name their activations act1/act2/act3 and carry optional extras, which the eval
forward handles as follows (every conv+BN pair is folded; ``[...]`` is one fused_conv2d call):

    Bottleneck: [conv1+bn1+act1] -> [conv2+bn2+act2] -> aa -> [conv3+bn3 + shortcut + act3]
      with attention (se: SE, ECA, ...): [conv3+bn3] -> se -> ops.add_relu(., shortcut)
    BasicBlock: [conv1+bn1+act1] -> aa -> [conv2+bn2 + shortcut + act2]   (se likewise)
    shortcut:   x, or [downsample conv+bn]; a pool before it ("d" models' AvgPool2d) runs as timm's
    ResNet:     [stem conv+bn+act] (the 7x7 stem, or the deep stems' three 3x3 convs), the stem pool
                as timm runs it (resnetrs's conv pool Sequential(conv, bn, act) fused), the layers
                with each block's input donated to it, then timm's head.

drop_block/drop_path are identities in eval; ``aa`` (BlurPool2d) and attention modules run as timm
runs them. What does not fit runs timm's forward and explain() says why: GroupNorm or BatchNormAct2d
(timm's norm+act module) instead of plain BatchNorm2d, activations other than nn.ReLU, drop modules
that are not timm's DropPath/DropBlock2d, grad_checkpointing, autograd recording. Other timm block
classes (e.g. skresnet's SelectiveKernel blocks) are not converted.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Optional

import timm.models.resnet as tr
import torch
from timm.layers import DropBlock2d, DropPath
from torch import nn

from . import _cpu_graph, _finite, _trace
from ._donation import layer_formats, run_layer, run_stem_pool, sole_owner
from ._fused import CL, _alias, _conv, _foldable, _FusedBlock, _FusedMixin
from .ops.add_relu import add_relu

_DROPS = (DropPath, DropBlock2d, nn.Identity)

# Set while a timm ResNet runs timm's forward_features with grad_checkpointing: its blocks then run
# timm's forward too (checkpoint_seq calls them one by one), so the result is exactly timm's.
_forced: Optional[str] = None


@contextlib.contextmanager
def _force_eager(reason: Optional[str]):
    global _forced
    saved, _forced = _forced, reason or _forced
    try:
        yield
    finally:
        _forced = saved


def _child(m: nn.Module, name: str):
    """``m.<name>`` without nn.Module.__getattr__'s lookup walk (this runs per block per planned
    forward): a registered child, else a plain attribute (timm assigns None to drop_block, se, aa
    before any module is registered under the name), else None."""
    if torch.compiler.is_compiling():  # (dynamo traces plain attribute reads)
        return getattr(m, name, None)
    mods = m._modules
    return mods[name] if name in mods else m.__dict__.get(name)


def _drop_problem(m: Optional[nn.Module]) -> Optional[str]:
    if m is None:
        return None
    if type(m) not in _DROPS:
        return f"drop module {type(m).__name__} is not timm's DropPath/DropBlock2d"
    if m.training:
        return f"{type(m).__name__} is in training mode"
    return None


def _downsample_layout(ds) -> Optional[tuple]:
    """(pool or None, conv, bn, conv name) of timm's downsample_conv Sequential(conv, bn) or
    downsample_avg Sequential(pool | Identity, conv1x1, bn) when the pair folds; else None (the
    downsample then runs as timm's module)."""
    if type(ds) is not nn.Sequential:
        return None
    if len(ds) == 2 and _foldable(ds[0], ds[1]) is None:
        return None, ds[0], ds[1], "downsample.0"
    if len(ds) == 3 and _foldable(ds[1], ds[2]) is None:
        return (None if type(ds[0]) is nn.Identity else ds[0]), ds[1], ds[2], "downsample.1"
    return None


def _records_grad(x, params) -> bool:
    return torch.is_grad_enabled() and (getattr(x, "requires_grad", False) or any(p.requires_grad for p in params))


class _TimmMixin(_FusedMixin):
    """What timm's classes share: per-call checks before _fused.py's (folds, input) checks."""

    def _structure_problem(self) -> Optional[str]:
        return None

    def _fusion_problem(self, x, pairs=None, fusable: bool = False, amp=None) -> Optional[str]:
        if self.training:
            return "eager: training mode"
        if _forced is not None:
            return _forced
        if _records_grad(x, self._grad_params()):
            return ("eager: autograd is recording (timm's forward; use torch.no_grad() or "
                    "torch.inference_mode() for fused kernels)")
        why = self._structure_problem()
        if why:
            return f"eager: {why}"
        why = super()._fusion_problem(x, pairs, fusable, amp)
        return why.replace("torchvision's forward", "timm's forward") if why else None

    def _grad_params(self):
        return self.parameters()

    def _plan(self, x, donate: bool, ambient: str, amp=None) -> tuple:
        # timm's own per-call conditions first (grad checkpointing, autograd through any parameter,
        # drop modules): when one holds, no plan; the slow path says why.
        if _forced is not None or (torch.is_grad_enabled() and _records_grad(x, self._grad_params())) \
                or self._structure_problem():
            return None, None
        return super()._plan(x, donate, ambient, amp)


class _TimmBlock(_TimmMixin, _FusedBlock):
    def _main_pairs(self) -> list:
        raise NotImplementedError

    def _main_convs(self):
        return tuple(c for c, _ in self._main_pairs())

    def _fold_pairs(self):
        layout = _downsample_layout(self.downsample)
        return self._main_pairs() + ([layout[1:3]] if layout else [])

    def _structure_problem(self) -> Optional[str]:
        if torch.compiler.is_compiling():  # (dynamo traces plain attribute reads)
            return _drop_problem(getattr(self, "drop_block", None)) or \
                _drop_problem(getattr(self, "drop_path", None))
        # (_drop_problem of drop_block and drop_path, inline: this runs per block per planned forward)
        mods, attrs = self._modules, self.__dict__
        for name in ("drop_block", "drop_path"):
            m = mods[name] if name in mods else attrs.get(name)
            if m is not None and (type(m) not in _DROPS or m.training):
                return _drop_problem(m)
        return None

    def _parts(self, planned: bool) -> tuple:
        """(downsample layout or None, downsample or None, aa or None, se or None), Identity read as
        None. On the planned path they are read once per structure: kept with the ``_hot`` state that
        _plan validated in this call (a registration or a container edit rebuilds that state, and so
        these); a cold call reads them afresh."""
        hot = self.__dict__.get("_hot") if planned else None
        kept = self.__dict__.get("_hot_parts")
        if hot is not None and kept is not None and kept[0] is hot:
            return kept[1]
        ds, aa, se = _child(self, "downsample"), _child(self, "aa"), _child(self, "se")
        parts = (_downsample_layout(ds), ds,
                 None if aa is None or isinstance(aa, nn.Identity) else aa,
                 None if se is None or isinstance(se, nn.Identity) else se)
        if hot is not None:
            self.__dict__["_hot_parts"] = (hot, parts)
        return parts

    def _body(self, x, donate, fmt, folded, steps):
        layout, ds, aa, se = self._parts(folded is None)  # (folded is None: the planned path)
        f = folded or (None,) * steps.n
        n = steps.n - (1 if layout is not None else 0)  # convs of the main path
        be = self._fused_backend
        out = x
        for i in range(n - 1):  # every conv of the main path but the last, with its act
            out = _conv(out, f[i], _CONV_NAMES[i], be, steps)
            if i == self._aa_after and aa is not None:
                out = _finite.forget(aa(out))
        # The shortcut, and whether this block owns it (may write over it).
        if layout is not None:  # the downsample's conv+bn is folded (the last of the pairs)
            pool, _, _, name = layout
            identity = _conv(pool(x) if pool is not None else x, f[n], name, be, steps, relu=False)
            owned = True
        elif ds is None:
            identity, owned = x, donate
        else:
            identity, owned = _finite.forget(ds(x).contiguous(memory_format=CL)), False
        if se is None:  # the last conv with the residual add and act
            out = _conv(out, f[n - 1], _CONV_NAMES[n - 1], be, steps, residual=identity, into_residual=owned)
        else:
            out = self._se_last(out, f[n - 1], _CONV_NAMES[n - 1], identity, steps, se)
        return out.contiguous(memory_format=fmt)

    def _se_last(self, out, fc, name: str, identity, steps, se):
        """The last conv when timm's attention module follows it: conv, se as timm's, add, act."""
        be = self._fused_backend
        out = _conv(out, fc, name, be, steps, relu=False)
        with _trace.fallback(f"eager: timm attention module se ({type(se).__name__}) runs as timm's"):
            out = se(out)
        return add_relu(out, identity, backend=be)


_CONV_NAMES = ("conv1", "conv2", "conv3")


class BasicBlock(_TimmBlock, tr.BasicBlock):
    """timm.models.resnet.BasicBlock whose eval forward runs two fused convs (plus aa/se as timm's)."""

    _aa_after = 0  # aa follows conv1+bn1+act1
    _reference_forward = _alias(tr.BasicBlock.forward, "_reference_forward")

    def _activations(self):
        return (self.act1, self.act2)

    def _main_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2)]


class Bottleneck(_TimmBlock, tr.Bottleneck):
    """timm.models.resnet.Bottleneck whose eval forward runs three fused convs (plus aa/se as timm's)."""

    _aa_after = 1  # aa follows conv2+bn2+act2
    _reference_forward = _alias(tr.Bottleneck.forward, "_reference_forward")

    def _activations(self):
        return (self.act1, self.act2, self.act3)

    def _main_pairs(self):
        return [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]


class ResNet(_cpu_graph.GraphRoot, _TimmMixin, tr.ResNet):
    """timm ResNet whose eval forward_features fuses the stem and donates activations between blocks;
    forward_features returns its input's memory format, the head is timm's. A whole no-grad eval
    float32 CPU call (``forward``) of a plain timm ResNet runs as the CPU graph (``_cpu_graph``)."""

    _reference_forward = _alias(tr.ResNet.forward, "_reference_forward")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._reference_forward(x)
        out = self._cpu_graph_forward(x)
        if out is not None:
            return out
        return self._reference_forward(x)

    def _stem(self) -> list:
        """[(conv, bn, act, name)] of the stem convs and a conv stem pool; [] if not recognized."""
        c = self.conv1
        if type(c) is nn.Conv2d:
            units = [(c, self.bn1, self.act1, "conv1")]
        elif type(c) is nn.Sequential and len(c) == 7 and all(type(c[i]) is nn.Conv2d for i in (0, 3, 6)):
            units = [(c[0], c[1], c[2], "conv1.0"), (c[3], c[4], c[5], "conv1.3"), (c[6], self.bn1, self.act1, "conv1.6")]
        else:
            return []
        mp = self.maxpool
        if type(mp) is nn.Sequential and len(mp) == 3 and type(mp[0]) is nn.Conv2d:
            units.append((mp[0], mp[1], mp[2], "maxpool.0"))  # resnetrs: Sequential(conv, bn, act)
        return units

    def _fold_pairs(self):
        return [(c, b) for c, b, _, _ in self._stem()]

    def _activations(self):
        return tuple(a for _, _, a, _ in self._stem())

    def _out_format(self, x) -> tuple:
        """torchvision's rule, timm's modules: the formats after the stem and each layer; the last
        one is forward_features' (see _donation.layer_formats)."""
        return layer_formats(self, x, tuple(c for c, _, _, _ in self._stem()))

    def _grad_params(self):
        return (t for c, b in self._fold_pairs() for t in (c.weight, c.bias, b.weight, b.bias) if t is not None)

    def _structure_problem(self) -> Optional[str]:
        if self.grad_checkpointing:
            return "timm grad_checkpointing is on"
        if not self._stem():
            return f"stem conv1 ({type(self.conv1).__name__}) is not timm's 7x7 or deep stem"
        return None

    _reference_forward_features = _alias(tr.ResNet.forward_features, "_reference_forward_features")

    def _skipped_modules(self) -> tuple:
        """The stem's conv/bn/act modules and the Sequentials holding them (timm runs the rest)."""
        stem = self._stem()
        containers = [self.conv1] if type(self.conv1) is nn.Sequential else []
        if stem and stem[-1][3] == "maxpool.0":
            containers.append(self.maxpool)
        return tuple(m for c, b, a, _ in stem for m in (c, b, a)) + tuple(containers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._reference_forward_features(x)
        return self._run_planned(x, False, self._body)

    def __prepare_scriptable__(self):
        return _FusedBlock.__prepare_scriptable__(self)

    def _fallback(self, x, why: str):
        if not _trace.active() and not self.grad_checkpointing:  # (torch.compile cannot graph-break
            return super().forward_features(x)                   # inside a context manager)
        with _trace.fallback(why), _force_eager(why if self.grad_checkpointing else None):
            return super().forward_features(x)

    def _body(self, x, donate, fmt, folded, steps):
        stem = self._stem()
        f = folded or (None,) * steps.n
        for fc, (_, _, _, name) in zip(f, stem):
            x = _conv(x, fc, name, self._fused_backend, steps)
        if stem[-1][3] != "maxpool.0":
            x = run_stem_pool(self.maxpool, x, fmt[0])
        fresh = not torch.compiler.is_compiling() and sole_owner(x, sys.getrefcount(x))  # (kept elsewhere? _donation)
        for layer, layer_fmt in zip((self.layer1, self.layer2, self.layer3, self.layer4), fmt):
            x, fresh = run_layer(layer, x, fresh, steps.ambient, steps.amp, layer_fmt)
        return x.contiguous(memory_format=fmt[-1])


SWAPS = {tr.BasicBlock: BasicBlock, tr.Bottleneck: Bottleneck, tr.ResNet: ResNet}
