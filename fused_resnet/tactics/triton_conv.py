"""The Triton tactic: fused_resnet.triton.fused_conv2d (implicit GEMM, NHWC, fused epilogue).

Runs CUDA tensors on sm_80+, or CPU tensors under the Triton interpreter (TRITON_INTERPRET=1), in
fp32 (TF32 where torch.backends.cudnn.allow_tf32 is on), fp16 and bf16."""
from __future__ import annotations

from typing import Callable

import torch

from .. import _env, _finite
from ._base import TRITON, Problem, Tactic, register

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_reasons(x: torch.Tensor) -> list:
    """Why no Triton kernel (the conv, add_relu) can take x here; [] if they can."""
    ok, why = _env.triton_status()
    if not ok:
        return [why]
    reasons = []
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _env.triton_interpreting()):
        reasons.append(f"{x.device.type.upper()} tensor")
    if x.dtype not in DTYPES:
        reasons.append(f"dtype {x.dtype} not supported by the triton kernel")
    return reasons


class Triton(Tactic):
    name = TRITON

    def not_supported_reasons(self, p: Problem) -> list:
        return triton_reasons(p.x)

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        from ..triton.fused_conv2d import fused_conv2d_triton  # imports triton: only when it runs

        args = (weight, bias, scale, p.stride, p.padding, p.dilation, p.groups)
        relu, into = p.relu, p.into_residual
        if not into:
            return lambda x, residual: fused_conv2d_triton(x, *args, residual, relu)

        def run(x, residual):
            _finite.forget(residual)  # (written over with no version bump: its recorded bound goes)
            return fused_conv2d_triton(x, *args, residual, relu, into_residual=True)
        return run


register(Triton())
