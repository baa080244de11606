"""Spare buffers (fused_resnet/_spare.py) on and off, in one process with the bench's other providers.

The converted ResNet-50 with and without the spare, in rounds with torchvision, compile+freezing and
ONNX Runtime (when installed) as in `python -m fused_resnet bench`: each timed forward follows one
untimed forward of the same provider (the settle call). Prints per-provider medians and the paired
ratio spare / no spare (< 1: the spare is faster), and checks that both give the same output bit
for bit. See benchmarks/NOTES.md, "Spare buffers".

    python benchmarks/spare_ab.py --batch 8 --rounds 11 [--alone]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision

import fused_resnet
from fused_resnet import _spare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds (each runs every provider)")
    ap.add_argument("--alone", action="store_true", help="only the converted model, spare on and off")
    args = ap.parse_args()
    if args.batch < 1 or args.rounds < 1:
        ap.error("--batch and --rounds must be positive")

    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    model = fused_resnet.convert(copy.deepcopy(tv), cpu_graph=False)  # (the blocks' spare buffers)
    offer = _spare.offer

    def fused(on: bool):
        def call():
            _spare.offer = offer if on else (lambda t: None)
            return model(x)
        return call

    fns = {"spare": fused(True), "no spare": fused(False)}
    if not args.alone:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        xc = x.contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(copy.deepcopy(tv).to(memory_format=torch.channels_last))
        fns = {"torchvision": lambda: tv(x), "compile": lambda: compiled(xc), "spare": fns["spare"],
               "no spare": fns["no spare"]}
        try:
            from fused_resnet.bench.external import build_external

            ort = build_external("onnxruntime", tv, x)
            fns["onnxruntime"] = lambda: ort(x)
        except Exception as e:  # optional: ONNX Runtime not installed
            print(f"onnxruntime skipped: {type(e).__name__}: {e}")
    times = {k: [] for k in fns}
    with torch.inference_mode():
        print("same output spare vs no spare:", torch.equal(fns["spare"](), fns["no spare"]()))
        for f in fns.values():
            f()
        for i in range(args.rounds):
            for k, f in fns.items():
                f()  # settle: the previous provider's threads go quiet
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
            print(f"\rround {i + 1}/{args.rounds}", end="", flush=True)
    _spare.offer = offer
    print("\n" + "; ".join(f"{k} {statistics.median(v) * 1e3:.1f} ms" for k, v in times.items()))
    ratios = [a / b for a, b in zip(times["spare"], times["no spare"])]
    print(f"batch {args.batch}: paired spare / no spare {statistics.median(ratios):.3f} (< 1: the spare is faster)")


if __name__ == "__main__":
    main()
