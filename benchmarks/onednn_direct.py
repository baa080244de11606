#!/usr/bin/env python
"""How fast a ResNet forward could be on this CPU with oneDNN called directly, against the converted
model and ONNX Runtime in the same interleaved rounds.

The converted model's CPU convs are oneDNN's, reached through torch ops, and every such call costs
~35 us of torch's own work besides the kernel (benchmarks/cpu_gap.py). This script removes that cost
and everything else around the kernels: the whole network is a list of oneDNN primitives, built once
and run from C++ (onednn_direct.cpp), every activation in a buffer kept across forwards, BN folded,
residual adds and ReLUs as post-ops, in NHWC or in oneDNN's blocked layout across the whole network.
The fc runs in torch. What it measures is a ceiling for any path that still uses oneDNN's kernels;
it is not a library path (its ReLU post-op is exact only where the finite bound holds; a forward
where it would not hold raises instead of returning).

Needs the `onednn-cpu-gomp` wheel (a libdnnl built with GNU OpenMP, which this script finds beside
the interpreter), a C++ compiler and ninja; the build takes about a minute the first time.
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import sys
import time

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fused_resnet.folding import fold_bn  # noqa: E402
from fused_resnet.testing import compare, reference_outputs  # noqa: E402
from fused_resnet.timing import paired_ratio, time_interleaved  # noqa: E402


def library_dir() -> str:
    """Where pip put the onednn-cpu-gomp wheel's libdnnl (its data files go under the prefix)."""
    for prefix in (sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")):
        if glob.glob(os.path.join(prefix, "lib", "libdnnl.so.3*")):
            return os.path.join(prefix, "lib")
    raise SystemExit("libdnnl.so.3 not found beside this Python: pip install onednn-cpu-gomp")


def build_extension(verbose: bool = False):
    from torch.utils.cpp_extension import load

    lib = library_dir()
    t0 = time.perf_counter()
    print("building the oneDNN-direct extension (about a minute the first time) ...", flush=True)
    mod = load(name="fused_resnet_onednn_direct", sources=[os.path.join(HERE, "onednn_direct.cpp")],
               extra_cflags=["-O2", "-fopenmp"], extra_ldflags=["-fopenmp", f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"],
               verbose=verbose)
    print(f"  built in {time.perf_counter() - t0:.1f} s; libdnnl {mod.library_version()}", flush=True)
    return mod


def _conv(net, src, dst, conv, bn, relu, sum_=False):
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise SystemExit(f"unsupported conv {conv} (groups 1, dilation 1, square kernels only)")
    w, b = fold_bn(conv.weight.detach(), conv.bias, bn)
    net.add_conv(src, dst, w.float().contiguous(), b.float().contiguous(), conv.stride[0], conv.padding[0], relu, sum_)


def _out(h, conv):
    k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    return (h + 2 * p - k) // s + 1


def build_net(ext, model: torchvision.models.ResNet, x: torch.Tensor, tag: int):
    """The torchvision ResNet ``model`` (eval) as a oneDNN-direct net for inputs shaped like x.
    NHWC nets take NHWC input; blocked ones NCHW (oneDNN's stem kernel for a blocked output reads
    plain NCHW, as ONNX Runtime's does), and an input in the other format is converted first."""
    fmt = torch.channels_last if tag == ext.TAG_NHWC else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    net = ext.Net()
    n, _, h, w = x.shape
    cur = net.add_buffer(3, h, w)
    h = _out(h, model.conv1)
    stem = net.add_buffer(64, h, h)
    _conv(net, cur, stem, model.conv1, model.bn1, True)
    h = (h + 2 - 3) // 2 + 1
    cur = net.add_buffer(64, h, h)
    net.add_pool(stem, cur, True, 3, 2, 1)
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in layer:
            convs = [(blk.conv1, blk.bn1), (blk.conv2, blk.bn2)] + ([(blk.conv3, blk.bn3)] if hasattr(blk, "conv3") else [])
            t, th = cur, h
            for conv, bn in convs[:-1]:
                th = _out(th, conv)
                nxt = net.add_buffer(conv.out_channels, th, th)
                _conv(net, t, nxt, conv, bn, True)
                t = nxt
            res = cur
            if blk.downsample is not None:
                dconv, dbn = blk.downsample[0], blk.downsample[1]
                res = net.add_buffer(dconv.out_channels, _out(h, dconv), _out(h, dconv))
                _conv(net, cur, res, dconv, dbn, False)
            _conv(net, t, res, convs[-1][0], convs[-1][1], True, sum_=True)  # written over the residual
            cur, h = res, th
    pooled = net.add_buffer(model.fc.in_features, 1, 1)
    net.add_pool(cur, pooled, False, h, 1, 0)
    net.build(n, list(x.stride()), tag)
    fc_w, fc_b = model.fc.weight.detach().t().contiguous(), model.fc.bias.detach()

    def forward(x):
        x = x.contiguous(memory_format=fmt)
        feats, unproven = net.forward(x, float(x.abs().amax()))  # the input's bound: one read pass
        if unproven:
            raise RuntimeError(f"{unproven} step(s) without a finite bound: the ReLU post-op may drop NaN")
        forward.measured = net.last_measured
        return torch.addmm(fc_b, feats, fc_w)
    return forward


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

    ext = build_extension()
    torch.manual_seed(0)
    model = getattr(torchvision.models, a.model)().eval()
    x = torch.randn(a.batch, 3, a.size, a.size).contiguous(memory_format=torch.channels_last)
    fused = fused_resnet.convert(copy.deepcopy(model)).eval()
    providers = {"fused_resnet": fused}
    for label, tag in (("onednn_nhwc", ext.TAG_NHWC), ("onednn_blocked16", ext.TAG_NCHW16C)):
        providers[label] = build_net(ext, model, x, tag)
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
    if "onnxruntime" in names:
        ort = times[names.index("onnxruntime")]
        for n in ("fused_resnet", "onednn_nhwc", "onednn_blocked16"):
            r, iqr = paired_ratio(ort, times[names.index(n)])
            rows[n]["speedup_over_onnxruntime"] = r
            print(f"  {n} vs onnxruntime: {r:5.3f}x (paired, IQR {iqr:.3f})")
    if "compile_freezing" in names:
        comp = times[names.index("compile_freezing")]
        for n in ("fused_resnet", "onednn_nhwc", "onednn_blocked16"):
            r, iqr = paired_ratio(comp, times[names.index(n)])
            rows[n]["speedup_over_compile_freezing"] = r
            print(f"  {n} vs compile+freezing: {r:5.3f}x (paired, IQR {iqr:.3f})")
    if a.out:
        meta = {"model": a.model, "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
                "torch": torch.__version__, "onednn_direct": ext.library_version(),
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
