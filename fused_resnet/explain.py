"""explain(model, x): which backend runs each conv of a forward, and why."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from . import _trace


@dataclass
class Row:
    name: str  # module path of the conv, e.g. "layer1.0.conv2"
    conv: str  # kernel, channels, stride/dilation/groups and input shape
    backend: str  # "eager" | "triton" | "cuda"
    reason: str
    tactic: str = ""  # the kernels that ran, e.g. "eager:cudnn_fused", "cuda:sm80_large" (see _selector)
    fused: bool = True  # ran as fused_resnet.ops.fused_conv2d (False: a plain nn.Conv2d module ran it)


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    # Launch plans the fused modules hold (from earlier calls): module name -> the input signatures
    # (shape, dtype) each has prebuilt launches for; the launches run the tactics listed in ``rows``.
    plans: dict[str, list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.backend] = out.get(r.backend, 0) + 1
        return out

    def fused_count(self) -> int:
        """How many convs ran through fused_conv2d (BN folded, epilogue fused), on any backend."""
        return sum(r.fused for r in self.rows)

    def __str__(self) -> str:
        head = ("conv", "shape", "backend", "tactic", "why")
        table = [head] + [(r.name, r.conv, r.backend, r.tactic, r.reason) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in table]
        lines.insert(1, "-" * len(lines[0]))
        summary = ", ".join(f"{n} {b}" for b, n in sorted(self.counts().items()))
        footer = [f"{len(self.rows)} convs: {summary}; {self.fused_count()} fused"]
        if self.plans:
            sigs = sorted({s for v in self.plans.values() for s in v})
            footer.append(f"launch plans kept by {len(self.plans)} fused modules for: {', '.join(sigs)}")
        return "\n".join(lines + footer)


def explain(model: nn.Module, example_input: torch.Tensor) -> Report:
    """Run one forward of ``model`` on ``example_input`` (under torch.no_grad, in the model's
    current train/eval mode) and report, per conv: its shape, the backend and tactic (the exact
    kernels, e.g. "eager:cudnn_fused") that ran it, and why.

    Convs that run as plain ``nn.Conv2d`` modules (torchvision's forward, unconverted modules) are
    reported as eager with the reason their block fell back, or "not converted".
    """
    names = {m: n for n, m in model.named_modules()}
    handles = []

    def push(m, _):
        _trace._modules.append(names[m])

    def pop(m, _inp, _out):
        _trace._modules.pop()

    def conv_hook(m, inp, _out):
        why = _trace.fallback_reason() or "eager: not converted (plain nn.Conv2d)"
        x = inp[0]
        _trace.add(names[m], _trace.describe(x, m.weight, m.stride, m.dilation, m.groups), "eager", why, fused=False)

    for m in model.modules():
        handles.append(m.register_forward_pre_hook(push))
        handles.append(m.register_forward_hook(pop))
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
    try:
        with _trace.recording() as records, torch.no_grad():
            _trace.own_hooks.update(h.id for h in handles)
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    plans = {}
    for name, m in model.named_modules():
        kept = m.__dict__.get("_plans")
        if kept:
            plans[name or type(m).__name__] = [f"{tuple(k[0])} {str(k[2]).replace('torch.', '')}" for k in kept]
    return Report([Row(*r) for r in records], plans)
