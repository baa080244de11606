"""Per-weight cache of backend-specific packed layouts (oneDNN blocked, Triton K-major, ...).

Only weights whose owner promises to never rewrite their memory behind the cache's back are cached:
the fused blocks' folded weights, registered with ``mark_stable`` when they are computed (a refold
makes new tensors). Any other weight, e.g. a user's own tensor or a buffer that torch.compile reuses
for several convs, is packed on every call: a weight's ``_version`` misses writes made by kernels,
so identity + version alone is not a safe key.
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch
from torch.utils.weak import WeakIdKeyDictionary

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def version(t: torch.Tensor) -> int:
    """The tensor's in-place write counter; inference tensors have none (-1)."""
    return -1 if t.is_inference() else t._version


def mark_stable(weight: torch.Tensor) -> torch.Tensor:
    """Allow ``packed`` to cache layouts of ``weight`` (its owner never rewrites it in place)."""
    if weight not in _CACHE:
        _CACHE[weight] = {}
    return weight


def packed(weight: torch.Tensor, layout: Hashable, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``make(weight)``, cached per (stable weight, layout) until the weight is modified."""
    entry = _CACHE.get(weight)
    if entry is None:
        with torch.no_grad():
            return make(weight)
    hit = entry.get(layout)
    if hit is not None and hit[0] == version(weight):
        return hit[1]
    with torch.no_grad():
        value = make(weight)
    entry[layout] = (version(weight), value)
    return value
