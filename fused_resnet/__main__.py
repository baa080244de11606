"""Command line: python -m fused_resnet {info,verify,bench,demo,tune} --help"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys

import torch

from ._cli import Parser, UsageError, check_backend_for_device, check_environment, device_arg, existing_file, fail
from ._cli import positive_int
from ._selector import BackendUnavailableError


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype_arg(text: str) -> str:
    """argparse type: fp32/fp16/bf16 or torch's names (float32, float16, half, bfloat16)."""
    from .verify import dtype_name

    try:
        return dtype_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_info(args) -> int:
    import torchvision

    from . import __version__, _selector

    print(f"fused_resnet {__version__}")
    print(f"python       {platform.python_version()}  ({platform.machine()})")
    print(f"torch        {torch.__version__}  (CUDA build {torch.version.cuda})")
    print(f"torchvision  {torchvision.__version__}")
    try:
        import triton

        print(f"triton       {triton.__version__}")
    except ImportError:
        print("triton       not installed")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        print(f"GPU          {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]})")
    else:
        print("GPU          none visible to torch")
    print(f"requested    {_selector.requested_backend()}  (FUSED_RESNET_BACKEND / use_backend)")
    print("backends:")
    for name, (ok, why) in _selector.backend_status().items():
        print(f"  {name:7s} {'yes' if ok else 'no ':3s}  {why}")
    from . import _cpu_graph

    lib = _cpu_graph.library_dir()
    print(f"CPU graph    {'libdnnl in ' + lib + ' (optimize() builds the extension on its first CPU call)' if lib else 'no: onednn-cpu-gomp is not installed (pip install fused_resnet[cpu])'}")
    if lib:  # (torch's capability names the vector ISA its kernels use; AVX2 there implies FMA)
        cap = torch.backends.cpu.get_cpu_capability()
        wino = platform.machine() in ("x86_64", "AMD64") and cap.startswith(("AVX2", "AVX512"))
        print(f"  Winograd   {'yes' if wino else 'no'}: 3x3 stride-1 convs as F(2x2, 3x3), timed against oneDNN's kernel "
              f"per conv shape (x86-64 with AVX2; this CPU: {cap})")
    if torch.cuda.is_available():
        from . import _env, tuning
        from .triton import configs

        tag = _env.device_tag()
        print(f"tuned tables for {tag}: {len(configs.table(tag))} triton configs, "
              f"{len(tuning._table(tag))} tactic entries ({os.environ.get('FUSED_RESNET_TABLE') or 'fused_resnet/tuned/'})")
    from . import _env

    print("environment variables (set ones marked *):")
    for name, what in _env.VARIABLES.items():
        print(f"  {'*' if name in os.environ else ' '} {name:26s} {what}")
    return 0


def cmd_verify(args) -> int:
    from .verify import CheckpointError, model_problem, verify_model

    why = model_problem(args.model)
    if why:
        raise UsageError(why)
    device = args.device or _default_device()
    check_backend_for_device(args.backend, device)
    print(f"verify {args.model}: batch {args.batch}, {args.dtype}, {device}, {args.image_size}x{args.image_size}"
          f"{', checkpoint ' + args.checkpoint if args.checkpoint else ', random weights + randomized BN stats'}",
          flush=True)
    try:
        r = verify_model(args.model, batch=args.batch, dtype=args.dtype, device=device, image_size=args.image_size,
                         checkpoint=args.checkpoint, backend=args.backend, channels_last=args.channels_last)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    eager = "timm" if args.model.startswith("timm/") else "torchvision"
    if r.input_scale != 1.0:
        print(f"  input scaled by 2^{math.log2(r.input_scale):.0f}: the float64 reference's activations at unit "
              f"scale exceed {args.dtype}'s range")
    print("  convs by backend: " + ", ".join(f"{n} {b}" for b, n in sorted(r.backends.items()))
          + f"; {r.fused} of {sum(r.backends.values())} fused")
    if r.fused == 0:  # then the outputs are the model's own: comparing them verifies nothing
        reasons = "; ".join(r.fallback_reasons or []) or "no conv ran"
        print(f"NOT VERIFIED: no conv of {args.model} ran fused ({reasons})")
        raise UsageError(f"nothing to verify: no conv of {args.model} ran through fused_resnet")
    print(f"  max abs err: fused {r.max_abs_err:.3e}, {eager} {r.eager_max_abs_err:.3e} (vs float64)")
    print(f"  max rel err: {r.comparison}")
    print("PASS" if r.ok else "FAIL")
    return 0 if r.ok else 1


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def cmd_demo(args) -> int:
    from .bench import run_model_bench, print_table

    device = args.device or _default_device()
    check_backend_for_device(args.backend, device)
    on_gpu = device.startswith("cuda")
    args.model, args.checkpoint, args.channels_last = "resnet50", None, False
    args.batch = args.batch or (32 if on_gpu else 8)
    args.dtype = args.dtype or ("fp16" if on_gpu else "fp32")
    args.image_size = 224
    args.device = device
    rc = cmd_verify(argparse.Namespace(**{**vars(args), "batch": 2}))
    if rc:
        return rc
    print(f"\ntiming resnet50, batch {args.batch}, {args.dtype}, {device} (median of interleaved runs)", flush=True)
    providers = ["torchvision", "torchvision_cl", "fused_resnet"]
    rows = run_model_bench("resnet50", args.batch, args.dtype, device, providers, runs=args.runs, progress=True)
    print_table(rows)
    return 0


def cmd_tune(args) -> int:
    from .tuner import main as tune_main

    return tune_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m fused_resnet",
                                description="Fused conv+BN(+residual)+ReLU ResNet blocks for PyTorch inference.")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("info", help="versions, GPU, and which backends are usable here (and why not)",
                   description="Print versions, the GPU, and which backends can run here, with the reason if not.")

    def common(sp):
        sp.add_argument("--device", default=None, type=device_arg,
                        help="cpu, cuda or cuda:N (default: cuda if available)")
        sp.add_argument("--backend", default=None, choices=["auto", "eager", "triton", "cuda"],
                        help="force a backend (default: FUSED_RESNET_BACKEND or auto)")

    v = sub.add_parser("verify", help="compare a converted torchvision or timm model against its own forward",
                       description="Build a torchvision or timm model (random weights with realistic randomized BN "
                                   "statistics, or --checkpoint), convert a copy, and compare both against a "
                                   "float64 reference. PASS if the fused error is at most 2x the model's own "
                                   "eager error plus a small floor. Exit code 1 on FAIL.")
    v.add_argument("--model", default="resnet50",
                   help="torchvision builder name (default resnet50), or timm/NAME: everything after timm/ goes to "
                        "timm.create_model(NAME, pretrained=False), e.g. timm/resnet50 or timm/resnet50.a1_in1k")
    v.add_argument("--batch", type=positive_int, default=2)
    v.add_argument("--dtype", default="fp32", type=_dtype_arg,
                   help="fp32, fp16, bf16 (or float32, float16, half, bfloat16; default fp32)")
    v.add_argument("--image-size", type=positive_int, default=224)
    v.add_argument("--checkpoint", default=None, type=existing_file,
                   help="path to a state_dict (.pth) for --model (or a dict with a 'state_dict' entry)")
    v.add_argument("--channels-last", action="store_true", help="feed a channels_last input")
    common(v)

    d = sub.add_parser("demo", help="verify resnet50, then time torchvision vs fused_resnet",
                       description="The main job: verify resnet50 (PASS/FAIL), then a short side-by-side timing "
                                   "of torchvision (NCHW and channels_last) and fused_resnet on this device.")
    d.add_argument("--batch", type=positive_int, default=None, help="timing batch (default 8 on CPU, 32 on GPU)")
    d.add_argument("--dtype", default=None, type=_dtype_arg,
                   help="fp32, fp16, bf16 (or torch's names); default fp32 on CPU, fp16 on GPU")
    d.add_argument("--runs", type=positive_int, default=5, help="timed runs per provider")
    common(d)

    from .bench import add_arguments

    b = sub.add_parser("bench", help="side-by-side benchmarks against the baselines (JSON/CSV/PNG)",
                       description="Time fused_resnet against torchvision eager (NCHW, channels_last), "
                                   "torch.compile (inductor freezing, default and max-autotune) and TorchScript "
                                   "freeze+optimize_for_inference, on CPU also ONNX Runtime and OpenVINO (the "
                                   "model exported to ONNX; optional packages, skipped with the reason when "
                                   "missing), interleaved on the same inputs, with "
                                   "roofline columns. Provider 'optimized' is fused_resnet.optimize(): CUDA graphs "
                                   "on a GPU, on the CPU its oneDNN CPU graph where onednn-cpu-gomp is installed "
                                   "(the converted model otherwise). See benchmarks/README.md.")
    add_arguments(b)

    from . import tuner

    t = sub.add_parser("tune", help="measure every candidate tactic per conv shape; write this GPU's tactic table",
                       description=tuner.DESCRIPTION + "\nExample: python -m fused_resnet tune --model resnet50 "
                       "--batch 1,32,256 --dtype fp16 --budget-s 300. Exit 2 without a CUDA GPU. Table format: "
                       "fused_resnet/tuning.py and benchmarks/README.md.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    tuner.add_arguments(t)
    return p


def main(argv=None) -> int:
    """Exit status: 0 success/PASS, 1 a numerical FAIL only, 2 a bad argument, file or environment
    value (one line on stderr)."""
    args = build_parser().parse_args(argv)
    prog = f"python -m fused_resnet {args.cmd}"
    try:
        check_environment()
        return {"info": cmd_info, "verify": cmd_verify, "bench": cmd_bench, "demo": cmd_demo,
                "tune": cmd_tune}[args.cmd](args)
    except UsageError as e:
        return fail(prog, str(e))
    except BackendUnavailableError as e:  # an explicitly requested backend cannot run here
        return fail(prog, str(e).splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
