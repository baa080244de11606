"""Tile configurations for the Triton conv: heuristic defaults, committed tuned tables, autotuning.

A config is chosen per problem (M output pixels, channels per group, K taps, dtype):
  1. the committed table for this GPU (fused_resnet/tuned/triton_<gpu>.json), if it has the shape;
  2. else, with FUSED_RESNET_AUTOTUNE=1, a measured search over CANDIDATES (progress printed,
     result kept for the process and written with ``save_table``);
  3. else the heuristic below.
Under the interpreter one large config is used (each program costs ~50 ms on the CPU).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .. import _env

_TABLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tuned")


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    flat_k: bool = False


def _p2(v: int, lo: int = 16) -> int:
    return max(lo, 1 << (max(1, v) - 1).bit_length())


def use_flat_k(cin_g: int) -> bool:
    # Per-tap tiles would be mostly padding below 16 channels (stem: 3, ResNeXt-50 layer1: 4).
    return cin_g < 16


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): searched when autotuning. 256-row tiles
# are left out: they spill on both sm_80 and sm_90 (AOT resource report).
CANDIDATES = [
    (128, 128, 32, 8, 4), (128, 128, 64, 8, 3), (128, 64, 64, 8, 3), (128, 64, 32, 4, 4),
    (64, 128, 64, 8, 3), (64, 64, 64, 4, 4), (64, 64, 32, 4, 5), (32, 64, 64, 4, 4),
    (64, 32, 64, 4, 4), (32, 32, 64, 2, 4),
]


def candidates(cout_g: int, cin_g: int, taps: int) -> list[Config]:
    """Configs the autotuner times. Below 16 channels per group both K walks are candidates: the
    flattened walk wastes no MMA work but decodes (kh, kw, ci) per element; the per-tap walk pads each
    tap's channels to a 16-wide tile (5x MMA work for the stem) with cheap contiguous loads. Which
    wins is the GPU's call (on the H200 the flattened stem ran at 0.19x cuDNN)."""
    walks = (True, False) if use_flat_k(cin_g) else (False,)
    out, seen = [], set()
    for flat in walks:
        kmax = _p2(cin_g * taps if flat else cin_g)
        for bm, bn, bk, w, s in CANDIDATES:
            c = Config(bm, min(bn, _p2(cout_g)), min(bk, kmax), 8, w, s, flat)
            if c not in seen:
                seen.add(c)
                out.append(c)
    return out


def heuristic(m: int, cout_g: int, cin_g: int, taps: int, dtype: torch.dtype) -> Config:
    """Spill-free defaults (checked by the sm_80/sm_90 AOT compiles in tests/test_triton_aot.py:
    128x128x64 with 8 warps spills on sm_80 for 3x3, 128x128x32 does not)."""
    flat = use_flat_k(cin_g)
    kmax = _p2(cin_g * taps if flat else cin_g)
    bn = min(128, _p2(cout_g))
    if m >= 16384:
        bm, bk, warps, stages = 128, 32 if bn >= 128 else 64, 8, 4 if bn >= 128 else 3
    elif m >= 2048:
        bm, bn, bk, warps, stages = 64, min(bn, 64), 64, 4, 4
    else:  # batch-1 layer3/4: 196 / 49 output pixels: small tiles keep many programs in flight
        bm, bn, bk, warps, stages = 32, min(bn, 64), 64, 4, 4
    if dtype == torch.float32:
        bk = min(bk, 32)  # fp32 tiles take twice the shared memory
    if flat:
        # The flattened K walk (the 7x7 stem) decodes (kh, kw, ci) per element: with 64-wide K tiles it
        # spills on sm_80/sm_90 under triton 3.6 (255 registers, 40/80 B), with 32-wide it does not
        # (3.6 and 3.8). 147 = 3x49 pads to 160 instead of 192, and the H100/H200 tuning runs chose
        # 32 for the large-batch stem as well (fused_resnet/tuned, benchmarks/NOTES.md).
        bk = min(bk, 32)
    return Config(bm, bn, min(bk, kmax), 8, warps, stages, flat)


def interpreter_config(m: int, cout_g: int, cin_g: int, taps: int) -> Config:
    flat = use_flat_k(cin_g)
    return Config(min(128, _p2(m)), min(64, _p2(cout_g)), min(64, _p2(cin_g * taps if flat else cin_g)),
                  8, 4, 1, flat)


def shape_key(m: int, cout_g: int, cin_g: int, taps: int, dtype: torch.dtype) -> str:
    return f"m{m}_n{cout_g}_c{cin_g}_t{taps}_{str(dtype).replace('torch.', '')}"


_tables: dict[str, dict[str, Config]] = {}


def table(tag: Optional[str] = None) -> dict[str, Config]:
    """The committed tuned table for a GPU (empty if none), loaded once."""
    tag = tag or _env.device_tag()
    if tag not in _tables:
        path = os.path.join(_TABLE_DIR, f"triton_{tag}.json")
        entries = {}
        if os.path.exists(path):
            with open(path) as f:
                entries = {k: Config(**v) for k, v in json.load(f)["configs"].items()}
        _tables[tag] = entries
    return _tables[tag]


def save_table(tag: Optional[str] = None, path: Optional[str] = None) -> str:
    tag = tag or _env.device_tag()
    path = path or os.path.join(_TABLE_DIR, f"triton_{tag}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else tag,
            "torch": torch.__version__, "configs": {k: asdict(v) for k, v in sorted(table(tag).items())}}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path


def autotune_enabled() -> bool:
    return _env.get("FUSED_RESNET_AUTOTUNE", "0") == "1"


def get(m: int, cout_g: int, cin_g: int, taps: int, dtype: torch.dtype, interpreting: bool,
        tune=None) -> Config:
    """Config for a problem. ``tune(candidates) -> Config`` is called when autotuning is on and the
    tuned table has no entry (the launcher passes a closure that times real launches)."""
    if interpreting:
        return interpreter_config(m, cout_g, cin_g, taps)
    key = shape_key(m, cout_g, cin_g, taps, dtype)
    tab = table()
    if key in tab:
        return tab[key]
    if tune is not None and autotune_enabled():
        cfg = tune(candidates(cout_g, cin_g, taps), key)
        tab[key] = cfg
        return cfg
    return heuristic(m, cout_g, cin_g, taps, dtype)
