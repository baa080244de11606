"""Op-level benchmark: each distinct conv of a model, fused_conv2d per backend, the tactic auto runs
and every candidate tactic vs the library conv alone vs conv + separate BN + ReLU (+ add)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..profiling import distinct_shapes, environment, op_inputs, rotating, tactic_call
from ..timing import time_interleaved
from ..verify import DTYPES, dtype_name
from .model import provider_available
from .report import Row, _paired
from .roofline import measure_copy_gbps

OP_PROVIDERS = ("conv_alone", "conv_bn_relu", "cudnn_fused", "fused_eager", "fused_triton", "fused_cuda",
                "fused_resnet", "tactics")  # "tactics": every candidate tactic, one provider each (named by it)



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
    from .. import _selector, tactics
    from ..ops import fused_conv2d

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

        table = {"conv_alone": rotating(inp, lambda x: F.conv2d(x, w, None, *conv_args)),
                 "conv_bn_relu": rotating(inp, conv_bn_relu)}
        tactic_of = {}
        if "cudnn_fused" in providers and gpu:
            try:
                with torch.inference_mode():
                    cudnn_fused(x)
                table["cudnn_fused"] = rotating(inp, cudnn_fused)
            except RuntimeError as e:  # a cuDNN build without the fused engines: report, go on
                print(f"    cudnn_fused: skipped ({str(e).splitlines()[0][:120]})", flush=True)
        from .._selector import BackendUnavailableError

        for p in providers:
            if p.startswith("fused_") and provider_available(p, device) is None:
                be = "auto" if p == "fused_resnet" else p[len("fused_"):]
                fn = rotating(inp, lambda x, be=be: fused_conv2d(
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
        asked_tactics = [t for t in (tactics.conv_tactics(x) if "tactics" in providers else ())] + \
                        [p for p in providers if ":" in p or p == tactics.TRITON]
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

