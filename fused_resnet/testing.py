"""Numerics helpers shared by the tests and ``python -m fused_resnet verify``.

The rule (DESIGN.md): against a float64 reference, the fused result's error must be at most 2x the
error of torchvision's own eager forward in the same dtype, plus a small absolute floor. Errors are
max-abs errors divided by max|reference| so one floor fits every layer's scale. NaN/Inf must sit
where the reference has them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

# Floors, relative to max|ref|: about one to eight units in the last place of each dtype.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(out)) or not torch.equal(out[~finite].nan_to_num(), ref[~finite].nan_to_num()):
        return float("inf")  # NaN/Inf in the wrong places
    if not finite.any():
        return 0.0
    scale = ref[finite].abs().max().clamp_min(1e-30)
    return float((out[finite] - ref[finite]).abs().max() / scale)


@dataclass
class Comparison:
    fused_err: float  # max|fused - ref| / max|ref|
    eager_err: float  # max|eager (torchvision, timm or plain torch ops) - ref| / max|ref|
    bound: float  # 2 * eager_err + floor

    @property
    def ok(self) -> bool:
        return self.fused_err <= self.bound

    def __str__(self) -> str:
        return (f"fused err {self.fused_err:.3e}, eager err {self.eager_err:.3e}, "
                f"bound {self.bound:.3e}: {'PASS' if self.ok else 'FAIL'}")


def compare(fused: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor) -> Comparison:
    """Apply the 2x-torchvision-plus-floor rule. ``ref`` is the float64 result."""
    if fused.shape != ref.shape:
        raise AssertionError(f"shape {tuple(fused.shape)} != reference {tuple(ref.shape)}")
    fe, ee = max_rel_error(fused, ref), max_rel_error(eager, ref)
    return Comparison(fe, ee, 2 * ee + FLOOR[fused.dtype])


def randomize_bn(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BN layer realistic non-trivial statistics and affine parameters, in place.

    Running statistics are perturbed around identity (mean ~ N(0, 0.1^2), var ~ U(0.5, 2)) and
    gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1^2), like a trained network's, so folding is really tested.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    g = generator or torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def reference_outputs(tv_model: nn.Module, x: torch.Tensor):
    """(float64 reference on CPU, torchvision eager in x's dtype/device) for an eval-mode model."""
    with torch.no_grad():
        ref = copy.deepcopy(tv_model).double().cpu()(x.double().cpu())
        eager = tv_model(x)
    return ref, eager
