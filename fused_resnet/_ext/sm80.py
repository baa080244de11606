"""The CUTLASS 2.x fused conv (sm_80+): the packed weight, the launch."""
from __future__ import annotations

import torch


def pack_krsc(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, R, S) -> channels_last, i.e. KRSC in memory, as the CUTLASS kernels read it."""
    return weight.contiguous(memory_format=torch.channels_last)


def cutlass_launch(x, weight, bias, stride, padding, dilation, relu, tile: int):
    """run(x, residual) -> out for the CUTLASS conv, with the packed (KRSC) weight and the fp32 bias
    prepared once (the selector's "cuda" backend; a separate scale is never passed here)."""
    from .._packing import packed

    cl = torch.channels_last
    w = packed(weight, "cutlass_krsc", pack_krsc)
    b = bias.float().contiguous() if bias is not None else torch.zeros(weight.shape[0], device=x.device)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    op = torch.ops.fused_resnet._conv2d_cutlass.default

    def run(x, residual):
        res = residual.contiguous(memory_format=cl) if residual is not None else None
        return op(x.contiguous(memory_format=cl), w, b, res, stride, padding, dilation, relu, tile)
    return run


