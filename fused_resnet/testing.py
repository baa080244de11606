"""Numerics helpers shared by the tests and ``python -m fused_resnet verify``.

The rule (ARCHITECTURE.md, "Numerics"): against a float64 reference, the fused result's error must be at most 2x the
error of torchvision's own eager forward in the same dtype, plus a small absolute floor. Errors are
max-abs errors divided by max|reference| so one floor fits every layer's scale. NaN/Inf must sit
where the reference has them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

# Floors, relative to max|ref|: about one to eight units in the last place of each dtype.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| over the reference's finite elements; inf if NaN/Inf are not exactly
    where the reference has them. Computed on the tensors' device (``ref`` is moved to ``out``'s):
    masked_fill and amax, no host copy and no boolean indexing of large outputs."""
    ref = ref.to(out.device)
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(out)):
        return float("inf")  # NaN/Inf in the wrong places
    if not bool(finite.all()):  # the non-finite elements must be the same values (NaN, +Inf or -Inf)
        if not torch.equal(out.double().masked_fill(finite, 0).nan_to_num(nan=1.5e308),
                           ref.double().masked_fill(finite, 0).nan_to_num(nan=1.5e308)):
            return float("inf")
        if not bool(finite.any()):
            return 0.0
    scale = ref.double().masked_fill(~finite, 0).abs().amax().clamp_min(1e-30)
    err = (out.double() - ref.double()).masked_fill(~finite, 0).abs().amax()
    return float(err / scale)


@dataclass
class Comparison:
    fused_err: float  # max|fused - ref| / max|ref|
    eager_err: float  # max|eager (torchvision, timm or plain torch ops) - ref| / max|ref|
    bound: float  # 2 * eager_err + floor
    problem: str = ""  # why the comparison cannot be made (then it fails), e.g. eager overflowed

    @property
    def ok(self) -> bool:
        return not self.problem and self.fused_err <= self.bound

    def __str__(self) -> str:
        if self.problem:
            return f"NOT COMPARABLE: {self.problem}: FAIL"
        return (f"fused err {self.fused_err:.3e}, eager err {self.eager_err:.3e}, "
                f"bound {self.bound:.3e}: {'PASS' if self.ok else 'FAIL'}")


def compare(fused: torch.Tensor, eager: torch.Tensor, ref: torch.Tensor) -> Comparison:
    """Apply the 2x-eager-plus-floor rule. ``ref`` is the float64 result. A comparison whose eager
    result is not finite where the reference is (it overflowed, or NaN/Inf in other places) has no
    bound to give: it fails as not comparable instead of passing anything (choose inputs that stay
    in the dtype's range: ``fit_input``)."""
    if fused.shape != ref.shape:
        raise AssertionError(f"shape {tuple(fused.shape)} != reference {tuple(ref.shape)}")
    fe, ee = max_rel_error(fused, ref), max_rel_error(eager, ref)
    problem = ""
    if ee == float("inf"):
        problem = ("the eager result is not finite where the float64 reference is (overflow in "
                   f"{str(eager.dtype).replace('torch.', '')}?) or has NaN/Inf elsewhere")
    return Comparison(fe, ee, 2 * ee + FLOOR[fused.dtype], problem)


def forward_with_peak(model: nn.Module, x: torch.Tensor) -> tuple:
    """(output, max |output| over every leaf module) of one no_grad forward of ``model``."""
    peak = [0.0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            peak[0] = max(peak[0], float(out.detach().abs().amax()))
    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, peak[0]


def fit_input(model64: nn.Module, x64: torch.Tensor, dtype: torch.dtype, headroom: float = 64.0) -> tuple:
    """(x, scale, model64(x)): ``x64`` scaled by a power of two so that every activation of the
    float64 model stays below finfo(dtype).max / headroom. Deep and wide models with random weights
    overflow fp16 at unit-variance inputs; a ReLU network is close to homogeneous, so scaling the
    input scales the activations. scale is 1.0 when nothing needed scaling."""
    limit = torch.finfo(dtype).max / headroom
    scale = 1.0
    for _ in range(8):
        out, peak = forward_with_peak(model64, x64 * scale)
        if peak <= limit:
            return x64 * scale, scale, out
        scale *= 2.0 ** -max(1, math.ceil(math.log2(peak / limit)))
    # Not converged (activations dominated by the biases, which no input scale shrinks): the last
    # scale's own reference; compare() then reports an overflow as "not comparable".
    out, _ = forward_with_peak(model64, x64 * scale)
    return x64 * scale, scale, out


def damp_residuals(model: nn.Module, factor: float = 0.25) -> nn.Module:
    """Scale the last BN of every residual branch (gamma and beta) by ``factor``, in place.

    A randomly initialised deep ResNet's residual stream grows block by block until float16
    overflows from the BN biases alone, which no input scale removes (resnet101 with
    ``randomize_bn``: activations peak at ~3e5 for any input scale). Trained ResNets keep that BN
    small (zero-init-residual recipes); damped by 0.25, resnet101/152 peak at ~12/~32 and fit
    float16 with ``fit_input``'s headroom."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    with torch.no_grad():
        for m in model.modules():
            last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
            if last is not None:
                last.weight.mul_(factor)
                last.bias.mul_(factor)
    return model


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
