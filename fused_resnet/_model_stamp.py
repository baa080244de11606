"""A whole model's stamp: what derived state built from every module of a model must be rebuilt for.

A converted block checks its own folds on each call. State built from a whole model at once (the
CUDA graphs of ``optimize()``, the CPU graph of a converted ResNet: ``_cpu_graph``) skips those
calls, so it checks the whole model itself, before each use:

- ``stamp()`` changes when anything such state baked in changes: a parameter or buffer edited in
  place, replaced (also by ``functional_call``, which writes the modules' dicts directly: the
  tensors are read out of them each call) or moved; a module replaced, inserted or removed (also
  ``Sequential`` edits that run no registration hook); a conv's geometry or a BN's eps or mode; a
  refresh point of a converted module (eval()/train(), ``fused_resnet.refresh()``); an optimizer step
  (``_signals``: fused steps bump no version counter).
- ``hooked()``: a forward hook anywhere in the model (or a global one), which such state would skip.

The modules are collected again whenever ``folding.structure_epoch()`` moves or a container's length
changed, so a call that changes nothing reads the collected tuples only.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from . import folding
from ._fused import _FusedMixin
from ._hooks import GLOBAL_HOOKS


class _Structure(NamedTuple):
    """The model's modules as the checks read them (rebuilt when structure_epoch() moves)."""

    epoch: int
    tensor_dicts: tuple  # every module's _parameters and _buffers
    modules: tuple  # (id, type) of every module: a replaced module (even one without tensors) shows
    attrs: tuple  # (conv instance dicts, BN instance dicts): geometry, eps, BN mode (folding.stamp)
    hooks: tuple  # every module's but the root's forward and pre-hook dicts
    root_hooks: tuple  # the root's (they fire around a forward that calls the derived state)
    fused: tuple  # the converted modules (their refresh counters)
    containers: tuple  # every module's _modules dict: Sequential.insert/pop/del edit these without a
    lens: tuple  # registration hook, so their lengths are compared on every call


class ModelStamp:
    """The stamp and hook check of one model (see the module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        folding.install_epoch_hooks()  # structure_epoch() moves only with them (a model unpickled here)
        self.model = model
        self._st: Optional[_Structure] = None

    def structure(self) -> _Structure:
        epoch = folding.structure_epoch()
        st = self._st
        if st is None or st.epoch != epoch or tuple(map(len, st.containers)) != st.lens:
            mods = tuple(self.model.modules())
            for m in mods:  # parameters made under inference_mode have no version counter: a load into
                if isinstance(m, _FusedMixin):  # them is seen through the converted modules' load hook
                    m._ensure_load_hook()
            containers = tuple(m._modules for m in mods)
            convs = tuple(m for m in mods if type(m) is nn.Conv2d)
            bns = tuple(m for m in mods if isinstance(m, nn.BatchNorm2d) or type(m) is FrozenBatchNorm2d)
            st = self._st = _Structure(
                epoch, tuple(d for m in mods for d in (m._parameters, m._buffers)),
                tuple((id(m), type(m)) for m in mods), (tuple(map(vars, convs)), tuple(map(vars, bns))),
                tuple(d for m in mods[1:] for d in (m._forward_hooks, m._forward_pre_hooks)),
                (mods[0]._forward_hooks, mods[0]._forward_pre_hooks),
                tuple(m for m in mods if isinstance(m, _FusedMixin)), containers, tuple(map(len, containers)))
        return st

    def stamp(self) -> tuple:
        st = self.structure()
        tensors = folding.sources_of(st.tensor_dicts)
        # Not the epoch itself: it moves whenever any module anywhere registers a parameter (building
        # an unrelated model), which must not rebuild this state; identities catch replacements.
        return (tuple(map(id, tensors)), folding.stamp(tensors, (), st.attrs), st.modules,
                sum(m.__dict__.get("_refreshes", 0) for m in st.fused))

    def hooked(self, root: bool = True) -> bool:
        """A forward hook on any module (``root``: the model itself too) or a global one."""
        st = self.structure()
        return any(st.hooks) or (root and any(st.root_hooks)) or any(GLOBAL_HOOKS[:2])
