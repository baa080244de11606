"""Donation: when a fused block may write its output over its input.

Inside a network, a block's last conv can write its result over the block's input (the residual)
instead of a fresh buffer, which on the CPU saves the page faults of a new large allocation
(benchmarks/NOTES.md, "Donation"). That is only right when no one else can observe the input
tensor afterwards. Where hooks happen to be does not say that: a hook on an inner module (a block's
last ReLU returns the block's output tensor itself), a wrapper module storing its child's output, or
a hook on the stem pool followed by an ``Identity`` keep references that no hook dict on the block
shows. So the decision is made from the tensor itself, right after the module that produced it
returned and before anything else runs:

- its Python reference count is what a tensor held by one local variable has (``sys.getrefcount``,
  calibrated below with the same call pattern, so an interpreter's own counting does not matter),
  which excludes lists, dicts and attributes holding it, and C++ holders of the tensor (autograd's
  saved tensors, views' bases keep its Python object alive too);
- its storage is used by this tensor alone (``torch._C._storage_Use_Count``), which excludes views,
  ``detach()``/``.data`` aliases and other tensors over the same memory;
- it is a CPU tensor: on a GPU (caching allocator, no page faults) a fresh output costs no more
  than writing in place. Small CPU tensors are donated too: the block's last conv is then one oneDNN
  op (in-place sum, with the ReLU post-op where _finite allows it) instead of conv, add_ and relu_
  (batch 1, where layer3 and layer4 are under 1 MiB: ~1% of the forward; benchmarks/NOTES.md,
  "Thread pools that spin", this round's changes).

Under torch.compile nothing is donated: reference counts there are the tracer's, and a mutation of
a tensor someone keeps would be replayed faithfully by the compiled graph. The call sites read
``not torch.compiler.is_compiling() and sole_owner(x, sys.getrefcount(x))``.

``run_layer`` is the one place blocks are handed donated inputs; it also gives modules that could
observe an activation (hooked ones, modules that are not fused blocks) torchvision's memory format
there (``observed``, ``layer_formats``).
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

from . import _finite, _spare
from ._fused import CL, _FusedBlock, _FusedMixin, _has_hooks
from ._geometry import memory_format_of, suggests_channels_last

_storage_use_count = torch._C._storage_Use_Count


def sole_owner(x: torch.Tensor, refs: int) -> bool:
    """May ``x`` be written over? ``refs``: ``sys.getrefcount(x)`` taken by the caller, with ``x`` held
    by one local variable, in exactly this form: ``sole_owner(x, sys.getrefcount(x))``."""
    return (refs == _REFS and x.is_cpu
            and _storage_use_count(x.untyped_storage()._cdata) == _STORAGE_REFS)


def _calibrate() -> tuple:
    """(refs as sole_owner's argument, refs inline, refs in a callee (run_stem_pool), storage refs) of
    a tensor nobody else holds, counted with the call sites' patterns (tests/test_workflows_modes.py
    checks both directions: kept tensors are not donated, fresh ones are)."""
    x = torch.empty(1024)
    as_argument = not torch.compiler.is_compiling() and _count(x, sys.getrefcount(x))
    inline = not torch.compiler.is_compiling() and sys.getrefcount(x)
    return as_argument, inline, _in_callee(x), _storage_use_count(x.untyped_storage()._cdata)


def _count(x, refs: int) -> int:
    return refs


def _in_callee(x) -> int:
    return sys.getrefcount(x)


_REFS, _REFS_INLINE, _REFS_CALLEE, _STORAGE_REFS = _calibrate()


def layer_formats(model: nn.Module, x: torch.Tensor, stem: tuple) -> tuple:
    """For a ResNet's body (computed when a plan is built): the memory format torchvision's
    activations have after the stem and after each layer (channels_last from the first conv whose
    input or weight is). The body runs channels_last inside; modules it calls that could observe an
    activation get it in these formats (``observed``). The last one is the returned features'."""
    cur, out = memory_format_of(x), []
    for convs in (stem, model.layer1, model.layer2, model.layer3, model.layer4):
        if cur is not CL:  # (plain loops: this runs on every cold forward; a contiguous weight never
            for c in convs:  # suggests channels_last)
                if isinstance(c, _FusedMixin):
                    mods = c._main_convs()
                elif isinstance(c, nn.Conv2d):
                    mods = (c,)
                else:
                    continue
                for m in mods:
                    if not m.weight.is_contiguous() and suggests_channels_last(m.weight):
                        cur = CL
                        break
                if cur is CL:
                    break
        out.append(cur)
    return tuple(out)


def observed(module: nn.Module, x: torch.Tensor, fmt) -> torch.Tensor:
    """Call a module that can observe its input or output (a hooked one, one that is not a fused
    block) with x in torchvision's memory format ``fmt`` at this point; the result back in
    channels_last for the fused blocks after it."""
    if torch.compiler.is_compiling():  # (no bounds there: _finite)
        return _call_in_format(module, x, fmt)
    # Foreign code runs outside this forward's finite bounds (_finite): fused ops it calls take no
    # recorded bound, and neither what it gets (a hook may keep it) nor what it returns carries one.
    state = _finite.STATE
    outer, state.token = getattr(state, "token", 0), 0
    try:
        x = _call_in_format(module, _finite.forget(x), fmt)
    finally:
        state.token = outer
    return _finite.forget(x)


def _call_in_format(module: nn.Module, x: torch.Tensor, fmt):
    if fmt is not CL and x.dim() == 4:
        x = module(x.contiguous(memory_format=fmt))
        return x.contiguous(memory_format=CL) if isinstance(x, torch.Tensor) and x.dim() == 4 else x
    return module(x)


def run_stem_pool(pool: nn.Module, x: torch.Tensor, fmt) -> torch.Tensor:
    """A ResNet's stem max-pool, called as ``x = run_stem_pool(pool, x, fmt)``: ``observed`` when
    hooked; a plain nn.MaxPool2d passes on its input's finite bound (no output is larger in magnitude
    than its input: _finite), and its input, dead once pooled unless someone else holds it, is
    offered as a spare buffer (_spare)."""
    if _has_hooks(pool):
        return observed(pool, x, fmt)
    if type(pool) is not nn.MaxPool2d or torch.compiler.is_compiling():
        return pool(x)
    out = pool(x)
    bound = getattr(x, _finite.KEY, None)
    if bound is not None:
        setattr(out, _finite.KEY, bound)
    # held by the caller's variable (rebound to the result on return) and this parameter only
    if _finite.STATE.token and sys.getrefcount(x) == _REFS_CALLEE and x.is_cpu \
            and _storage_use_count(x.untyped_storage()._cdata) == _STORAGE_REFS:
        _spare.offer(x)
    return out


def run_layer(layer: nn.Module, x: torch.Tensor, fresh: bool = False, ambient: Optional[str] = None,
              amp=None, fmt=CL) -> tuple:
    """Run one ResNet layer, donating each block's input to it when ``sole_owner`` says nobody else
    holds that tensor (measured on CPU: a (8,256,56,56) conv+add+ReLU output 6.5 ms fresh vs 3.2 ms
    in place). ``fresh``: the caller checked x with sole_owner. ``ambient``/``amp``: the requested
    backend and autocast dtype of this forward; ``fmt``: torchvision's memory format of x (what
    hooked and other modules get: ``observed``). Returns (output, fresh)."""
    # The caller's variable still holds the layer's input: a block that wrote over it (donated) or
    # returned it (an Identity) returns that object, with that one reference more. (Under
    # torch.compile nothing is donated and id() is not read: torch 2.11's dynamo cannot trace id()
    # of an intermediate tensor.)
    check = not torch.compiler.is_compiling()
    first = id(x) if check else 0
    if type(layer) is not nn.Sequential or _has_hooks(layer):
        x = observed(layer, x, fmt)
        return x, check and sys.getrefcount(x) == _REFS_INLINE + (id(x) == first) and sole_owner(x, _REFS)
    for block in layer:
        if isinstance(block, _FusedBlock) and not _has_hooks(block):
            # untraced: the fused parent checked for tracers and modes; its backend and autocast
            # dtype are passed on
            x = block._run_checked(x, fresh, block._body, ambient, amp)  # (_run_planned's untraced path)
        else:
            x = observed(block, x, fmt)
        # sole_owner, inline (C calls only: this runs per block on the hot path)
        fresh = check and sys.getrefcount(x) == _REFS_INLINE + (id(x) == first) and x.is_cpu \
            and _storage_use_count(x.untyped_storage()._cdata) == _STORAGE_REFS
    return x, fresh
