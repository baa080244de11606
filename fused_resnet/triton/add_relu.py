"""Triton add_relu: out = relu(x + y), elementwise, any dtype, x and y with the same memory layout.

A flat 1-D kernel over the tensors' storage: both operands are made dense in x's memory format
first, so NCHW and NHWC tensors alike are one contiguous run. BLOCK elements per program, loaded
as 16-byte vectors; the sum is taken in fp32 and ReLU keeps NaN (like torch.relu).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _env
from .._geometry import memory_format_of


@triton.jit
def _add_relu_kernel(x_ptr, y_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    s = tl.load(x_ptr + offs, mask=mask).to(tl.float32) + tl.load(y_ptr + offs, mask=mask).to(tl.float32)
    tl.store(out_ptr + offs, tl.where(s < 0.0, 0.0, s).to(out_ptr.dtype.element_ty), mask=mask)


def add_relu_triton(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fmt = memory_format_of(x)
    x = x.contiguous(memory_format=fmt)
    y = y.contiguous(memory_format=fmt)
    out = torch.empty_like(x)
    numel = x.numel()
    if numel:
        block = 1024 if _env.triton_interpreting() else 4096
        _add_relu_kernel[(triton.cdiv(numel, block),)](x, y, out, numel, BLOCK=block, num_warps=8)
    return out
