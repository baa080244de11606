"""Model-level correctness check against torchvision (``python -m fused_resnet verify``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torchvision

from .blocks import convert
from .testing import Comparison, compare, randomize_bn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def build_reference_model(name: str, checkpoint: str | None = None, seed: int = 0) -> torch.nn.Module:
    """torchvision's ``name`` in eval mode: the checkpoint's weights, or random weights with
    realistic randomized BN statistics."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)()
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    else:
        randomize_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


@dataclass
class VerifyResult:
    model: str
    comparison: Comparison
    max_abs_err: float
    eager_max_abs_err: float
    backends: dict  # {backend: number of convs it ran}

    @property
    def ok(self) -> bool:
        return self.comparison.ok


def verify_model(name: str, *, batch: int = 2, dtype: str = "fp32", device: str = "cpu", image_size: int = 224,
                 checkpoint: str | None = None, backend: str | None = None, channels_last: bool = False,
                 seed: int = 0) -> VerifyResult:
    """Compare fused_resnet against torchvision (same dtype/device) and a float64 CPU reference."""
    tv = build_reference_model(name, checkpoint, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x64 = torch.randn(batch, 3, image_size, image_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref = tv.double()(x64)
    dt = DTYPES[dtype]
    tv = tv.to(device=device, dtype=dt)
    fused = convert(copy.deepcopy(tv), backend=backend)
    x = x64.to(device=device, dtype=dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = tv(x)
        out = fused(x)
    cmp = compare(out, eager, ref)
    abs_err = float((out.double().cpu() - ref).abs().max())
    eager_abs = float((eager.double().cpu() - ref).abs().max())
    from .explain import explain

    return VerifyResult(name, cmp, abs_err, eager_abs, explain(fused, x[:1]).counts())
