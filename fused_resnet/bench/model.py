"""Model-level benchmark: whole models per provider (torchvision eager, torch.compile, TorchScript,
fused_resnet per backend, optimize(); on CPU also ONNX Runtime and OpenVINO), timed interleaved on
the same inputs."""
from __future__ import annotations

import copy
import os
import time
from typing import Callable, Optional

import torch

from ..optimize import capture
from ..profiling import environment
from ..swap import convert
from ..timing import paired_ratio, time_blocks, time_interleaved
from ..verify import DTYPES, build_reference_model, dtype_name
from .external import EXTERNAL_PROVIDERS, build_external, check_against, external_available, nan_placement_matches
from .report import Row, _paired
from .roofline import roofline

# "timm"/"timm_cl" are the eager baselines' names for timm models (--model timm/NAME): the model's own
# forward, as "torchvision"/"torchvision_cl" are for torchvision models.
MODEL_PROVIDERS = ("torchvision", "torchvision_cl", "timm", "timm_cl", "compile", "compile_max", "torchscript",
                   "fused_eager", "fused_triton", "fused_cuda", "fused_resnet", "fused_compile", "optimized",
                   *EXTERNAL_PROVIDERS)
_EAGER = {"torchvision": "torchvision", "torchvision_cl": "torchvision_cl", "timm": "torchvision",
          "timm_cl": "torchvision_cl"}


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
        # fused_resnet.optimize: owns the model and replays its own CUDA graphs (on CPU: the oneDNN
        # CPU graph where it is installed, else the converted model); its rows count as "graphs" on a GPU.
        from ..optimize import optimize

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
    elif name in EXTERNAL_PROVIDERS:
        # the reference model (BN unfolded) exported to ONNX: each runtime folds and fuses on its own
        fn, x = build_external(name, tv_model, example), example
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
    from .. import _selector

    if name in EXTERNAL_PROVIDERS:
        return external_available(name, device)
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
    g, out = capture(fn, x, mode=torch.no_grad)

    keep = [fn] if keep_model else []  # keep_model=False only to reproduce that fault (graph_check.py)

    def replay(g=g, x=x, out=out, keep=keep):
        g.replay()
        return out

    return replay



def run_model_bench(model: str, batch: int, dtype: str, device: str, providers, *, runs: int = 10,
                    image_size: int = 224, cuda_graphs: bool = False, peaks: Optional[dict] = None,
                    progress: bool = True, env: Optional[dict] = None, protocol: str = "interleaved",
                    rounds: int = 3) -> list[Row]:
    """One model at one batch and dtype, every provider timed (``protocol``: "interleaved" rounds,
    or "blocks" of consecutive calls per provider in ``rounds`` rounds, ``timing.time_blocks``); a Row
    per provider."""
    dt = DTYPES[dtype_name(dtype)]
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # cuDNN-based providers at their strongest (recorded per row)
    tv = build_reference_model(model, seed=0).to(device=device, dtype=dt)
    inputs = [torch.randn(batch, 3, image_size, image_size, device=device, dtype=dt) for _ in range(3)]
    env = env or environment(device)
    graphs = cuda_graphs and device.startswith("cuda")
    fns, names, builds, timings, nan_exact = [], [], [], [], {}
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
        if name in EXTERNAL_PROVIDERS:  # the bench's correctness gate for runtimes outside torch
            try:
                check_against(name, fn, tv, inputs[0], tol=1e-4 if dt == torch.float32 else 2e-2)
            except AssertionError as e:
                print(f" failed: {e}", flush=True)
                continue
        xs = [x.contiguous(memory_format=torch.channels_last) if x0.is_contiguous(memory_format=torch.channels_last)
              and not x0.is_contiguous() else x for x in inputs]
        if progress:
            print(f" {build_s:.1f}s", flush=True)
        if not device.startswith("cuda"):
            # NaN/+-Inf placement against the reference (one extra forward; CPU: cheap, no graphs)
            to_cl = (lambda t: t.contiguous(memory_format=torch.channels_last)) if xs[0] is not inputs[0] else None
            try:
                nan_exact[name] = "yes" if nan_placement_matches(fn, tv, inputs[0], to_cl) else "no"
            except Exception as e:  # a runtime that refuses non-finite input: reported, still timed
                nan_exact[name] = f"error: {type(e).__name__}"
            if progress and nan_exact[name] == "no":
                print(f"  {name}: NaN/Inf not placed as the reference places them", flush=True)
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
    if not graphs and protocol == "blocks":
        if progress:
            print(f"  timing {len(fns)} providers x {runs} runs (in blocks: {rounds} rounds, each provider's calls "
                  f"back to back after 2 untimed ones) ...", flush=True)
        with torch.inference_mode():
            timings = time_blocks(fns, torch.device(device), warmup=2, runs=runs, rounds=rounds, settle=2)
    elif not graphs:
        # CPU: one untimed call before each timed one, so no provider is timed while the previous
        # one's thread pool still spins (fused_resnet/timing.py)
        settle = 1 if not device.startswith("cuda") and len(fns) > 1 else 0
        if progress:
            print(f"  timing {len(fns)} providers x {runs} runs (interleaved"
                  f"{', each after one untimed call' if settle else ''}) ...", flush=True)
        with torch.inference_mode():
            timings = time_interleaved(fns, torch.device(device), warmup=2, runs=runs, settle=settle)
    elem = torch.finfo(dt).bits // 8
    roof = roofline(model, batch, elem, image_size)
    base = timings[0].median_s
    fused = timings[names.index("fused_resnet")] if "fused_resnet" in names and not graphs else None
    rows = []
    for name, t, b in zip(names, timings, builds):
        speedup = paired_ratio(t, fused) if fused is not None else (0.0, 0.0)
        tflops = roof["gflop"] / t.median_s / 1e3
        gbps = roof["mb_fused"] / t.median_s / 1e3
        rows.append(Row(name, model, "model", f"3x{image_size}x{image_size}", batch, dtype,
                        "channels_last" if name not in ("torchvision", "timm", "fused_resnet", "fused_eager",
                                                        "fused_triton", "fused_cuda", "fused_compile",
                                                        "optimized", *EXTERNAL_PROVIDERS) else "nchw-in",
                        cuda_graphs or (name == "optimized" and device.startswith("cuda")), t.median_s * 1e3,
                        t.spread_s * 1e3, t.runs, batch / t.median_s,
                        base / t.median_s, names[0], b, roof["gflop"], tflops, gbps,
                        tflops / peaks["peak_tflops"] if peaks else 0.0,
                        gbps / peaks["peak_gbps"] if peaks else 0.0, torch.backends.cudnn.benchmark, env=env,
                        nan_exact=nan_exact.get(name, ""), **_paired(timings[0], t, graphs),
                        fused_speedup_paired=speedup[0], fused_speedup_paired_iqr=speedup[1]))
    return rows

