"""Side-by-side benchmarks (``python -m fused_resnet bench``), shared with benchmarks/ and demo.

Levels: ``model`` (whole torchvision model per provider) and ``op`` (each distinct conv shape of the
model: fused_conv2d per backend, the op auto runs (provider fused_resnet) and every candidate tactic
vs the library conv alone vs conv + separate BN + ReLU (+ add)). Op rows carry output and residual
bytes and the card's measured copy bandwidth, so auto's target, time <= conv_alone + residual_bytes /
bandwidth, can be recomputed from them (``op_bound_summary``). cuDNN runs with
torch.backends.cudnn.benchmark = True on GPUs, recorded in every row (cudnn_benchmark).
Every provider is timed interleaved on the same inputs (several input sets, never zeros), and every
row records the device, versions, git sha and date. Roofline columns come from the model's own
conv shapes (see ``conv_shapes`` / ``roofline``).
"""
from __future__ import annotations

import copy
import csv
import datetime
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import _cli
from ._packing import mark_stable
from .blocks import convert
from .timing import paired_ratio, time_interleaved
from .verify import DTYPES, TIMM_PREFIX, build_reference_model, create_model, dtype_name, model_problem

# "timm"/"timm_cl" are the eager baselines' names for timm models (--model timm/NAME): the model's own
# forward, as "torchvision"/"torchvision_cl" are for torchvision models.
MODEL_PROVIDERS = ("torchvision", "torchvision_cl", "timm", "timm_cl", "compile", "compile_max", "torchscript",
                   "fused_eager", "fused_triton", "fused_cuda", "fused_resnet", "fused_compile", "optimized")
_EAGER = {"torchvision": "torchvision", "torchvision_cl": "torchvision_cl", "timm": "torchvision",
          "timm_cl": "torchvision_cl"}
OP_PROVIDERS = ("conv_alone", "conv_bn_relu", "cudnn_fused", "fused_eager", "fused_triton", "fused_cuda",
                "fused_resnet", "tactics")  # "tactics": every candidate tactic, one provider each (named by it)


# --- environment -------------------------------------------------------------------------------------

def environment(device: str) -> dict:
    # FUSED_RESNET_GIT_SHA wins: a copy of the tree sent to another machine may carry no git history,
    # or a stale one (a GPU run recorded an older HEAD than the code it ran until this was the rule).
    sha = os.environ.get("FUSED_RESNET_GIT_SHA", "")
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


# --- roofline ----------------------------------------------------------------------------------------

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


def roofline(model_name: str, batch: int, elem: int, image_size: int = 224) -> dict:
    shapes = conv_shapes(model_name, batch, image_size)
    return {"gflop": sum(s.flops for s in shapes) / 1e9,
            "mb_fused": sum(s.bytes(elem, True) for s in shapes) / 1e6,
            "mb_unfused": sum(s.bytes(elem, False) for s in shapes) / 1e6,
            "mb_act_fused": sum(s.bytes(elem, True, weights=False) for s in shapes) / 1e6,
            "mb_act_unfused": sum(s.bytes(elem, False, weights=False) for s in shapes) / 1e6,
            "mb_weights": sum(s.weight_bytes(elem) for s in shapes) / 1e6}


def measure_copy_gbps(device: str) -> float:
    """The card's device-to-device copy bandwidth in GB/s (bytes read + bytes written), measured now."""
    n = 1 << 28  # 512 MiB of fp16 each way: far beyond L2
    a = torch.randn(n, device=device, dtype=torch.float16)
    b = torch.empty_like(a)
    (t_copy,) = time_interleaved([lambda: b.copy_(a)], torch.device(device), warmup=3, runs=20)
    del a, b
    return 2 * n * 2 / t_copy.median_s / 1e9


def measure_peaks(device: str) -> dict:
    """The card's copy bandwidth (GB/s, read+write) and fp16 matmul rate (TFLOP/s), measured now."""
    if not device.startswith("cuda"):
        return {}
    gbps = measure_copy_gbps(device)
    m = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    (t_mm,) = time_interleaved([lambda: m @ m], torch.device(device), warmup=3, runs=20)
    return {"peak_gbps": gbps, "peak_tflops": 2 * 8192 ** 3 / t_mm.median_s / 1e12}


# --- providers ---------------------------------------------------------------------------------------

def _fused(tv_model, backend):
    return convert(copy.deepcopy(tv_model), backend=backend)


def build_provider(name: str, tv_model: torch.nn.Module, example: torch.Tensor) -> tuple[Callable, torch.Tensor, float]:
    """(callable model, input in the layout it expects, build/compile seconds) for one provider."""
    t0 = time.perf_counter()
    cl = example.contiguous(memory_format=torch.channels_last)
    name = _EAGER.get(name, name)
    if name == "torchvision":
        fn, x = tv_model, example
    elif name == "torchvision_cl":
        fn, x = copy.deepcopy(tv_model).to(memory_format=torch.channels_last), cl
    elif name in ("compile", "compile_max"):
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        fn = torch.compile(copy.deepcopy(tv_model).to(memory_format=torch.channels_last),
                           mode="max-autotune" if name == "compile_max" else None)
        x = cl
        with torch.no_grad():
            fn(x)  # compile now, so compile time is reported apart from run time
    elif name == "torchscript":
        m = copy.deepcopy(tv_model).to(memory_format=torch.channels_last)
        with torch.no_grad():
            fn = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(m)))
            fn(cl)
        x = cl
    elif name == "optimized":
        # fused_resnet.optimize: owns the model and replays its own CUDA graphs (on CPU: the converted
        # model); its rows count as "graphs" on a GPU.
        from .optimize import optimize

        fn, x = optimize(copy.deepcopy(tv_model), example), example
    elif name == "fused_compile":
        # torch.compile of the converted model (no freezing): the graph reads the cached folded
        # weights, so it must not be slower than the converted model run eagerly.
        model = _fused(tv_model, "auto")
        with torch.no_grad():
            model(example)  # eager first: the fold caches the compiled graph reads
        fn, x = torch.compile(model), example
        with torch.no_grad():
            fn(x)
    elif name.startswith("fused_"):
        # fused_cuda: auto preferring the CUTLASS kernels (convs they cannot run, e.g. the 3-channel
        # stem or grouped convs, go to triton), so a whole model can run it.
        backend = {"fused_resnet": "auto", "fused_cuda": "auto"}.get(name, name[len("fused_"):])
        fn, x = _fused(tv_model, backend), example
        if name == "fused_cuda":
            fn = _with_env(fn, "FUSED_RESNET_PREFER", "cuda")
        with torch.no_grad():
            fn(x)
    else:
        raise ValueError(f"unknown provider {name!r}; choose from {MODEL_PROVIDERS}")
    if example.is_cuda:
        torch.cuda.synchronize()
    return fn, x, time.perf_counter() - t0


def _with_env(fn, key, value):
    def call(*args):
        old = os.environ.get(key)
        os.environ[key] = value
        try:
            return fn(*args)
        finally:
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    return call


def provider_available(name: str, device: str) -> Optional[str]:
    """None if the provider can run on this device, else why not."""
    from . import _selector

    status = _selector.backend_status()
    if name == "fused_triton" and not (status["triton"][0] and device.startswith("cuda")):
        return "triton backend needs a CUDA GPU"
    if name == "fused_cuda" and not (device.startswith("cuda") and status["cuda"][0]):
        return status["cuda"][1]
    if name == "compile_max" and not device.startswith("cuda"):
        return "max-autotune is GPU-only here (CPU compile would take many minutes)"
    return None


def _graphed(fn, x, keep_model: bool = True):
    """Capture fn(x) in a CUDA graph; returns a replay callable that keeps the graph's static input
    and output, and fn itself (the model: parameters, folded and packed weights), alive: the graph
    holds raw pointers into all of them. (Before this kept fn, a model dropped after its capture
    left its graph reading freed memory: the fault in benchmarks/NOTES.md.)"""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g), torch.no_grad():
        out = fn(x)

    keep = [fn] if keep_model else []  # keep_model=False only to reproduce that fault (graph_check.py)

    def replay(g=g, x=x, out=out, keep=keep):
        g.replay()
        return out

    return replay


@dataclass
class Row:
    provider: str
    model: str
    level: str
    shape: str
    batch: int
    dtype: str
    format: str
    graphs: bool
    median_ms: float
    spread_ms: float
    runs: int
    items_per_s: float = 0.0
    ratio_vs_baseline: float = 0.0  # baseline time / this time (>1 = faster than baseline)
    baseline: str = ""
    build_s: float = 0.0
    gflop: float = 0.0
    tflops: float = 0.0
    gbps_fused: float = 0.0
    frac_peak_flops: float = 0.0
    frac_peak_bw: float = 0.0
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark while this row was timed
    tactic: str = ""  # op level: the tactic this provider ran (fused_resnet: the one auto picked)
    out_bytes: int = 0  # op level: bytes of the conv's output
    residual_bytes: int = 0  # op level: bytes of the residual read (0: no residual)
    copy_gbps: float = 0.0  # op level: the card's measured device-to-device copy bandwidth
    env: dict = field(default_factory=dict)
    # Median and IQR of the per-round ratio baseline/this (timing.paired_ratio); 0 when the providers
    # were not timed in the same rounds (--cuda-graphs). On a noisy machine this is the ratio to quote.
    ratio_paired: float = 0.0
    ratio_paired_iqr: float = 0.0


def run_model_bench(model: str, batch: int, dtype: str, device: str, providers, *, runs: int = 10,
                    image_size: int = 224, cuda_graphs: bool = False, peaks: Optional[dict] = None,
                    progress: bool = True, env: Optional[dict] = None) -> list[Row]:
    dt = DTYPES[dtype_name(dtype)]
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # cuDNN-based providers at their strongest (recorded per row)
    tv = build_reference_model(model, seed=0).to(device=device, dtype=dt)
    inputs = [torch.randn(batch, 3, image_size, image_size, device=device, dtype=dt) for _ in range(3)]
    env = env or environment(device)
    graphs = cuda_graphs and device.startswith("cuda")
    fns, names, builds, timings = [], [], [], []
    for name in providers:
        why = provider_available(name, device)
        if why:
            if progress:
                print(f"  skip {name}: {why}", flush=True)
            continue
        if progress:
            print(f"  build {name} ...", end="", flush=True)
        try:
            fn, x0, build_s = build_provider(name, tv, inputs[0])
        except Exception as e:  # a baseline that cannot build here is reported, not fatal
            print(f" failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
            continue
        xs = [x.contiguous(memory_format=torch.channels_last) if x0.is_contiguous(memory_format=torch.channels_last)
              and not x0.is_contiguous() else x for x in inputs]
        if progress:
            print(f" {build_s:.1f}s", flush=True)
        if graphs:
            # Each provider captured, timed alone and released before the next is built. The fault
            # this once avoided (replaying a graph after another model's capture) is explained in
            # benchmarks/NOTES.md: the old _graphed let the model die while its graph lived on.
            # optimized replays graphs of its own: timed as it is called.
            try:
                call = (lambda fn=fn, x=xs[0]: fn(x)) if name == "optimized" else _graphed(fn, xs[0].clone())
                call()
                torch.cuda.synchronize()  # surface an asynchronous fault here, naming the provider
            except Exception as e:  # report, keep the other providers (a device fault ends them all)
                print(f"  {name}: CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      flush=True)
                continue
            with torch.no_grad():
                timings += time_interleaved([call], torch.device(device), warmup=2, runs=runs)
            del call
            torch.cuda.synchronize()
        else:
            state = {"i": 0}

            def call(fn=fn, xs=xs, state=state):
                state["i"] = (state["i"] + 1) % len(xs)
                return fn(xs[state["i"]])
            fns.append(call)
        names.append(name)
        builds.append(build_s)
    if not names:
        return []
    if not graphs:
        if progress:
            print(f"  timing {len(fns)} providers x {runs} runs (interleaved) ...", flush=True)
        with torch.inference_mode():
            timings = time_interleaved(fns, torch.device(device), warmup=2, runs=runs)
    elem = torch.finfo(dt).bits // 8
    roof = roofline(model, batch, elem, image_size)
    base = timings[0].median_s
    rows = []
    for name, t, b in zip(names, timings, builds):
        tflops = roof["gflop"] / t.median_s / 1e3
        gbps = roof["mb_fused"] / t.median_s / 1e3
        rows.append(Row(name, model, "model", f"3x{image_size}x{image_size}", batch, dtype,
                        "channels_last" if name not in ("torchvision", "timm", "fused_resnet", "fused_eager",
                                                        "fused_triton", "fused_cuda", "fused_compile",
                                                        "optimized") else "nchw-in",
                        cuda_graphs or (name == "optimized" and device.startswith("cuda")), t.median_s * 1e3,
                        t.spread_s * 1e3, t.runs, batch / t.median_s,
                        base / t.median_s, names[0], b, roof["gflop"], tflops, gbps,
                        tflops / peaks["peak_tflops"] if peaks else 0.0,
                        gbps / peaks["peak_gbps"] if peaks else 0.0, torch.backends.cudnn.benchmark, env=env,
                        **_paired(timings[0], t, graphs)))
    return rows


def _paired(base, t, separate: bool) -> dict:
    if separate:  # timed one provider after another: no shared rounds
        return {}
    r, iqr = paired_ratio(base, t)
    return {"ratio_paired": r, "ratio_paired_iqr": iqr}


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
    # (Runs before this fix, h200-run2/run3, repacked the weight on every fused call.)
    mark_stable(w)
    bias = torch.randn(s.cout, device=device)
    res = torch.randn(s.n, s.cout, s.oh, s.ow, device=device, dtype=dt).contiguous(memory_format=cl) if s.residual else None
    return OpInputs(s, xs, w, bias, res)


def _rotating(inp: OpInputs, call):
    state = {"i": 0}

    def fn():
        state["i"] = (state["i"] + 1) % len(inp.xs)
        return call(inp.xs[state["i"]])
    return fn


def tactic_call(tactic: str, inp: OpInputs):
    """(callable running ``tactic`` on inp, None) if it can run here, else (None, why not). The launch
    is prepared once, as a model's plan prepares it (packed weights, bias cast), so the timed calls
    are what a planned forward runs; it is run once here: one that raises is reported, not timed."""
    from ._selector import tactic_guard
    from .ops.fused_conv2d import tactic_launch

    s = inp.shape
    why = tactic_guard(tactic, inp.x, inp.w, s.groups, None, **inp.conv_kwargs())
    if why is not None:
        return None, why
    st, pd, dl = [s.stride] * 2, [s.padding] * 2, [s.dilation] * 2
    try:
        with torch.inference_mode():
            run = tactic_launch(tactic, inp.x, inp.w, inp.bias, None, st, pd, dl, s.groups, inp.res is not None,
                                s.relu)
            out = run(inp.x, inp.res)
        if inp.x.is_cuda:
            torch.cuda.synchronize()
    except Exception as e:  # a kernel that rejects the problem: reported, the others still timed
        return None, f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
    wrong = _wrong_result(out, inp, st, pd, dl)
    if wrong:  # never time (or table) a kernel that computes the wrong thing, however fast
        return None, wrong
    return _rotating(inp, lambda x: run(x, inp.res)), None


def _wrong_result(out: torch.Tensor, inp: OpInputs, st, pd, dl) -> Optional[str]:
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


def op_bound_ms(conv_alone_ms: float, residual_bytes: int, copy_gbps: float) -> float:
    """Auto's target for one conv: cuDNN's bare conv plus reading the residual at copy bandwidth."""
    return conv_alone_ms + (residual_bytes / (copy_gbps * 1e9) * 1e3 if copy_gbps > 0 else 0.0)


def op_bound_summary(rows) -> tuple[int, int, list[dict]]:
    """(shapes where auto meets its target, shapes with both timed, per-shape details) from op rows
    (Row objects or the dicts of a results JSON): fused_resnet's time <= conv_alone + residual_bytes /
    copy bandwidth, per (model, batch, dtype, shape)."""
    get = (lambda r, k: r[k]) if rows and isinstance(rows[0], dict) else getattr
    groups: dict = {}
    for r in rows:
        if get(r, "level") == "op":
            groups.setdefault((get(r, "model"), get(r, "batch"), get(r, "dtype"), get(r, "shape")), {})[
                get(r, "provider")] = r
    details = []
    for (model, batch, dtype, shape), by in groups.items():
        if "fused_resnet" not in by or "conv_alone" not in by:
            continue
        auto, base = by["fused_resnet"], by["conv_alone"]
        bound = op_bound_ms(get(base, "median_ms"), get(auto, "residual_bytes"), get(auto, "copy_gbps"))
        details.append({"model": model, "batch": batch, "dtype": dtype, "shape": shape, "tactic": get(auto, "tactic"),
                        "auto_ms": get(auto, "median_ms"), "bound_ms": bound,
                        "ok": get(auto, "median_ms") <= bound})
    return sum(d["ok"] for d in details), len(details), details


def run_op_bench(model: str, batch: int, dtype: str, device: str, providers, *, runs: int = 10,
                 image_size: int = 224, progress: bool = True, env: Optional[dict] = None,
                 copy_gbps: Optional[float] = None) -> list[Row]:
    """Per distinct conv shape of ``model``: fused_conv2d per backend, auto (fused_resnet) and every
    candidate tactic ("tactics", or tactic names) vs conv alone vs conv+BN+ReLU(+add)."""
    from . import _selector
    from .ops import fused_conv2d

    dt = DTYPES[dtype_name(dtype)]
    env = env or environment(device)
    gpu = device.startswith("cuda")
    if gpu:
        torch.backends.cudnn.benchmark = True  # cuDNN-based providers at their strongest (recorded per row)
        if copy_gbps is None:
            copy_gbps = measure_copy_gbps(device)
    rows = []
    shapes = distinct_shapes(model, batch, image_size)
    for i, s in enumerate(shapes):
        if progress:
            print(f"  [{i + 1}/{len(shapes)}] {s.name}: {s.k}x{s.k} {s.cin}->{s.cout} s{s.stride} on {s.h}x{s.w}",
                  flush=True)
        inp = op_inputs(s, dt, device)
        x, w, bias, res = inp.x, inp.w, inp.bias, inp.res
        bn = torch.nn.BatchNorm2d(s.cout).to(device=device, dtype=dt).eval()
        conv_args = (s.stride, s.padding, s.dilation, s.groups)

        def conv_bn_relu(x):
            y = bn(F.conv2d(x, w, None, *conv_args))
            if res is not None:
                y = y + res
            return F.relu(y) if s.relu else y

        def cudnn_fused(x):
            """cuDNN's own fused conv + bias (+ add) + ReLU, as TorchScript's optimize_for_inference uses."""
            b, lists = bias.to(dt), ([s.stride] * 2, [s.padding] * 2, [s.dilation] * 2, s.groups)
            if s.relu and res is not None:
                return torch.cudnn_convolution_add_relu(x, w, res, 1.0, b, *lists)
            if s.relu:
                return torch.cudnn_convolution_relu(x, w, b, *lists)
            return F.conv2d(x, w, b, *conv_args)

        table = {"conv_alone": _rotating(inp, lambda x: F.conv2d(x, w, None, *conv_args)),
                 "conv_bn_relu": _rotating(inp, conv_bn_relu)}
        tactic_of = {}
        if "cudnn_fused" in providers and gpu:
            try:
                with torch.inference_mode():
                    cudnn_fused(x)
                table["cudnn_fused"] = _rotating(inp, cudnn_fused)
            except RuntimeError as e:  # a cuDNN build without the fused engines: report, go on
                print(f"    cudnn_fused: skipped ({str(e).splitlines()[0][:120]})", flush=True)
        from ._selector import BackendUnavailableError

        for p in providers:
            if p.startswith("fused_") and provider_available(p, device) is None:
                be = "auto" if p == "fused_resnet" else p[len("fused_"):]
                fn = _rotating(inp, lambda x, be=be: fused_conv2d(
                    x, w, bias, stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups,
                    residual=res, relu=s.relu, backend=be))
                try:
                    with torch.inference_mode():
                        fn()
                except BackendUnavailableError as e:  # e.g. the CUTLASS kernels on the 3-channel stem
                    print(f"    {p}: skipped ({str(e).split(': ')[-1]})", flush=True)
                    continue
                table[p] = fn
                tactic_of[p] = _selector.select_conv(x, w, s.groups, "auto" if be == "auto" else be, None,
                                                     s.stride, padding=s.padding, dilation=s.dilation,
                                                     relu=s.relu, residual=res is not None).tactic
        asked_tactics = [t for t in (_selector.conv_tactics(x) if "tactics" in providers else ())] + \
                        [p for p in providers if ":" in p or p == _selector.TRITON]
        for t in dict.fromkeys(asked_tactics):
            fn, why = tactic_call(t, inp)
            if fn is None:
                if progress:
                    print(f"    {t}: skipped ({why})", flush=True)
                continue
            table[t] = fn
            tactic_of[t] = t
        names = [p for p in providers if p in table] + [t for t in table if t not in providers]
        names = ["conv_alone"] + [p for p in names if p != "conv_alone"]
        with torch.inference_mode():
            # 10 calls per timed sample: the launches queue up, so a kernel shorter than its host-side
            # launch cost is measured as the throughput a stream of calls gets, not as one idle gap.
            ts = time_interleaved([table[p] for p in names], torch.device(device), warmup=3, runs=runs,
                                  inner=10 if gpu else 1)
        base = ts[0].median_s
        elem = torch.finfo(dt).bits // 8
        res_bytes = res.numel() * res.element_size() if res is not None else 0
        for p, t in zip(names, ts):
            tflops = s.flops / t.median_s / 1e12
            rows.append(Row(p, model, "op", f"{s.name}:{s.k}x{s.k}/{s.stride} {s.cin}->{s.cout} {s.h}x{s.w}"
                            + (f" g{s.groups}" if s.groups != 1 else ""),
                            batch, dtype, "channels_last", False, t.median_s * 1e3, t.spread_s * 1e3, t.runs,
                            s.n / t.median_s, base / t.median_s, names[0], 0.0, s.flops / 1e9, tflops,
                            s.bytes(elem, True) / t.median_s / 1e9, 0.0, 0.0, torch.backends.cudnn.benchmark,
                            tactic_of.get(p, ""), inp.out_bytes, res_bytes, copy_gbps or 0.0, env,
                            **_paired(ts[0], t, False)))
    return rows


def print_bound_summary(rows) -> None:
    met, total, details = op_bound_summary(rows)
    if not total:
        return
    for d in details:
        if not d["ok"]:
            print(f"  over target: b{d['batch']} {d['dtype']} {d['shape']}: auto ({d['tactic']}) "
                  f"{d['auto_ms']:.4f} ms > conv_alone + residual/bandwidth {d['bound_ms']:.4f} ms")
    print(f"auto meets its target (time <= conv_alone + residual_bytes / copy bandwidth) on {met} of {total} "
          f"op shapes")


# --- output ------------------------------------------------------------------------------------------

def print_table(rows: list[Row]) -> None:
    if not rows:
        print("(no results)")
        return
    head = f"{'provider':16s} {'level':5s} {'shape':34s} {'batch':>5s} {'dtype':5s} {'graphs':6s} " \
           f"{'median ms':>10s} {'±IQR':>7s} {'items/s':>9s} {'vs ' + rows[0].baseline:>18s} " \
           f"{'paired ±IQR':>13s} {'TFLOP/s':>8s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.provider:16s} {r.level:5s} {r.shape[:34]:34s} {r.batch:5d} {r.dtype:5s} {str(r.graphs):6s} "
              f"{r.median_ms:10.3f} {r.spread_ms:7.3f} {r.items_per_s:9.1f} {r.ratio_vs_baseline:17.2f}x "
              f"{_paired_text(r):>13s} {r.tflops:8.2f}")


def _paired_text(r: Row) -> str:
    return f"{r.ratio_paired:.2f}x ±{r.ratio_paired_iqr:.2f}" if r.ratio_paired else "-"


def write_results(rows: list[Row], out_prefix: str) -> list[str]:
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    records = [{**{k: v for k, v in asdict(r).items() if k != "env"}, **r.env} for r in rows]
    paths = [out_prefix + ".json", out_prefix + ".csv"]
    with open(paths[0], "w") as f:
        json.dump(records, f, indent=1)
    with open(paths[1], "w", newline="") as f:
        if records:
            wr = csv.DictWriter(f, fieldnames=list(records[0]))
            wr.writeheader()
            wr.writerows(records)
    return paths


def plot(rows: list[Row], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not installed: no plot)")
        return None
    model_rows = [r for r in rows if r.level == "model"]
    op_rows = [r for r in rows if r.level == "op"]
    fig, axes = plt.subplots(1, 2 if op_rows else 1, figsize=(14 if op_rows else 7, 5), squeeze=False)
    ax = axes[0][0]
    for p in dict.fromkeys(r.provider for r in model_rows):
        pts = sorted((r.batch, r.items_per_s) for r in model_rows if r.provider == p and not r.graphs)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title("throughput vs batch" + (f" ({model_rows[0].model}, {model_rows[0].dtype})" if model_rows else ""))
    ax.legend(fontsize=8)
    if op_rows:
        ax = axes[0][1]
        big = max(r.batch for r in op_rows)  # one batch per chart: the largest
        op_rows = [r for r in op_rows if r.batch == big]
        shapes = list(dict.fromkeys(r.shape for r in op_rows))
        provs = list(dict.fromkeys(r.provider for r in op_rows))
        width = 0.8 / len(provs)
        for j, p in enumerate(provs):
            vals = [next((r.median_ms for r in op_rows if r.shape == s and r.provider == p), 0) for s in shapes]
            ax.bar([i + j * width for i in range(len(shapes))], vals, width, label=p)
        ax.set_xticks([i + 0.4 for i in range(len(shapes))])
        ax.set_xticklabels([s.split(":")[0] for s in shapes], rotation=70, fontsize=6)
        ax.set_ylabel("ms")
        ax.set_title(f"per conv shape, batch {big}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- CLI ---------------------------------------------------------------------------------------------

def add_arguments(p) -> None:
    p.add_argument("--device", default=None, type=_cli.device_arg, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--model", default="resnet50",
                   help="comma list of torchvision ResNet names (default resnet50) or timm/NAME: everything after "
                        "timm/ goes to timm.create_model(NAME, pretrained=False), e.g. timm/resnet50; timm models' "
                        "eager baselines are named timm, timm_cl")
    p.add_argument("--batch", default=None, type=_cli.positive_int_list,
                   help="comma list of positive integers (default 1,8,32,128,256 on GPU, 1,8 on CPU)")
    p.add_argument("--dtype", default=None, help="comma list of fp16,bf16,fp32 or torch's names (float16, half, "
                                                 "bfloat16, float32); default fp16 on GPU, fp32 on CPU")
    p.add_argument("--level", default="model", help="comma list of model,op (default model)")
    p.add_argument("--providers", default=None,
                   help=f"comma list (default all available). model level: {','.join(MODEL_PROVIDERS)}; "
                        f"op level: {','.join(OP_PROVIDERS)} or tactic names (e.g. eager:cudnn_fused, "
                        f"cuda:sm80_large; 'tactics' = every candidate tactic)")
    p.add_argument("--image-size", type=_cli.positive_int, default=224)
    p.add_argument("--runs", type=_cli.positive_int, default=None, help="timed runs per provider (default 20 GPU, 5 CPU)")
    p.add_argument("--cuda-graphs", action="store_true", help="capture each provider's forward in a CUDA graph "
                                                              "and time replays (batch-1 latency as served); "
                                                              "providers are then timed one after another, "
                                                              "not round-robin")
    p.add_argument("--out", default=None, help="write results to OUT.json and OUT.csv")
    p.add_argument("--plot", default=None, help="write a PNG (throughput vs batch, per-shape bars)")


def _tactic_names() -> tuple:
    from . import _ext, _selector

    return (_selector.EAGER_CPU, *_selector.TACTICS_CUDA_TENSOR, *_ext.sm90_tactics())


def unknown_providers(names) -> list:
    """The names in ``names`` that are no provider (model or op level) and no tactic."""
    known = {*MODEL_PROVIDERS, *OP_PROVIDERS, *_tactic_names()}
    return [n for n in names if n not in known]


def _write_so_far(rows: list, out) -> None:
    """Rewrite OUT.json/.csv after each model/batch: a run killed by its time limit keeps what it measured."""
    if out and rows:
        write_results(rows, out)


def main(args) -> int:
    """Run the benchmark; bad arguments raise _cli.UsageError (one line, exit status 2) before any work."""
    from ._cli import UsageError

    if args.providers:
        unknown = unknown_providers(args.providers.split(","))
        if unknown:
            raise UsageError(f"unknown provider(s) {', '.join(unknown)}. Model level: {', '.join(MODEL_PROVIDERS)}. "
                             f"Op level: {', '.join(OP_PROVIDERS)}, or a tactic: {', '.join(_tactic_names())}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    if args.cuda_graphs and not gpu:
        raise UsageError(f"--cuda-graphs needs a CUDA device (the device is {device})")
    batches = args.batch or ([1, 8, 32, 128, 256] if gpu else [1, 8])
    try:
        dtypes = [dtype_name(d) for d in (args.dtype or ("fp16" if gpu else "fp32")).split(",")]
    except ValueError as e:
        raise UsageError(str(e)) from None
    levels = args.level.split(",")
    if set(levels) - {"model", "op"}:
        raise UsageError(f"--level {args.level}: expected a comma list of model, op")
    for model in args.model.split(","):
        why = model_problem(model)
        if why:
            raise UsageError(why)
    runs = args.runs or (20 if gpu else 5)
    env = environment(device)
    print(f"bench on {env['device']} | torch {env['torch']} | triton {env['triton']} | CUDA {env['cuda']} | "
          f"git {env['git_sha']}", flush=True)
    if gpu:
        torch.backends.cudnn.benchmark = True  # cuDNN-based providers at their strongest (recorded per row)
    peaks = measure_peaks(device) if gpu else None
    if peaks:
        print(f"  measured peaks: {peaks['peak_gbps']:.0f} GB/s copy, {peaks['peak_tflops']:.0f} TFLOP/s fp16 matmul")
        env = {**env, **{k: round(v, 1) for k, v in peaks.items()}}
    rows: list[Row] = []
    for model in args.model.split(","):
        for dtype in dtypes:
            for batch in batches:
                if "model" in levels:
                    # a timm model's own eager forward is "timm", a torchvision model's "torchvision"
                    other = ("torchvision", "torchvision_cl") if model.startswith(TIMM_PREFIX) else ("timm", "timm_cl")
                    provs = ([p for p in args.providers.split(",") if p in MODEL_PROVIDERS] if args.providers else
                             [p for p in MODEL_PROVIDERS if p != "compile_max" or gpu])
                    provs = [p for p in provs if p not in other]
                    print(f"[model] {model} batch {batch} {dtype} graphs={args.cuda_graphs}", flush=True)
                    rows += run_model_bench(model, batch, dtype, device, provs, runs=runs,
                                            image_size=args.image_size, cuda_graphs=args.cuda_graphs,
                                            peaks=peaks, env=env)
                    _write_so_far(rows, args.out)
                if "op" in levels:
                    # the baselines always run: the ratios are relative to cuDNN/oneDNN's conv alone
                    asked = args.providers.split(",") if args.providers else list(OP_PROVIDERS)
                    provs = ["conv_alone", "conv_bn_relu"] + [
                        p for p in asked if p not in ("conv_alone", "conv_bn_relu")
                        and (p in OP_PROVIDERS or ":" in p or p == "triton")]  # model-level names skipped
                    print(f"[op] {model} batch {batch} {dtype}", flush=True)
                    rows += run_op_bench(model, batch, dtype, device, provs, runs=runs,
                                         image_size=args.image_size, env=env,
                                         copy_gbps=peaks["peak_gbps"] if peaks else None)
                    _write_so_far(rows, args.out)
    print()
    print_table(rows)
    print_bound_summary(rows)
    if args.out:
        for p in write_results(rows, args.out):
            print(f"wrote {p}")
    if args.plot:
        if plot(rows, args.plot):
            print(f"wrote {args.plot}")
    return 0

