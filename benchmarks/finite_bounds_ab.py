"""The guarded ReLU post-op on the CPU (fused_resnet/_finite.py), on and off, in one process.

Converted ResNet-50, rounds alternating the two settings on the same input, paired per-round ratios
(guarded / exact). Also checks that both give the same output bit for bit on a finite input and place
NaN/Inf as torchvision does. See benchmarks/NOTES.md, "Finite bounds".

    python benchmarks/finite_bounds_ab.py --batch 8 --rounds 15
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

import fused_resnet
from fused_resnet import _finite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds (each runs both settings)")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    if args.batch < 1 or args.rounds < 1:
        ap.error("--batch and --rounds must be positive")

    torch.manual_seed(0)
    ref = torchvision.models.resnet50().eval()
    model = fused_resnet.convert(copy.deepcopy(ref), cpu_graph=False)  # (the blocks' post-ops)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    times = {True: [], False: []}
    with torch.inference_mode():
        outs = {}
        for on in (True, False):
            _finite.ENABLED = on
            outs[on] = model(x)
        print("same output guarded vs exact:", torch.equal(outs[True], outs[False]))
        bad = x.clone()
        bad[0, 0, 10, 10] = float("nan")
        bad[-1, 1, 5, 5] = float("inf")
        _finite.ENABLED = True
        got, want = model(bad), ref(bad)
        print("NaN/Inf placed as torchvision:", torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()))
        for on in (True, False):  # warm both
            _finite.ENABLED = on
            model(x)
        for i in range(args.rounds):
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                _finite.ENABLED = on
                t = time.perf_counter()
                model(x)
                times[on].append(time.perf_counter() - t)
            print(f"\rround {i + 1}/{args.rounds}", end="", flush=True)
    _finite.ENABLED = True
    ratios = [a / b for a, b in zip(times[True], times[False])]
    print(f"\nbatch {args.batch}: guarded median {statistics.median(times[True]) * 1e3:.1f} ms, exact "
          f"{statistics.median(times[False]) * 1e3:.1f} ms, paired ratio median {statistics.median(ratios):.3f} "
          f"(< 1: the guarded post-op is faster)")


if __name__ == "__main__":
    main()
