"""``python -m fused_resnet bench``: arguments, provider names, the run loop writing results as it goes."""
from __future__ import annotations

import torch

from .. import _cli
from ..profiling import environment
from ..verify import TIMM_PREFIX, dtype_name, model_problem
from .model import MODEL_PROVIDERS, run_model_bench
from .op import OP_PROVIDERS, print_bound_summary, run_op_bench
from .report import Row, plot, print_fused_speedups, print_table, write_results
from .roofline import measure_peaks


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
    p.add_argument("--protocol", choices=("interleaved", "blocks"), default=None,
                   help="model level: 'interleaved' times the providers round-robin (default on GPUs); "
                        "'blocks' times each provider's calls back to back in 3 rotated rounds (default on "
                        "CPUs: there a runtime timed right after another pays for the other's spinning "
                        "threads and cache use, unevenly; see benchmarks/README.md)")
    p.add_argument("--rounds", type=_cli.positive_int, default=3,
                   help="'blocks' protocol: rounds (default 3); each provider's runs are split over them. "
                        "On a noisy machine more rounds pair the samples closer in time (e.g. --runs 40 "
                        "--rounds 10)")
    p.add_argument("--out", default=None, help="write results to OUT.json and OUT.csv")
    p.add_argument("--plot", default=None, help="write a PNG (throughput vs batch, per-shape bars)")


def _tactic_names() -> tuple:
    from .. import tactics

    return tactics.all_names()


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
    from .._cli import UsageError

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
    protocol = args.protocol or ("interleaved" if gpu else "blocks")
    env = {**environment(device), "protocol": protocol}
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
                                            peaks=peaks, env=env, protocol=protocol, rounds=args.rounds)
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
    print_fused_speedups(rows)
    print_bound_summary(rows)
    if args.out:
        for p in write_results(rows, args.out):
            print(f"wrote {p}")
    if args.plot:
        if plot(rows, args.plot):
            print(f"wrote {args.plot}")
    return 0


