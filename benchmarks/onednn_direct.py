#!/usr/bin/env python
"""fused_resnet's CPU graph (oneDNN called from C++ for the whole network) against the converted
model, ONNX Runtime and (--compile) torch.compile with freezing, in the same interleaved rounds.

The converted model's CPU convs are oneDNN's, reached through torch ops, and every such call costs
~35 us of torch's own work besides the kernel (benchmarks/cpu_gap.py). The CPU graph
(fused_resnet/_cpu_graph.py, csrc/cpu_graph.cpp) removes that cost and everything else around the
kernels: the network is a list of oneDNN primitives built once per input shape, every activation in
a buffer kept with the net, BN folded, residual adds and ReLUs as post-ops. Rows: `optimized` is the
library's path (fused_resnet.optimize: the NHWC net behind its stamp, hook and mode checks);
`onednn_nhwc` and `onednn_blocked` are the bare nets in NHWC and in oneDNN's blocked layout
(nChw16c) across the whole network, to see what the checks cost and what the layout would give.

Needs the `onednn-cpu-gomp` wheel, a C++ compiler and ninja (the extension builds on first use).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fused_resnet import _cpu_graph  # noqa: E402
from fused_resnet.testing import compare, reference_outputs  # noqa: E402
from fused_resnet.timing import paired_ratio, time_interleaved  # noqa: E402


def build_net(model, x, blocked: bool):
    """fused_resnet's CPU graph for ``model`` at x's signature, as a callable: every stage NHWC or
    every stage in oneDNN's blocked layout (nChw16c on AVX-512, nChw8c on AVX2)."""
    net, why = _cpu_graph.build(model, x, (_cpu_graph.BLOCKED if blocked else _cpu_graph.NHWC,) * 4)
    if net is None:
        raise SystemExit(f"CPU graph unavailable: {why}")

    def forward(x):
        out = net.run(x)
        if out is None:
            raise RuntimeError("the CPU graph could not prove its ReLU post-op exact for this input")
        forward.measured = net.measured
        return out
    return forward


def _git_sha() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50", help="torchvision ResNet name (default resnet50)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--runs", type=int, default=25, help="interleaved rounds (default 25)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--no-ort", action="store_true", help="leave ONNX Runtime out")
    p.add_argument("--compile", action="store_true", help="add torch.compile with freezing (a minute or two to build)")
    p.add_argument("--out", help="write the numbers as JSON here")
    a = p.parse_args(argv)
    for name in ("batch", "size", "runs"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.threads < 0:
        p.error("--threads must be >= 0")
    if not a.model.startswith("resn") or not hasattr(torchvision.models, a.model):
        p.error(f"--model: a torchvision ResNet name (resnet18 ... resnet152), got {a.model!r}")
    if a.threads:
        torch.set_num_threads(a.threads)
    import fused_resnet
    from fused_resnet.bench.external import build_external, external_available

    ext, why = _cpu_graph.extension()
    if ext is None:
        raise SystemExit(why)
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)().eval()
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    fused = fused_resnet.convert(copy.deepcopy(model), cpu_graph=False).eval()  # (the fused blocks)
    providers = {"fused_resnet": fused}
    for label, blocked in (("onednn_nhwc", False), ("onednn_blocked", True)):
        providers[label] = build_net(model, x, blocked)
    optimized = fused_resnet.optimize(copy.deepcopy(model), x)
    if optimized.cpu_graph_runs != 1:
        raise SystemExit(f"optimize() did not run the CPU graph: {optimized.cpu_graph_status}")
    providers["optimized"] = optimized  # the library's path: the NHWC net behind optimize()'s checks
    skip = external_available("onnxruntime", "cpu") if not a.no_ort else "--no-ort"
    if skip is None:
        providers["onnxruntime"] = build_external("onnxruntime", model, x)
    else:
        print(f"  onnxruntime skipped: {skip}")
    if a.compile:
        from fused_resnet.bench.model import build_provider

        print("compiling torch.compile with freezing ...", flush=True)
        fn, x_cl, secs = build_provider("compile", model, x)
        providers["compile_freezing"] = lambda x, fn=fn: fn(x.contiguous(memory_format=torch.channels_last))
        print(f"  compiled in {secs:.0f} s", flush=True)
    errors = {}
    with torch.inference_mode():
        ref, eager = reference_outputs(model, x)
        for name, fn in providers.items():
            c = compare(fn(x), eager, ref)  # the library's rule: 2x eager's error plus a floor
            errors[name] = c.fused_err
            print(f"  {name:18s} max rel error vs float64 {c.fused_err:.2e} (bound {c.bound:.2e})", flush=True)
            if not c.ok:
                raise SystemExit(f"{name}: output differs from the reference: {c}")
            if hasattr(fn, "measured"):
                print(f"  {'':18s} {fn.measured} measuring pass(es) per forward (loose bounds)", flush=True)
        names = list(providers)
        print(f"timing {len(names)} providers, {a.runs} interleaved rounds ...", flush=True)
        times = time_interleaved([(lambda f=providers[n]: f(x)) for n in names], torch.device("cpu"),
                                 warmup=3, runs=a.runs, settle=1)
    base = times[names.index("fused_resnet")]
    print(f"\n{a.model} batch {a.batch} {a.size}x{a.size} fp32, {torch.get_num_threads()} threads")
    rows = {}
    for n, t in zip(names, times):
        r, iqr = paired_ratio(base, t)  # per-round fused_resnet time / its time: >1, it is faster
        rows[n] = {"median_ms": t.median_s * 1e3, "iqr_ms": t.spread_s * 1e3, "speedup_over_fused_resnet": r,
                   "ratio_iqr": iqr, "max_rel_error": errors[n],
                   "measuring_passes": getattr(providers[n], "measured", None)}
        print(f"  {n:18s} {t.median_s * 1e3:8.2f} ms  (IQR {t.spread_s * 1e3:5.2f})   {r:5.3f}x fused_resnet's speed")
    for baseline in ("onnxruntime", "compile_freezing"):  # ours against each baseline, paired per round
        if baseline not in names:
            continue
        for n in ("fused_resnet", "optimized", "onednn_nhwc", "onednn_blocked"):
            r, iqr = paired_ratio(times[names.index(baseline)], times[names.index(n)])
            rows[n][f"speedup_over_{baseline}"] = r
            print(f"  {n} vs {baseline}: {r:5.3f}x (paired, IQR {iqr:.3f})")
    if a.out:
        meta = {"model": a.model, "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "onednn_direct": ext.library_version(), "git_sha": _git_sha(),
                "machine": platform.processor() or platform.machine(), "rows": rows}
        try:
            import onnxruntime
            meta["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass
        with open(a.out, "w") as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
