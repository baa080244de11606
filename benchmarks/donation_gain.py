"""What donation (a block's last conv writing over its input) gains on this machine.

    python benchmarks/donation_gain.py [--model resnet50] [--batch 8] [--size 224] [--rounds 15]

Runs a converted model's forward with donation as shipped (fused_resnet._donation.MIN_BYTES), with
donation for every size, and with none, interleaved round by round in one process; prints the
median and minimum per setting. CPU only (on a GPU donation is off: see _donation).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import fused_resnet
from fused_resnet import _donation


def measure(model_name: str, batch: int, size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = fused_resnet.convert(getattr(torchvision.models, model_name)(), cpu_graph=False).eval()  # (the blocks donate)
    x = torch.randn(batch, 3, size, size)
    settings = {"shipped": _donation.MIN_BYTES, "every size": 0, "none": 1 << 62}
    times = {k: [] for k in settings}
    shipped = _donation.MIN_BYTES
    try:
        with torch.inference_mode():
            for _ in range(2):
                for v in settings.values():
                    _donation.MIN_BYTES = v
                    model(x)
            for _ in range(rounds):
                for k, v in settings.items():
                    _donation.MIN_BYTES = v
                    t0 = time.perf_counter()
                    model(x)
                    times[k].append(time.perf_counter() - t0)
    finally:
        _donation.MIN_BYTES = shipped
    return {k: (statistics.median(v) * 1e3, min(v) * 1e3) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    r = measure(args.model, args.batch, args.size, args.rounds)
    print(f"{args.model} batch {args.batch} {args.size}x{args.size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for k, (med, lo) in r.items():
        print(f"  donation {k:>10}: median {med:.1f} ms, min {lo:.1f} ms")


if __name__ == "__main__":
    main()
