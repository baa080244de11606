"""Where the time goes against ONNX Runtime, conv by conv (CPU).

The converted model (torch.profiler: each oneDNN conv and its ReLU pass) and ONNX Runtime on the
reference model exported to ONNX (its own profiler: per-node kernel times of its NCHWc convs with
fused bias/add/ReLU), forwards alternating round by round in one process; per conv the median over
the rounds. Convs are matched by (input channels, output channels, kernel, input height, residual)
and order of appearance (the two run a block's downsample and conv3 in different orders).

    python benchmarks/ort_per_conv.py --batch 8 --rounds 5 [--threads 1] [--out per_conv.json]

On a shared machine run it with --threads 1: one thread per runtime compares the kernels without
the thread-pool effects of oversubscription (see benchmarks/NOTES.md).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from collections import OrderedDict, defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from fused_resnet.bench.external import export_onnx
from fused_resnet.swap import convert
from fused_resnet.verify import build_reference_model


def _ours(prof) -> list:
    """[(key, conv ms, ReLU ms)] in call order."""
    out = []
    for e in prof.events():
        if e.name.startswith("mkldnn::_convolution_pointwise"):
            sh = e.input_shapes
            # in place into the residual: (residual, x, w, b, ...), else (x, w, b, ...)
            x, w, res = (sh[1], sh[2], True) if e.name.endswith("_") else (sh[0], sh[1], False)
            out.append([(x[1], w[0], w[2], x[2], res), e.cpu_time_total / 1e3, 0.0])
        elif e.name == "aten::relu_" and out:
            out[-1][2] += e.cpu_time_total / 1e3
    return out


def _ort_nodes(profile_file: str, rounds: int, settle: int) -> tuple:
    nodes = OrderedDict()
    for e in json.load(open(profile_file)):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e["args"]
            nodes.setdefault(e["name"], {"op": a.get("op_name"), "t": [], "in": a.get("input_type_shape")})["t"].append(e["dur"] / 1e3)
    convs, other = [], defaultdict(float)
    for v in nodes.values():
        t = statistics.median(v["t"][-rounds * (1 + settle)::1 + settle][-rounds:] if settle else v["t"][-rounds:])
        if v["op"] == "Conv":
            ins = [list(d.values())[0] for d in v["in"]]
            convs.append(((ins[0][1], ins[1][0], ins[1][2], ins[0][2], len(ins) > 3), t))
        else:
            other[v["op"]] += t
    return convs, dict(other)


def main() -> None:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--settle", type=int, default=1,
                   help="untimed calls of the same runtime before each profiled one (default 1: the other "
                        "runtime's spinning threads are not measured with it; 0: the old alternation)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    load = os.getloadavg()
    tv = build_reference_model(a.model, seed=0)
    x = torch.randn(a.batch, 3, 224, 224)
    tmp = tempfile.TemporaryDirectory()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = torch.get_num_threads(), 1
    so.enable_profiling, so.profile_file_prefix = True, os.path.join(tmp.name, "prof")
    sess = ort.InferenceSession(export_onnx(tv, x, os.path.join(tmp.name, "m.onnx")), so,
                                providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    fused = convert(copy.deepcopy(tv), cpu_graph=False)  # (the blocks' convs, one by one)
    runs, wall = [], {"ours_profiled": [], "onnxruntime_profiled": []}
    with torch.inference_mode():
        for _ in range(2):
            sess.run(None, feed)
            fused(x)
        for _ in range(a.rounds):
            for _ in range(a.settle):
                sess.run(None, feed)
            t = time.perf_counter()
            sess.run(None, feed)
            wall["onnxruntime_profiled"].append((time.perf_counter() - t) * 1e3)
            for _ in range(a.settle):
                fused(x)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                t = time.perf_counter()
                fused(x)
                wall["ours_profiled"].append((time.perf_counter() - t) * 1e3)
            top = defaultdict(float)
            for e in prof.events():
                if e.cpu_parent is None and not e.name.startswith("mkldnn::"):
                    top[e.name] += e.cpu_time_total / 1e3
            runs.append((_ours(prof), top))
    ort_convs, ort_other = _ort_nodes(sess.end_profiling(), a.rounds, a.settle)
    pool, used = defaultdict(list), defaultdict(int)
    for key, t in ort_convs:
        pool[key].append(t)
    rows = []
    for i, (key, _, _) in enumerate(runs[0][0]):
        j = used[key]
        used[key] += 1
        rows.append({"cin": key[0], "cout": key[1], "k": key[2], "h_in": key[3], "residual": key[4],
                     "ours_conv_ms": statistics.median(r[0][i][1] for r in runs),
                     "ours_relu_ms": statistics.median(r[0][i][2] for r in runs),
                     "ort_ms": pool[key][j] if j < len(pool[key]) else None})
    other = {k: statistics.median(r[1].get(k, 0.0) for r in runs) for k in runs[0][1]}
    result = {"model": a.model, "batch": a.batch, "threads": torch.get_num_threads(), "rounds": a.rounds, "settle": a.settle,
              "loadavg_before": load, "loadavg_after": os.getloadavg(), "torch": torch.__version__,
              "onnxruntime": ort.__version__, "wall_ms": wall, "rows": rows, "ort_other_ms": ort_other,
              "ours_top_level_ms": other}
    print(f"{a.model} batch {a.batch}, {torch.get_num_threads()} thread(s), {a.rounds} rounds, load {load}")
    print(f"{'conv':28s} {'n':>2s} {'ours ms':>8s} {'relu ms':>8s} {'ORT ms':>8s} {'ours/ORT':>8s}")
    agg = OrderedDict()
    for r in rows:
        s = agg.setdefault((r["k"], r["cin"], r["cout"], r["h_in"], r["residual"]), [0, 0.0, 0.0, 0.0])
        s[0] += 1
        s[1] += r["ours_conv_ms"]
        s[2] += r["ours_relu_ms"]
        s[3] += r["ort_ms"] or float("nan")
    for (k, cin, cout, h, res), (n, t, relu, o) in agg.items():
        print(f"{k}x{k} {cin}->{cout} @{h}{' +res' if res else '':5s}".ljust(28)
              + f" {n:2d} {t / n:8.1f} {relu / n:8.1f} {o / n:8.1f} {t / o:8.2f}")
    tot_o = sum(r["ort_ms"] or 0 for r in rows)
    tot_c = sum(r["ours_conv_ms"] for r in rows)
    print(f"convs: ours {tot_c:.1f} ms (+ ReLU passes {sum(r['ours_relu_ms'] for r in rows):.1f}), ORT {tot_o:.1f} ms, "
          f"ours/ORT {tot_c / tot_o:.3f}")
    print("ORT other nodes (ms):", {k: round(v, 1) for k, v in ort_other.items()})
    print("ours top-level ops (ms):", {k: round(v, 1) for k, v in other.items() if v > 0.2})
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
