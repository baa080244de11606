"""Autocast: the fused convs in the dtype torchvision's convs run in under ``torch.autocast``.

Autocast casts a conv's input and weight to its low dtype (bf16 on the CPU by default, fp16/bf16 on
CUDA) when they are fp32/fp16/bf16 (never float64), so torchvision's convs, BNs, ReLUs and residual
adds all produce that dtype. A converted model does the same: the top-level fused module reads the
autocast state once per forward (``conv_dtype``), casts its input and passes the dtype down; every
fused conv then runs in it, on folds made for it (``cast_folds``: folded in float64 from the stored
parameters and rounded once to the low dtype, kept per fold-cache generation and dtype), so on CUDA
the fp16/bf16 tactics (tensor cores) run. What the fused path does not run (pools, the head,
attention modules) runs under autocast as torchvision's does.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._packing import mark_stable
from .folding import FoldedConv, fold_bn

_LOW = (torch.float32, torch.float16, torch.bfloat16)  # dtypes autocast casts (float64 it leaves alone)
_any_enabled = torch._C._is_any_autocast_enabled


def conv_dtype(x: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype autocast runs a conv of input ``x`` in, or None (autocast off, or it leaves x alone)."""
    if not torch.compiler.is_compiling() and not _any_enabled():  # (the common case: one C call)
        return None
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device) or x.dtype not in _LOW:
        return None
    return torch.get_autocast_dtype(device)


def castable(weight: torch.Tensor) -> bool:
    """Would autocast cast this conv weight (else torchvision's conv fails on the dtype mismatch)?"""
    return weight.dtype in _LOW


def cast_folds(cache, folded: tuple, pairs, dtype: torch.dtype) -> tuple:
    """``folded`` with its weights in ``dtype``. The cache's own folds (``cache.value``): made once per
    fold generation and dtype, in float64 from the parameters and rounded once, marked stable so
    launches and packed layouts are kept beside them. Folds made for one call (autograd,
    torch.compile, a dispatch mode): cast in that call (differentiable, traceable)."""
    # (under torch.compile the folds are always the call's own; torch 2.11's dynamo cannot trace
    # `is` between two tuples, and its graph break there rebuilt the folds empty)
    if torch.compiler.is_compiling() or cache is None or folded is not cache.value:
        return tuple([f if f.weight.dtype == dtype else f._replace(weight=f.weight.to(dtype)) for f in folded])
    held = getattr(cache, "_by_dtype", None)
    if held is None or held[0] != cache.generation:
        held = cache._by_dtype = (cache.generation, {})
    out = held[1].get(dtype)
    if out is None:
        with torch.inference_mode(False), torch.no_grad():
            out = tuple([_cast(f, conv, bn, dtype) for f, (conv, bn) in zip(folded, pairs)])
        held[1][dtype] = out
    return out


def _cast(f: FoldedConv, conv, bn, dtype: torch.dtype) -> FoldedConv:
    if f.weight.dtype == dtype:
        return f
    weight = fold_bn(conv.weight.double(), None, bn)[0].to(dtype)  # float64 fold, one rounding
    mark_stable(weight)
    return f._replace(weight=weight)
