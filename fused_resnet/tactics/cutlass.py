"""The CUTLASS tactics of the CUDA extension (fused_resnet._ext): cuda:sm80_large / cuda:sm80_small
(2.x tiles, any GPU from sm_80) and one cuda:sm90_<config> per Hopper config the build has.

The sm80 tile heuristic lives here and only here (``sm80_tile``): the kernel is always told its tile."""
from __future__ import annotations

from typing import Callable

import torch

from .. import _env, _ext
from .._geometry import out_size
from ._base import CUDA_SM80_LARGE, CUDA_SM80_SMALL, CUDA_SM90_PREFIX, Problem, Tactic, register, register_family

DTYPES = (torch.float16, torch.bfloat16)
SM80_TILES = {CUDA_SM80_LARGE: 1, CUDA_SM80_SMALL: 2}  # csrc/fused_conv2d.h ConvTile
WAVES = 2  # the large tile once its 128x128 tiles fill every SM about twice


def cutlass_reasons(p: Problem) -> list:
    """Why no CUTLASS kernel can run ``p`` (the checks both generations share), [] if one may."""
    x, weight = p.x, p.weight
    if x.device.type != "cuda":
        return [f"{x.device.type.upper()} tensor"]
    ok, why = _ext.status()
    if not ok:
        return [why]
    reasons = []
    if p.scale:
        reasons.append("separate per-channel scale not supported by the CUTLASS kernels (fold it into the weight)")
    if x.dtype not in DTYPES:
        reasons.append(f"dtype {x.dtype} not supported by the CUTLASS kernels (fp16/bf16 only)")
    if p.groups != 1:
        reasons.append("grouped conv not supported by the CUTLASS kernels")
    if x.shape[1] % 8 or weight.shape[0] % 8:
        reasons.append("channels not a multiple of 8 (CUTLASS alignment)")
    return reasons


def sm80_tile(p: Problem) -> str:
    """The CUTLASS sm80 tile for ``p``: the 128x128 tile when there are enough of them for ~WAVES
    waves on this GPU's SMs, else the small tile (explain() shows which)."""
    (n, _, h, w), (k, _, r, s) = p.x.shape, p.weight.shape
    m = n * out_size(h, r, p.stride[0], p.padding[0], p.dilation[0]) * out_size(w, s, p.stride[1], p.padding[1],
                                                                                   p.dilation[1])
    tiles = (m + 127) // 128 * ((k + 127) // 128)
    return CUDA_SM80_LARGE if tiles >= WAVES * _env.sm_count(p.x.device) else CUDA_SM80_SMALL


class Sm80(Tactic):
    def __init__(self, name: str):
        self.name, self.tile = name, SM80_TILES[name]

    def not_supported_reasons(self, p: Problem) -> list:
        return cutlass_reasons(p)

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        return _ext.cutlass_launch(p.x, weight, bias, p.stride, p.padding, p.dilation, p.relu, tile=self.tile)


class Sm90(Tactic):
    """One generated Hopper config (CUTLASS 3.x, TMA + WGMMA)."""

    def __init__(self, config: str):
        self.config = config
        self.name = CUDA_SM90_PREFIX + config
        self.index = _ext.sm90_config_index(config)

    def not_supported_reasons(self, p: Problem) -> list:
        reasons = cutlass_reasons(p)
        if reasons:
            return reasons
        why = _ext.sm90_problem(p.x, p.weight, p.stride, p.padding, p.dilation, p.groups)
        if why is not None:
            return [why]
        if not _ext.sm90_config_accepts(self.index, p.x, p.weight, p.stride, p.padding):
            cfg = _ext.sm90_configs()[self.index]
            return [f"config {self.config} runs {cfg.dtype} "
                    f"{'1x1 stride-1 unpadded convs' if cfg.kind == 'gemm' else 'convs'} only"]
        return []

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        return _ext.sm90_launch(p.x, weight, bias, p.stride, p.padding, p.dilation, p.relu, config=self.index)


register(Sm80(CUDA_SM80_LARGE))
register(Sm80(CUDA_SM80_SMALL))
_SM90 = {CUDA_SM90_PREFIX + c.name: Sm90(c.name) for c in _ext.sm90_configs()}


def _sm90_family() -> dict:
    """The sm90 tactics the build has, less those FUSED_RESNET_SM90_EXCLUDE takes out."""
    excluded = _env.sm90_excluded()
    return {name: t for name, t in _SM90.items() if t.config not in excluded} if excluded else _SM90


register_family(_sm90_family)
