"""Where a CPU forward's time goes: the conv kernels themselves, against everything around them.

Each runtime runs alone, forwards back to back (so no other runtime's thread pool is spinning), and
the forward is split with each runtime's own instrumentation:

- the converted model: wall time, and the execution time oneDNN itself reports for every primitive
  it ran (its verbose log, ``exec`` lines: the kernels, nothing of torch around them). What is left
  is torch's cost per oneDNN call (memory descriptors, attributes, the primitive-cache lookup,
  allocation), the ops that are not convs (max-pool, head, ReLU and measuring passes) and Python.
  torch's cost per call is also timed on its own: a 1x1 conv on a 16x2x2 input through the same op.
- ONNX Runtime (when installed): wall time, and its profiler's per-node kernel times.
- torch.compile with freezing (``--compile``): wall time (it runs the same oneDNN primitives).

    python benchmarks/cpu_gap.py --batch 1 [--model resnet50] [--runs 31] [--compile] [--out gap.json]

The kernels' share says which lever is left: if oneDNN's kernels alone take as long as another
runtime's whole forward, no change around them can get ahead of it (benchmarks/NOTES.md).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import subprocess
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from typing import Optional

import torch

from fused_resnet.swap import convert
from fused_resnet.verify import build_reference_model


def _time(fn, x, runs: int, warmup: int = 5) -> dict:
    """Median and quartiles (ms) of ``runs`` back-to-back calls, after ``warmup`` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter()
            fn(x)
            ts.append((time.perf_counter() - t) * 1e3)
    q = statistics.quantiles(ts, n=4)
    return {"median_ms": statistics.median(ts), "q1_ms": q[0], "q3_ms": q[2], "runs": runs}


@contextlib.contextmanager
def _stdout_to(path: str):
    """C-level stdout (where oneDNN's verbose log goes) into ``path`` for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def onednn_log(fn, x, forwards: int) -> list:
    """oneDNN's ``exec`` lines (split on commas) for ``forwards`` calls of fn(x)."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "verbose.log")
        with torch.inference_mode():
            fn(x)  # primitives created (and logged as such) before the logged forwards
            with _stdout_to(log), torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(forwards):
                    fn(x)
        lines = [line.rstrip().split(",") for line in open(log)]
    lines = [f for f in lines if len(f) > 6 and f[0] == "onednn_verbose" and f[3] == "exec"]
    if not lines:
        raise RuntimeError("oneDNN's verbose log was empty: is this torch built with oneDNN (mkldnn)?")
    return lines


def onednn_exec(fn, x, forwards: int, lines: Optional[list] = None) -> dict:
    """Per forward: oneDNN's own execution time per primitive kind (ms) and its number of calls."""
    ms, calls = defaultdict(float), defaultdict(int)
    for f in lines if lines is not None else onednn_log(fn, x, forwards):
        ms[f[5]] += float(f[-1]) / forwards
        calls[f[5]] += 1
    return {kind: {"ms": ms[kind], "calls": calls[kind] // forwards} for kind in ms}


_PROBLEM = re.compile(r"mb(\d+)_ic(\d+)oc(\d+)_ih(\d+)oh(\d+)kh(\d+)")


def conv_class(ic: int, oc: int, k: int, ih: int, oh: int) -> str:
    """A conv's class as the tables print it: kernel, stride, channels, input size."""
    return f"{k}x{k}/{max(1, round(ih / oh))} {ic}->{oc} @{ih}"


def onednn_conv_classes(lines: list, forwards: int) -> dict:
    """Per conv class: [number per forward, oneDNN's exec ms per forward (median over forwards)]."""
    per_forward = defaultdict(list)
    convs = [f for f in lines if f[5] == "convolution"]
    n = len(convs) // forwards
    for i, f in enumerate(convs[:n * forwards]):
        m = _PROBLEM.search(",".join(f))
        mb, ic, oc, ih, oh, k = map(int, m.groups())
        per_forward[(i % n, conv_class(ic, oc, k, ih, oh))].append(float(f[-1]))
    out = {}
    for (_, cls), ts in per_forward.items():
        c = out.setdefault(cls, [0, 0.0])
        c[0] += 1
        c[1] += statistics.median(ts)
    return out


def per_call_cost_us(runs: int = 20000) -> float:
    """Wall time of one call of torch's fused oneDNN conv op on a tiny problem (1x1, 16 -> 16
    channels, 2x2): almost all of it is torch's cost around the kernel, paid by every call."""
    cl = torch.channels_last
    x = torch.randn(1, 16, 2, 2).contiguous(memory_format=cl)
    w = torch.randn(16, 16, 1, 1).contiguous(memory_format=cl)
    b = torch.randn(16)
    wp = torch.ops.mkldnn._reorder_convolution_weight(w, [0, 0], [1, 1], [1, 1], 1, list(x.shape))
    op = torch.ops.mkldnn._convolution_pointwise
    args = (x, wp, b, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
    with torch.inference_mode():
        for _ in range(500):
            op(*args)
        t = time.perf_counter()
        for _ in range(runs):
            op(*args)
        return (time.perf_counter() - t) / runs * 1e6


def ort_profile(path: str, x: torch.Tensor, threads: int, forwards: int) -> dict:
    """ONNX Runtime's kernel time per op type (ms per forward), and per conv class [number, ms], from
    its own profiler (a conv node's time includes the residual sum and ReLU it fused)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(path), "ort_profile")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.contiguous().numpy()}
    for _ in range(3):
        sess.run(None, feed)
    for _ in range(forwards):
        sess.run(None, feed)
    prof = sess.end_profiling()
    events = [e for e in json.load(open(prof)) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_node = defaultdict(list)
    for e in events:
        per_node[e["name"]].append(e)
    ms, classes = defaultdict(float), {}
    for rec in per_node.values():
        tail = rec[-forwards:]  # the profiled forwards after the warm-up ones
        t = statistics.median([e["dur"] / 1e3 for e in tail])
        args = tail[0]["args"]
        ms[args.get("op_name")] += t
        if args.get("op_name") == "Conv":
            (xs,), (ws,) = args["input_type_shape"][0].values(), args["input_type_shape"][1].values()
            (ys,) = args["output_type_shape"][0].values()
            c = classes.setdefault(conv_class(xs[1], ws[0], ws[2], xs[2], ys[2]), [0, 0.0])
            c[0] += 1
            c[1] += t
    return dict(ms), classes


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Each runtime runs alone with its forwards back to back. The split: oneDNN's conv "
                                       "kernels, torch's cost per oneDNN call, and the rest (other ops, Python) by "
                                       "difference; ONNX Runtime's kernel times from its profiler.")
    p.add_argument("--model", default="resnet50", help="torchvision name, or timm/<name> (default resnet50)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--runs", type=int, default=31, help="timed forwards per runtime (default 31)")
    p.add_argument("--logged", type=int, default=5,
                   help="forwards logged by oneDNN / ONNX Runtime's profiler, averaged (default 5)")
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile with freezing (slow to build)")
    p.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime even when it is installed")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    a = p.parse_args()
    for name in ("batch", "size", "logged"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.runs < 2:
        p.error("--runs must be at least 2 (the report gives quartiles)")
    if not torch.backends.mkldnn.is_available():
        p.error("this torch has no oneDNN (mkldnn): there is no oneDNN kernel time to split off")
    if torch.cuda.is_available():
        print("note: this measures the CPU path only", flush=True)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    ref = build_reference_model(a.model, seed=0).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    res = {"model": a.model, "batch": a.batch, "size": a.size, "threads": threads, "torch": torch.__version__,
           "git_sha": _git_sha(), "loadavg_before": os.getloadavg()}
    print(f"{a.model} batch {a.batch} {a.size}x{a.size} fp32, {threads} threads; each runtime alone, "
          f"{a.runs} forwards back to back", flush=True)

    fused = convert(copy.deepcopy(ref), cpu_graph=False)  # (the blocks' torch calls are what this splits)
    print("  fused_resnet: timing ...", flush=True)
    res["fused_ms"] = _time(fused, x, a.runs)
    print("  fused_resnet: oneDNN's verbose log ...", flush=True)
    lines = onednn_log(fused, x, a.logged)
    res["fused_onednn"] = onednn_exec(fused, x, a.logged, lines)
    res["fused_conv_classes"] = onednn_conv_classes(lines, a.logged)
    res["per_call_us"] = per_call_cost_us()
    del fused

    if not a.no_ort:
        try:
            import onnxruntime
        except ImportError:
            print("  onnxruntime: not installed, skipped", flush=True)
        else:
            from fused_resnet.bench.external import build_external, export_onnx

            print("  onnxruntime: export, timing, profile ...", flush=True)
            res["onnxruntime"] = onnxruntime.__version__
            ort_fn = build_external("onnxruntime", ref, x)
            res["ort_ms"] = _time(ort_fn, x, a.runs)
            del ort_fn
            with tempfile.TemporaryDirectory() as d:
                path = export_onnx(ref, x, os.path.join(d, "model.onnx"))
                res["ort_kernels"], res["ort_conv_classes"] = ort_profile(path, x, threads, a.logged)
    if a.compile:
        import torch._inductor.config as inductor_config

        print("  torch.compile + freezing: compiling ...", flush=True)
        inductor_config.freezing = True
        cl = torch.channels_last
        comp = torch.compile(copy.deepcopy(ref).to(memory_format=cl))
        xc = x.contiguous(memory_format=cl)
        with torch.no_grad():
            comp(xc)
        res["compile_ms"] = _time(comp, xc, a.runs)
        res["compile_onednn"] = onednn_exec(comp, xc, a.logged)
    res["loadavg_after"] = os.getloadavg()
    _report(res)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {a.out}")


def _report(r: dict) -> None:
    f = r["fused_ms"]["median_ms"]
    conv = r["fused_onednn"].get("convolution", {"ms": 0.0, "calls": 0})
    other_k = sum(v["ms"] for k, v in r["fused_onednn"].items() if k != "convolution")
    calls = sum(v["calls"] for v in r["fused_onednn"].values())
    per_call = calls * r["per_call_us"] / 1e3
    rest = f - conv["ms"] - other_k - per_call
    print(f"\nfused_resnet forward             {f:8.2f} ms  (IQR {r['fused_ms']['q1_ms']:.2f}-{r['fused_ms']['q3_ms']:.2f})")
    print(f"  oneDNN conv kernels            {conv['ms']:8.2f} ms  ({conv['calls']} calls; oneDNN's own exec times)")
    if other_k:
        print(f"  other oneDNN primitives        {other_k:8.2f} ms")
    print(f"  torch's cost per oneDNN call   {per_call:8.2f} ms  ({calls} x {r['per_call_us']:.1f} us, tiny conv timed)")
    print(f"  the rest (other ops, Python)   {rest:8.2f} ms  (by difference)")
    if "ort_ms" in r:
        o = r["ort_ms"]["median_ms"]
        ok = r["ort_kernels"]
        print(f"onnxruntime forward              {o:8.2f} ms  (IQR {r['ort_ms']['q1_ms']:.2f}-{r['ort_ms']['q3_ms']:.2f})")
        print(f"  Conv kernels (its profiler)    {ok.get('Conv', 0.0):8.2f} ms")
        print(f"  other kernels                  {sum(v for k, v in ok.items() if k != 'Conv'):8.2f} ms")
        print(f"fused vs onnxruntime             {o / f:8.3f}x   oneDNN conv kernels alone: {o / conv['ms']:.3f}x "
              f"of onnxruntime's whole forward")
    if "ort_conv_classes" in r:
        _class_table(r["fused_conv_classes"], r["ort_conv_classes"])
    if "compile_ms" in r:
        c = r["compile_ms"]["median_ms"]
        cc = r["compile_onednn"].get("convolution", {"ms": 0.0, "calls": 0})
        c_rest = c - sum(v["ms"] for v in r["compile_onednn"].values()) - \
            sum(v["calls"] for v in r["compile_onednn"].values()) * r["per_call_us"] / 1e3
        print(f"compile+freezing forward         {c:8.2f} ms  (IQR {r['compile_ms']['q1_ms']:.2f}-{r['compile_ms']['q3_ms']:.2f})")
        print(f"  oneDNN conv kernels            {cc['ms']:8.2f} ms  ({cc['calls']} calls)")
        print(f"  the rest, as above             {c_rest:8.2f} ms")
        print(f"fused vs compile+freezing        {c / f:8.3f}x")


def _class_table(ours: dict, ort: dict) -> None:
    """Kernel against kernel, per conv class: oneDNN's exec time against ONNX Runtime's node time."""
    print(f"\n{'conv class (kernel/stride)':28s} {'n':>3s} {'oneDNN ms':>10s} {'ORT ms':>8s} {'oneDNN/ORT':>10s}")
    tot = [0.0, 0.0]
    for cls, (n, t) in ours.items():
        o = ort.get(cls, [0, 0.0])[1]
        tot[0] += t
        tot[1] += o
        ratio = f"{t / o:10.2f}" if o else f"{'-':>10s}"
        print(f"{cls:28s} {n:3d} {t:10.3f} {o:8.3f} {ratio}")
    missing = sorted(set(ort) - set(ours))
    if missing:
        print(f"  (ONNX Runtime only: {', '.join(missing)})")
    print(f"{'all convs':28s} {'':3s} {tot[0]:10.3f} {tot[1]:8.3f} {tot[0] / tot[1] if tot[1] else float('nan'):10.2f}")


if __name__ == "__main__":
    main()
