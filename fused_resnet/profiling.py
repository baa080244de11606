"""The profiling pieces shared by the tuner and the op benchmark: a model's conv shapes, inputs for
one shape as a converted model holds them, one tactic prepared as a plan prepares it and gated on the
project's error rule before it is timed, and the environment every result records."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Optional

import torch

from . import _env
from ._packing import mark_stable
from .verify import create_model


def environment(device: str) -> dict:
    # FUSED_RESNET_GIT_SHA wins: a copy of the tree sent to another machine may carry no git history,
    # or a stale one (a GPU run recorded an older HEAD than the code it ran until this was the rule).
    sha = _env.get("FUSED_RESNET_GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else (platform.processor() or platform.machine())
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda or "",
            "git_sha": sha or "unknown", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "threads": torch.get_num_threads()}



@dataclass(frozen=True)
class ConvShape:
    name: str
    n: int
    cin: int
    h: int
    w: int
    cout: int
    k: int
    stride: int
    padding: int
    dilation: int
    groups: int
    oh: int
    ow: int
    residual: bool  # the conv that takes the block's residual add
    relu: bool

    @property
    def flops(self) -> int:
        return 2 * self.n * self.oh * self.ow * self.cout * (self.cin // self.groups) * self.k * self.k

    def weight_bytes(self, elem: int) -> int:
        return self.cout * (self.cin // self.groups) * self.k * self.k * elem

    def bytes(self, elem: int, fused: bool, weights: bool = True) -> int:
        """Minimum bytes moved: fused = read input, (read residual), write output once;
        unfused = conv writes its output, BN reads+writes it, ReLU reads+writes, add reads 2 writes 1.
        Plus the weights read once when ``weights``."""
        inp = self.n * self.cin * self.h * self.w * elem
        out = self.n * self.cout * self.oh * self.ow * elem
        wgt = self.weight_bytes(elem) if weights else 0
        if fused:
            return inp + wgt + out * (2 if self.residual else 1)
        return inp + wgt + out * (1 + 2 + (2 if self.relu else 0) + (3 if self.residual else 0))


def conv_shapes(model_name: str, batch: int, image_size: int = 224) -> list[ConvShape]:
    """Every conv of ``model_name`` (torchvision name or timm/NAME) with its input shape, found by one
    meta-device forward."""
    with torch.device("meta"):
        model = create_model(model_name).eval()
    last_convs = set()
    for m in model.modules():  # torchvision's and timm's blocks
        if type(m).__name__ == "Bottleneck":
            last_convs.add(m.conv3)
        elif type(m).__name__ == "BasicBlock":
            last_convs.add(m.conv2)
    names = {m: n for n, m in model.named_modules()}
    shapes: list[ConvShape] = []

    def hook(m, inp, out):
        x = inp[0]
        ds = ".downsample." in names[m]
        shapes.append(ConvShape(names[m], x.shape[0], x.shape[1], x.shape[2], x.shape[3], m.out_channels,
                                m.kernel_size[0], m.stride[0], m.padding[0], m.dilation[0], m.groups,
                                out.shape[2], out.shape[3], m in last_convs, not ds))

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.empty(batch, 3, image_size, image_size, device="meta"))
    for h in hs:
        h.remove()
    return shapes



def distinct_shapes(model: str, batch: int, image_size: int = 224) -> list[ConvShape]:
    """The model's convs, one per distinct (shape, stride, padding, dilation, groups, epilogue)."""
    seen: set = set()
    return [s for s in conv_shapes(model, batch, image_size)
            if (key := (s.cin, s.h, s.w, s.cout, s.k, s.stride, s.padding, s.dilation, s.groups, s.residual, s.relu))
            not in seen and not seen.add(key)]


@dataclass
class OpInputs:
    """Random GPU/CPU tensors for one ConvShape, as a converted model holds them (channels_last,
    folded fp32 bias, weight marked stable so packed layouts are cached)."""
    shape: ConvShape
    xs: list  # input sets, rotated by every timed callable
    w: torch.Tensor
    bias: torch.Tensor
    res: Optional[torch.Tensor]

    @property
    def x(self) -> torch.Tensor:
        return self.xs[0]

    def conv_kwargs(self) -> dict:
        s = self.shape
        return dict(stride=s.stride, padding=s.padding, dilation=s.dilation, relu=s.relu, residual=self.res is not None)

    @property
    def key(self) -> str:
        from .tuning import tactic_key

        s = self.shape
        return tactic_key(s.n, s.cin, s.h, s.w, s.cout, s.k, s.stride, s.groups, self.x.dtype, s.padding, s.dilation,
                          s.relu, self.res is not None)

    @property
    def default_tactic(self) -> str:
        from ._selector import default_tactic

        return default_tactic(self.x, self.w, self.shape.groups, None, **self.conv_kwargs())

    @property
    def out_bytes(self) -> int:
        s = self.shape
        return s.n * s.cout * s.oh * s.ow * self.x.element_size()


def op_inputs(s: ConvShape, dt: torch.dtype, device: str) -> OpInputs:
    cl = torch.channels_last
    x = torch.randn(s.n, s.cin, s.h, s.w, device=device, dtype=dt).contiguous(memory_format=cl)
    # Two input sets where both fit in L2 several times over, so no provider times a cache-warm input.
    sets = 2 if 2 * x.numel() * x.element_size() < (8 << 20) else 1
    xs = [x] + [torch.randn_like(x) for _ in range(sets - 1)]
    w = (torch.randn(s.cout, s.cin // s.groups, s.k, s.k, device=device, dtype=dt) * 0.05).contiguous(memory_format=cl)
    # As in a converted model: the weight's packed layouts are cached, not rebuilt per call.
    # (Without this, the op bench repacked the weight on every fused call: benchmarks/NOTES.md.)
    mark_stable(w)
    bias = torch.randn(s.cout, device=device)
    res = torch.randn(s.n, s.cout, s.oh, s.ow, device=device, dtype=dt).contiguous(memory_format=cl) if s.residual else None
    return OpInputs(s, xs, w, bias, res)


def rotating(inp: OpInputs, call):
    state = {"i": 0}

    def fn():
        state["i"] = (state["i"] + 1) % len(inp.xs)
        return call(inp.xs[state["i"]])
    return fn


def tactic_call(tactic: str, inp: OpInputs):
    """(callable running ``tactic`` on inp, None) if it can run here, else (None, why not). The launch
    is prepared once, as a model's plan prepares it (packed weights, bias cast), so the timed calls
    are what a planned forward runs; it is run once here: one that raises is reported, not timed."""
    from . import tactics

    s = inp.shape
    st, pd, dl = [s.stride] * 2, [s.padding] * 2, [s.dilation] * 2
    p = tactics.Problem(inp.x, inp.w, tuple(st), tuple(pd), tuple(dl), s.groups, False, inp.res is not None, s.relu)
    why = tactics.why_not(tactic, p)
    if why is not None:
        return None, why
    try:
        with torch.inference_mode():
            run = tactics.prepare(tactic, p, inp.w, inp.bias, None)
            out = run(inp.x, inp.res)
        if inp.x.is_cuda:
            torch.cuda.synchronize()
    except Exception as e:  # a kernel that rejects the problem: reported, the others still timed
        return None, f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    wrong = wrong_result(out, inp, st, pd, dl)
    if wrong:  # never time (or table) a kernel that computes the wrong thing, however fast
        return None, wrong
    return rotating(inp, lambda x: run(x, inp.res)), None


def wrong_result(out: torch.Tensor, inp: OpInputs, st, pd, dl) -> Optional[str]:
    """None if ``out`` passes the project's error rule against the float64 reference (at most 2x the
    error of PyTorch's own conv+epilogue in the same dtype, plus a floor), else what is wrong."""
    from .ops.fused_conv2d import fused_conv2d_ref
    from .testing import compare

    s = inp.shape
    args = (inp.x, inp.w, inp.bias, None, st, pd, dl, s.groups, inp.res, s.relu)
    # cudnn.benchmark off for the float64 reference: benchmarking float64 algorithms per new shape
    # costs seconds on a GPU and buys nothing for a one-off reference.
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=False):
        ref = fused_conv2d_ref(*args, upcast=True)
        eager = fused_conv2d_ref(*args)
    if out.shape != ref.shape:
        return f"WRONG RESULT: shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    cmp = compare(out, eager, ref)
    return None if cmp.ok else f"WRONG RESULT (not timed): {cmp}"

