"""Per-weight cache of backend-specific packed layouts (oneDNN blocked, Triton K-major, ...).

Only weights whose owner promises to never rewrite their memory behind the cache's back are cached:
the fused blocks' folded weights, registered with ``mark_stable`` when they are computed; a refold
into the same tensors calls ``invalidate`` first. Any other weight, e.g. a user's own tensor or a buffer that torch.compile reuses
for several convs, is packed on every call: a weight's ``_version`` misses writes made by kernels,
so identity + version alone is not a safe key.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()
MAX_OBJECTS = 64  # objects (resolved launches: one per call signature) kept per weight


def version(t: torch.Tensor) -> int:
    """The tensor's in-place write counter; inference tensors have none (-1)."""
    return -1 if t.is_inference() else t._version


def mark_stable(weight: torch.Tensor) -> torch.Tensor:
    """Allow ``packed`` to cache layouts of ``weight``: its owner never writes it in place without
    calling ``invalidate(weight)`` first (the fold cache refolds into the same tensors and does)."""
    if weight not in _CACHE:
        _CACHE[weight] = {}
    return weight


def invalidate(weight: torch.Tensor) -> None:
    """Forget the packed layouts of a stable weight whose contents its owner is about to change."""
    entry = _CACHE.get(weight)
    if entry is not None:
        entry.clear()
        weight.__dict__.pop("_fused_resnet_objects", None)


def packed(weight: torch.Tensor, layout: Hashable, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``make(weight)``, cached per (stable weight, layout) until the owner invalidates it.

    Not keyed on the weight's _version: custom ops that declare a tensor mutated bump its version on
    every call whether or not they write it (the compiled graph's fold-refresh op does, each call),
    and that would repack every weight on every call (seen: 53 oneDNN weight reorders per compiled
    ResNet-50 forward on CPU, ~6% of its time)."""
    entry = _CACHE.get(weight)
    if entry is None:
        with torch.no_grad():
            return make(weight)
    hit = entry.get(layout)
    if hit is not None:
        return hit
    with torch.no_grad():
        value = make(weight)
    entry[layout] = value
    return value


def packed_object(weight: torch.Tensor, key: Hashable, make: Callable[[torch.Tensor], object]) -> object:
    """Like ``packed`` for anything derived from a stable weight that may itself reference the weight
    (a resolved launch binds it): kept in the weight's own attribute dict, so the reference cycle
    is collectable, and cleared by ``invalidate`` with the packed layouts; built fresh each call for
    other weights."""
    if weight not in _CACHE:
        return make(weight)
    objects = weight.__dict__.setdefault("_fused_resnet_objects", {})
    hit = objects.get(key)
    if hit is None:
        hit = make(weight)
        if len(objects) >= MAX_OBJECTS:  # e.g. a detector fed many image sizes: the oldest go first
            for old in list(objects)[:len(objects) + 1 - MAX_OBJECTS]:
                objects.pop(old, None)
        objects[key] = hit
    return hit
