"""Loader for the optional C++/CUDA extension (CUTLASS convs). Never fails at import."""
from __future__ import annotations


def status() -> tuple[bool, str]:
    """(usable, why / why not) for the "cuda" backend."""
    return False, "CUDA extension not part of this build yet (csrc/ is not implemented)"


def fused_conv2d_cuda(*args, **kwargs):
    raise RuntimeError("fused_resnet CUDA extension is not available: " + status()[1])
