"""CUDA-graph check of the `bench --cuda-graphs` scenario, step by step (GPU only).

    python benchmarks/graph_check.py [--batch 1] [--providers torchvision,fused_triton,...]

Builds each provider exactly as `python -m fused_resnet bench` does (resnet50, fp16), runs it eagerly,
captures it in a CUDA graph, replays it and compares with the eager output; after every new capture
it replays every earlier graph again (a graph that breaks only once another model is built or
captured shows up there), then replays all graphs round-robin as the benchmark's timing loop does.
Each step is printed before it runs and synchronized after, so a device fault names the provider
and the step. gpu_suite.sh reruns it under compute-sanitizer when it fails, which names the kernel.
Exit status: 0 all graphs match eager, 1 a mismatch, a CUDA error otherwise.

The experiment behind the fault (benchmarks/NOTES.md), one process per setting:
    --drop-models        the old harness: each captured model loses its last reference when the next
                         provider is built (the graph keeps only its static input/output); predicted
                         to fault at "replay every earlier graph again"
    (default)            every captured model kept alive beside its graph: predicted to pass
    --drop-models --no-empty-cache
                         models dropped, but torch.cuda.empty_cache() (which torch.cuda.graph() calls
                         on entry) made a no-op, so the freed memory stays mapped in the caching
                         allocator: predicted to pass (reads stale but mapped memory; outputs may differ)
"""
import argparse
import sys

import torch
import torchvision

from fused_resnet.bench.model import _graphed, build_provider, provider_available
from fused_resnet.testing import randomize_bn

DEFAULT = "torchvision,torchvision_cl,torchscript,fused_triton,fused_cuda,fused_resnet"


def step(msg):
    print(msg, flush=True)


def check(name, replay, expected):
    print(f"    {name}: replay ...", end=" ", flush=True)
    out = replay()
    torch.cuda.synchronize()
    diff = (out.float() - expected.float()).abs().max().item()
    ok = diff == 0.0 or diff <= 1e-2 * expected.float().abs().max().item()  # cuDNN may pick another algo
    step(f"{'matches' if ok else 'DIFFERS from'} eager (max |diff| {diff:.3g})")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--providers", default=DEFAULT)
    ap.add_argument("--rounds", type=int, default=5, help="round-robin replays of all graphs at the end")
    ap.add_argument("--build-first", action="store_true",
                    help="build and run every provider eagerly before the first capture")
    ap.add_argument("--drop-models", action="store_true",
                    help="let each captured model die when the next provider is built (the old harness)")
    ap.add_argument("--no-empty-cache", action="store_true",
                    help="make torch.cuda.empty_cache a no-op (freed blocks stay mapped)")
    args = ap.parse_args()
    if args.no_empty_cache:
        torch.cuda.empty_cache = lambda: None
    step(f"graph check: models {'dropped after capture' if args.drop_models else 'kept alive'}, "
         f"empty_cache {'disabled' if args.no_empty_cache else 'as torch does it'}")

    torch.manual_seed(0)
    tv = randomize_bn(torchvision.models.resnet50()).eval().cuda().half()
    example = torch.randn(args.batch, 3, 224, 224, device="cuda", dtype=torch.float16)
    built = []
    for name in args.providers.split(","):
        why = provider_available(name, "cuda")
        if why:
            step(f"[{name}] skipped: {why}")
            continue
        built.append(name)
    graphs, ok, ready = [], True, {}

    def build(name):
        step(f"[{name}] build + eager forward")
        fn, x0, _ = build_provider(name, tv, example)
        x = x0.clone()
        with torch.no_grad():
            expected = fn(x).clone()
        torch.cuda.synchronize()
        ready[name] = fn, x, expected

    if args.build_first:
        for name in built:
            build(name)
    for name in built:
        if name not in ready:
            build(name)
        fn, x, expected = ready.pop(name)
        step(f"[{name}] capture")
        replay = _graphed(fn, x, keep_model=not args.drop_models)
        del fn
        torch.cuda.synchronize()
        step(f"[{name}] first replay")
        ok &= check(name, replay, expected)
        graphs.append((name, replay, expected))
        if len(graphs) > 1:
            step(f"[{name}] replay every earlier graph again")
            for g in graphs[:-1]:
                ok &= check(*g)
    step(f"round-robin replays of {len(graphs)} graphs x {args.rounds}")
    for _ in range(args.rounds):
        for _, replay, _ in graphs:
            replay()
    torch.cuda.synchronize()
    for g in graphs:
        ok &= check(*g)
    step("graph check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
