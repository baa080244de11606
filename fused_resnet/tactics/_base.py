"""The tactic base class, the problem it is asked about, the names, and the registry itself.

See the package docstring (fused_resnet/tactics/__init__.py).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

# The names (the tables, explain() and the CLI use them).
EAGER_CPU = "eager:cpu"  # oneDNN fused conv(+sum) then relu_, or conv2d + in-place epilogue (CPU)
CUDNN_POINTWISE = "eager:cudnn+pointwise"  # cuDNN conv with bias, then in-place torch add_ / relu_
CUDNN_EPILOGUE = "eager:cudnn+epilogue"  # cuDNN conv, then our one-pass bias+residual+ReLU kernel (_ext)
CUDNN_FUSED = "eager:cudnn_fused"  # torch.cudnn_convolution_relu / _add_relu (relu=False: conv+bias, add_)
TRITON = "triton"
CUDA_SM80_LARGE, CUDA_SM80_SMALL = "cuda:sm80_large", "cuda:sm80_small"  # CUTLASS 2.x, 128x128 / small tile
CUDA_SM90_PREFIX = "cuda:sm90_"  # + a config name of the generated table (fused_resnet/_sm90_configs.py)


class Problem(NamedTuple):
    """One fused_conv2d call's signature: what a tactic's support and preparation depend on (the
    tensors' shapes, dtype, device and layout, never their values). stride/padding/dilation are pairs."""

    x: torch.Tensor
    weight: torch.Tensor
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int = 1
    scale: bool = False  # a separate per-channel scale (not folded into the weight)
    residual: bool = False
    relu: bool = True
    into_residual: bool = False  # the output may be written over the residual


def backend_of(tactic: str) -> str:
    return tactic.split(":", 1)[0]


class Tactic:
    """One way to run a fused conv. Subclasses set ``name`` and implement the two methods."""

    name: str = ""

    @property
    def backend(self) -> str:
        return backend_of(self.name)

    def not_supported_reasons(self, p: Problem) -> list:
        """Every reason this tactic cannot run ``p`` here, in the order they are checked ([] if it can)."""
        raise NotImplementedError

    def why_not(self, p: Problem) -> Optional[str]:
        reasons = self.not_supported_reasons(p)
        return reasons[0] if reasons else None

    def prepare(self, p: Problem, weight: torch.Tensor, bias, scale) -> Callable:
        """``run(x, residual) -> out`` for calls with ``p``'s signature; the caller checked why_not."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<tactic {self.name}>"


_REGISTRY: dict = {}  # name -> Tactic, in the order conv_tactics lists them
_DYNAMIC: list = []  # callables returning more tactics (the sm90 configs the extension has)


def register(tactic: Tactic) -> Tactic:
    if tactic.name in _REGISTRY:
        raise ValueError(f"tactic {tactic.name!r} registered twice")
    _REGISTRY[tactic.name] = tactic
    return tactic


def register_family(provider: Callable[[], dict]) -> None:
    """``provider() -> {name: Tactic}``, asked each time: tactics that depend on the environment
    (FUSED_RESNET_SM90_EXCLUDE) or the build (the sm90 configs)."""
    _DYNAMIC.append(provider)


