"""Autotune the Triton conv for every distinct conv shape of a model, and write the tuned table.

    python benchmarks/tune.py --model resnet50 --batch 1,32,256 --dtype fp16 --out fused_resnet/tuned/
    python benchmarks/tune.py ... --budget-s 200      # stop tuning new shapes after 200 s

Needs a CUDA GPU. Progress is printed per shape; the table (fused_resnet/tuned/triton_<gpu>.json
format) is written after every shape, so a run cut short keeps what it measured.
"""
import argparse
import os
import time

import torch

from fused_resnet.bench import conv_shapes
from fused_resnet.ops import fused_conv2d
from fused_resnet.triton import configs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", default="1,32,256")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--out", default=None, help="folder for triton_<gpu>.json (default: fused_resnet/tuned/)")
    p.add_argument("--budget-s", type=float, default=1e9)
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU")
    os.environ["FUSED_RESNET_AUTOTUNE"] = "1"
    t0 = time.time()
    path = None
    for dtype in args.dtype.split(","):
        dt = DTYPES[dtype]
        for batch in (int(b) for b in args.batch.split(",")):
            seen = set()
            for s in conv_shapes(args.model, batch):
                key = (s.cin, s.h, s.w, s.cout, s.k, s.stride, s.groups, s.residual, s.relu)
                if key in seen:
                    continue
                seen.add(key)
                if time.time() - t0 > args.budget_s:
                    print(f"budget of {args.budget_s:.0f} s spent: stopping", flush=True)
                    return 0
                x = torch.randn(s.n, s.cin, s.h, s.w, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
                w = torch.randn(s.cout, s.cin // s.groups, s.k, s.k, device="cuda", dtype=dt)
                res = (torch.randn(s.n, s.cout, s.oh, s.ow, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
                       if s.residual else None)
                with torch.no_grad():
                    fused_conv2d(x, w, torch.randn(s.cout, device="cuda"), stride=s.stride, padding=s.padding,
                                 dilation=s.dilation, groups=s.groups, residual=res, relu=s.relu, backend="triton")
                path = configs.save_table(path=os.path.join(args.out, f"triton_{configs.device_tag()}.json")
                                          if args.out else None)
    print(f"wrote {path} ({len(configs.table())} shapes) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
