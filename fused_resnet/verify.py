"""Model-level correctness check against torchvision or timm (``python -m fused_resnet verify``), and
the model and dtype names the command line takes (shared with ``bench`` and ``demo``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torchvision

from .swap import convert
from .testing import Comparison, compare, fit_input, randomize_bn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# torch's spellings, accepted wherever a dtype is named on the command line
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}


def dtype_name(name: str) -> str:
    """The short dtype name (fp32, fp16, bf16) for any accepted spelling, e.g. "float32", "half",
    "torch.bfloat16". Raises ValueError for anything else."""
    key = name.strip().lower().removeprefix("torch.")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose from {', '.join([*DTYPES, *_DTYPE_ALIASES])}")
    return key


TIMM_PREFIX = "timm/"


def create_model(name: str) -> torch.nn.Module:
    """An untrained model by name: a torchvision builder name ("resnet50"), or ``timm/<name>``, where
    everything after ``timm/`` goes to ``timm.create_model(name, pretrained=False)`` (e.g.
    "timm/resnet50", "timm/resnet50.a1_in1k"; timm must be installed). Builds on the current
    default device (``with torch.device("meta")`` gives a shape-only model)."""
    if name.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError as e:
            raise ImportError(f"{name}: timm is not installed (pip install fused_resnet[timm])") from e
        return timm.create_model(name[len(TIMM_PREFIX):], pretrained=False)
    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder):
        raise ValueError(f"unknown model {name!r}: a torchvision builder name or timm/<timm model name>")
    return builder()


def model_problem(name: str) -> str | None:
    """None if create_model(name) can build ``name`` here, else why not (for the command line)."""
    if name.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            return f"{name}: timm is not installed (pip install fused_resnet[timm])"
        if not timm.is_model(name[len(TIMM_PREFIX):].split(".")[0]):
            return f"{name}: timm has no model {name[len(TIMM_PREFIX):]!r}"
        return None
    if not callable(getattr(torchvision.models, name, None)):
        return f"unknown model {name!r}: a torchvision builder name or timm/<timm model name>"
    return None


class CheckpointError(ValueError):
    """--checkpoint cannot be read or does not fit the model (a usage error, not a numerical one)."""


def build_reference_model(name: str, checkpoint: str | None = None, seed: int = 0) -> torch.nn.Module:
    """``create_model(name)`` in eval mode: the checkpoint's weights (a state_dict, or a dict with a
    "state_dict" entry), or random weights with realistic randomized BN statistics."""
    torch.manual_seed(seed)
    model = create_model(name)
    if checkpoint:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # missing, corrupt, not a tensor file, pickled code: all the user's file
            raise CheckpointError(f"cannot read checkpoint {checkpoint!r}: {(str(e).splitlines() or [''])[0][:200]}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {checkpoint!r} holds a {type(state).__name__}, not a state_dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {checkpoint!r} does not fit {name}: "
                                  f"{' '.join(str(e).split())[:240]}") from None
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
    fused: int = 0  # convs that ran through fused_conv2d (the rest ran as the model's own modules)
    input_scale: float = 1.0  # the input was scaled by this to keep activations in the dtype's range
    fallback_reasons: Optional[list] = None  # why convs did not run fused (explain's reasons)

    @property
    def ok(self) -> bool:
        """PASS: something ran fused and it met the error rule (nothing fused verifies nothing)."""
        return self.fused > 0 and self.comparison.ok


def verify_model(name: str, *, batch: int = 2, dtype: str = "fp32", device: str = "cpu", image_size: int = 224,
                 checkpoint: str | None = None, backend: str | None = None, channels_last: bool = False,
                 seed: int = 0) -> VerifyResult:
    """Compare fused_resnet against the model's own eager forward (torchvision's or timm's; same
    dtype/device) and a float64 CPU reference."""
    tv = build_reference_model(name, checkpoint, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x64 = torch.randn(batch, 3, image_size, image_size, generator=gen, dtype=torch.float64)
    dt = DTYPES[dtype_name(dtype)]
    x64, scale, ref = fit_input(tv.double(), x64, dt)  # inputs whose activations stay in dt's range
    tv = tv.to(device=device, dtype=dt)
    fused = convert(copy.deepcopy(tv), backend=backend)
    x = x64.to(device=device, dtype=dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = tv(x)
        out = fused(x)
    cmp = compare(out, eager, ref)
    ref = ref.to(out.device)
    abs_err = float((out.double() - ref).abs().amax())
    eager_abs = float((eager.double() - ref).abs().amax())
    from .explain import explain

    report = explain(fused, x[:1])
    fallbacks = sorted({r.reason for r in report.rows if not r.fused})
    return VerifyResult(name, cmp, abs_err, eager_abs, report.counts(), report.fused_count(), scale, fallbacks)
