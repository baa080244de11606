"""Committed per-GPU table of which backend (triton, cuda or eager) is fastest for each conv shape.

``fused_resnet/tuned/backend_<gpu>.json`` maps a shape key (batch, channels, size, kernel, stride,
groups, dtype) to "triton", "cuda" or "eager" (cuDNN's conv plus pointwise passes); it is written by
``benchmarks/backend_table.py`` from an op-level benchmark run on that GPU (all candidates timed in
the same run). auto follows it where the chosen backend can run (see _selector._auto_choice).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Optional

import torch

_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tuned")


def shape_key(n: int, cin: int, h: int, w: int, cout: int, k: int, stride: int, groups: int, dtype) -> str:
    return f"n{n}_c{cin}_h{h}_w{w}_k{cout}_r{k}_s{stride}_g{groups}_{str(dtype).replace('torch.', '')}"


@functools.lru_cache(maxsize=None)
def _table(tag: str) -> dict:
    path = os.path.join(_DIR, f"backend_{tag}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)["choices"]


def preferred_backend(x: torch.Tensor, weight: torch.Tensor, groups: int, stride: int = 1) -> Optional[str]:
    """The measured-fastest backend for this conv on this GPU, or None if never measured."""
    from .triton.configs import device_tag

    n, cin, h, w = x.shape
    key = shape_key(n, cin, h, w, weight.shape[0], weight.shape[2], stride, groups, x.dtype)
    return _table(device_tag()).get(key)
