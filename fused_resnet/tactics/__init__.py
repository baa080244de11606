"""The registry of conv tactics: every way one fused_conv2d call can run, as objects.

A tactic names the exact kernel sequence of one call ("eager:cudnn_fused", "triton",
"cuda:sm80_large", "cuda:sm90_<config>", ...; its backend is the part before ":"). Each is a
``Tactic`` that declares

  - ``why_not(problem)``: None if it can run this call here, else the first reason it cannot
    (``not_supported_reasons`` lists them all); the same text explain(), the tuner and the selector show;
  - ``prepare(problem, weight, bias, scale)``: ``run(x, residual) -> out`` with everything that depends
    only on the call's signature done now (packed weights, the bias in the kernel's dtype, configs).

``fused_resnet._selector`` orders the registry (tuned table, then heuristic); explain, the tuner,
the op bench and the GPU tests enumerate it with ``conv_tactics(x)``. A new kernel is one class
here (plus its source), registered with ``register``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .. import _env
from ._base import (CUDA_SM80_LARGE, CUDA_SM80_SMALL, CUDA_SM90_PREFIX, CUDNN_EPILOGUE, CUDNN_FUSED,  # noqa: F401
                    CUDNN_POINTWISE, EAGER_CPU, TRITON, Problem, Tactic, backend_of, register, register_family)
from ._base import _DYNAMIC, _REGISTRY
# Registration order is the order conv_tactics lists them in.
from . import eager  # noqa: E402,F401  isort: skip
from . import triton_conv  # noqa: E402,F401  isort: skip
from . import cutlass  # noqa: E402,F401  isort: skip


def _all() -> dict:
    out = dict(_REGISTRY)
    for provider in _DYNAMIC:
        out.update(provider())
    return out


def get(name: str) -> Optional[Tactic]:
    """The tactic called ``name`` (None if there is none here)."""
    hit = _REGISTRY.get(name)
    return hit if hit is not None else _all().get(name)


def conv_tactics(x: torch.Tensor) -> tuple:
    """The name of every tactic that exists for a conv on x's device (whether each can run a given
    call is its ``why_not``): CPU tensors run eager:cpu; CUDA tensors the cuDNN-based eager tactics,
    Triton, the CUTLASS sm80 tiles and whatever sm90 configs the extension offers."""
    if x.device.type != "cuda":
        return (EAGER_CPU,)
    return tuple(n for n in _all() if n != EAGER_CPU)


def all_names() -> tuple:
    return tuple(_all())


def why_not(name: str, p: Problem) -> Optional[str]:
    """None if tactic ``name`` can run ``p`` here, else why not (unknown names included)."""
    tactic = get(name)
    if tactic is None:
        return _unknown(name)
    return tactic.why_not(p)


def _unknown(name: str) -> str:
    if name.startswith(CUDA_SM90_PREFIX) and name[len(CUDA_SM90_PREFIX):] in _env.sm90_excluded():
        return f"{name}: excluded by FUSED_RESNET_SM90_EXCLUDE (failed its check on this GPU)"
    if name.startswith(CUDA_SM90_PREFIX):
        return f"{name}: no such sm90 config in this build"
    return f"unknown tactic {name!r}"


def prepare(name: str, p: Problem, weight, bias, scale) -> Callable:
    tactic = _REGISTRY.get(name) or get(name)
    if tactic is None:
        raise ValueError(f"unknown fused_conv2d tactic {name!r}")
    return tactic.prepare(p, weight, bias, scale)


def run(name: str, x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, into_residual=False):
    """Run tactic ``name`` once (the tuner and the GPU tests call each candidate this way)."""
    p = Problem(x, weight, tuple(stride), tuple(padding), tuple(dilation), groups, scale is not None,
                residual is not None, relu, into_residual)
    return prepare(name, p, weight, bias, scale)(x, residual)
