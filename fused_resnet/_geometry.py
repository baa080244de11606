"""Conv geometry and memory-format helpers shared by the op, the selector and every backend.

A leaf module (imports only torch), so backends never import the op module that dispatches to them.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch

IntOrPair = Union[int, Sequence[int]]


def pair(v: IntOrPair) -> List[int]:
    """An int or a 1-/2-sequence as a list of two ints (conv2d's stride/padding/dilation rules)."""
    if isinstance(v, int):
        return [v, v]
    v = [int(i) for i in v]
    if len(v) == 1:
        return v * 2
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v


def pair_tuple(v: IntOrPair) -> tuple:
    """``pair(v)`` as a tuple (hashable: tactic problems, cache keys)."""
    return tuple(pair(v))


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    """Output length of a conv along one axis (input size, kernel, stride, padding, dilation)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def suggests_channels_last(t: torch.Tensor) -> bool:
    """PyTorch's ``suggest_memory_format() == channels_last`` for a 4D tensor (c10's
    is_channels_last_strides_2d_s4, ambiguous size-1 cases read as NCHW). A conv returns
    channels_last when its input or its weight suggests it, so a channels_last 1x1 weight counts."""
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest or (d == 0 and smallest == strides[1]):
            return False
        smallest = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch's conv would give its output for input x."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
