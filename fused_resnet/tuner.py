"""``python -m fused_resnet tune``: measure every candidate tactic on every conv shape of a model and
write this GPU's tactic table (format: fused_resnet/tuning.py).

For each distinct conv of the model (shape, stride, padding, dilation, groups, residual/ReLU
epilogue), at each batch and dtype: every tactic of the registry (fused_resnet.tactics) that can run
here is called once (a failure is recorded, not fatal), then all are timed interleaved with CUDA
events after warm-up (median and IQR of ``--runs`` samples of 10 back-to-back calls, inputs already
on the GPU, random data, torch.backends.cudnn.benchmark on for the cuDNN tactics). The pick follows
tuning.decide's noise rule. The table is rewritten after every shape, so a run cut short by
``--budget-s`` keeps what it measured.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import _cli

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet50", help="comma list of torchvision ResNet names (default resnet50)")
    p.add_argument("--batch", default=[1, 32, 256], type=_cli.positive_int_list,
                   help="comma list of batch sizes (default 1,32,256)")
    p.add_argument("--dtype", default="fp16", help="comma list of fp16,bf16,fp32 (default fp16)")
    p.add_argument("--image-size", type=_cli.positive_int, default=224)
    p.add_argument("--out", default=None,
                   help="table file to write (a folder: backend_<gpu>.json inside it); default "
                        "fused_resnet/tuned/backend_<gpu>.json. An existing table for the same GPU (either "
                        "format) is updated: shapes not measured now keep their entries")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new shapes after this many seconds")
    p.add_argument("--runs", type=_cli.positive_int, default=20, help="timed samples per tactic (each 10 back-to-back calls)")
    p.add_argument("--noise", type=float, default=None,
                   help="noise floor: a tactic must beat the default by more than this fraction (default 0.03) "
                        "and more than the measured IQR/median, else the default is kept")
    p.add_argument("--limit", type=_cli.positive_int, default=None, help="tune only the first N shapes (smoke tests)")
    p.add_argument("--tactics", default=None, help="comma list: time only these tactics (default: all that run)")
    p.add_argument("--triton-configs", action="store_true",
                   help="also autotune the Triton conv's tile config per shape (FUSED_RESNET_AUTOTUNE=1, "
                        "per shape) before timing it, and write triton_<gpu>.json beside the "
                        "table")


def _out_path(out, tag) -> str:
    from . import tuning

    if out is None:
        return tuning.default_path(tag)
    if os.path.isdir(out) or out.endswith(os.sep):
        return os.path.join(out, f"backend_{tag}.json")
    return out


def tune_shape(s, dt, tactics=None, runs: int = 20, noise_floor=None, progress: bool = True, device: str = "cuda"):
    """Time every runnable candidate tactic on one ConvShape; returns (key, tuning.Entry)."""
    from . import tactics as registry
    from . import tuning
    from .profiling import op_inputs, tactic_call
    from .timing import time_interleaved

    inp = op_inputs(s, dt, device)
    names, fns, failed = [], [], {}
    for t in tactics or registry.conv_tactics(inp.x):
        fn, why = tactic_call(t, inp)
        if fn is None:
            failed[t] = why
            if progress:
                print(f"    {t:34s} cannot run: {why}", flush=True)
            continue
        names.append(t)
        fns.append(fn)
    key = inp.key
    if not fns:
        raise RuntimeError(f"no tactic can run {key}: {failed}")
    with torch.inference_mode():
        ts = time_interleaved(fns, torch.device(device), warmup=3, runs=runs, inner=10 if device == "cuda" else 1)
    times = {t: x.median_s * 1e3 for t, x in zip(names, ts)}
    spreads = {t: x.spread_s * 1e3 for t, x in zip(names, ts)}
    default = inp.default_tactic
    entry = tuning.decide(times, spreads, default, tuning.NOISE_FLOOR if noise_floor is None else noise_floor, failed)
    if progress:
        for t in sorted(times, key=times.get):
            mark = " (default)" if t == default else ""
            print(f"    {t:34s} {times[t]:9.4f} ms ±{spreads[t]:.4f}{mark}", flush=True)
        if entry.kept_default:
            print(f"    -> keep default {entry.tactic}: fastest {entry.fastest} only "
                  f"{times[default] / times[entry.fastest] - 1:.1%} faster (< noise {entry.noise:.1%})", flush=True)
        else:
            margin = "" if entry.margin is None else f", {entry.margin:+.1%} over the runner-up"
            print(f"    -> pick {entry.tactic}{margin}", flush=True)
    return key, entry


def main(args) -> int:
    if not torch.cuda.is_available():
        print("python -m fused_resnet tune: needs a CUDA GPU (none is visible to torch here); tactic tables "
              "are per GPU and can only be measured on the GPU they are for.", file=sys.stderr)
        return 2
    from . import _env, tuning
    from .profiling import distinct_shapes, environment
    from .triton import configs
    from .verify import DTYPES

    torch.backends.cudnn.benchmark = True  # the cuDNN tactics at their strongest (recorded in the table)
    if args.triton_configs:
        os.environ["FUSED_RESNET_AUTOTUNE"] = "1"
    tag = _env.device_tag()
    path = _out_path(args.out, tag)
    entries = {}
    if os.path.exists(path) and tuning.read_meta(path).get("device") == torch.cuda.get_device_name():
        # Shapes not measured now keep their entries.
        entries = tuning.read_table(path)
    env = {**environment("cuda"), "cudnn_benchmark": True, "cudnn": torch.backends.cudnn.version()}
    command = "python -m fused_resnet tune" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items() if k != "cmd" and v not in (None, False))
    floor = tuning.NOISE_FLOOR if args.noise is None else args.noise
    tactics = args.tactics.split(",") if args.tactics else None
    work = [(m, dtype, b, s) for m in args.model.split(",") for dtype in args.dtype.split(",")
            for b in args.batch for s in distinct_shapes(m, b, args.image_size)]
    work = work[:args.limit] if args.limit is not None else work
    print(f"tune on {env['device']} | torch {env['torch']} | triton {env['triton']} | cuDNN {env['cudnn']} | "
          f"{len(work)} shapes -> {path}", flush=True)
    t0, done = time.time(), 0
    for i, (model, dtype, batch, s) in enumerate(work):
        if args.budget_s is not None and time.time() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: stopping after {done} of {len(work)} shapes", flush=True)
            break
        epi = ("+res " if s.residual else "") + ("relu" if s.relu else "no relu")
        print(f"[{i + 1}/{len(work)}] {model} b{batch} {dtype} {s.name}: {s.k}x{s.k} {s.cin}->{s.cout} s{s.stride} "
              f"p{s.padding} d{s.dilation} g{s.groups} on {s.h}x{s.w}, {epi}", flush=True)
        try:
            key, entry = tune_shape(s, DTYPES[dtype], tactics, args.runs, floor)
        except RuntimeError as e:  # no tactic ran this shape (all failed): reported, the others still tuned
            print(f"    skipped: {str(e).splitlines()[0][:300]}", flush=True)
            continue
        entries[key] = entry
        done += 1
        tuning.write_table(path, entries, device=env["device"], env=env, command=command, noise_floor=floor)
    if args.triton_configs:
        tpath = configs.save_table(tag, os.path.join(os.path.dirname(os.path.abspath(path)), f"triton_{tag}.json"))
        print(f"wrote {tpath} ({len(configs.table(tag))} Triton configs)")
    picks: dict[str, int] = {}
    for e in entries.values():
        picks[e.tactic] = picks.get(e.tactic, 0) + 1
    kept = sum(e.kept_default for e in entries.values())
    print(f"{'wrote' if done else 'unchanged:'} {path}: {done} shapes measured in {time.time() - t0:.0f} s, "
          f"{len(entries)} in the table; picks {picks}; default kept by the noise rule on {kept}")
    return 0
