"""Write fused_resnet/tuned/backend_<gpu>.json from op-level benchmark results.

    python benchmarks/backend_table.py benchmarks/results/<run>.json [--out fused_resnet/tuned]

For every conv shape timed with both fused_triton and fused_cuda in the same run, records the faster.
"""
import argparse
import json
import os
import re

from fused_resnet.tuning import shape_key

DT = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fused_resnet", "tuned"))
    args = p.parse_args()
    with open(args.results) as f:
        rows = [r for r in json.load(f) if r["level"] == "op" and r["provider"] in ("fused_triton", "fused_cuda")]
    times: dict = {}
    device = None
    for r in rows:
        # shape: "layer1.0.conv2:3x3/1 64->64 56x56" (+ batch, dtype columns)
        m = re.match(r".*:(\d+)x\d+/(\d+) (\d+)->(\d+) (\d+)x(\d+)(?: g(\d+))?", r["shape"])
        k, s, cin, cout, h, w, g = (int(v) if v else 1 for v in m.groups())
        key = shape_key(r["batch"], cin, h, w, cout, k, s, g, DT[r["dtype"]])
        times.setdefault(key, {})[r["provider"]] = r["median_ms"]
        device = r["device"]
    choices = {k: min(v, key=v.get).replace("fused_", "") for k, v in times.items() if len(v) == 2}
    from fused_resnet.triton.configs import device_tag

    path = os.path.join(args.out, f"backend_{device_tag(device)}.json")
    with open(path, "w") as f:
        json.dump({"device": device, "source": os.path.basename(args.results), "choices": choices}, f, indent=1)
    print(f"wrote {path}: {sum(v == 'cuda' for v in choices.values())} cuda / {len(choices)} shapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
