"""Write fused_resnet/tuned/backend_<gpu>.json from op-level benchmark results.

    python benchmarks/backend_table.py benchmarks/results/<run>.json [--out fused_resnet/tuned]

For every conv shape timed in the run, records the fastest of the backends auto can pick:
triton (fused_triton), cuda (fused_cuda) and eager (fused_eager: cuDNN's conv, then the per-channel
bias, residual and ReLU as PyTorch pointwise passes). Runs that did not time fused_eager stand in
conv_bn_relu for it (cuDNN conv, BN, residual add, ReLU: the same passes over memory, so no faster
than our eager path), marked in the table's "eager_from" field. A shape needs two candidates timed.

Superseded by ``python -m fused_resnet tune`` (format-2 tactic tables: every tactic timed, cuDNN's
fused ops included, with the noise rule); this script writes format 1 and will not overwrite a
format-2 table.
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
    p.add_argument("--source", default=None, help="name of the run to record (default: the results file name)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fused_resnet", "tuned"))
    args = p.parse_args()
    with open(args.results) as f:
        rows = [r for r in json.load(f) if r["level"] == "op"]
    eager_from = "fused_eager" if any(r["provider"] == "fused_eager" for r in rows) else "conv_bn_relu"
    names = {"fused_triton": "triton", "fused_cuda": "cuda", eager_from: "eager"}
    times: dict = {}
    device = None
    for r in rows:
        if r["provider"] not in names:
            continue
        # shape: "layer1.0.conv2:3x3/1 64->64 56x56" (+ batch, dtype columns)
        m = re.match(r".*:(\d+)x\d+/(\d+) (\d+)->(\d+) (\d+)x(\d+)(?: g(\d+))?", r["shape"])
        k, s, cin, cout, h, w, g = (int(v) if v else 1 for v in m.groups())
        key = shape_key(r["batch"], cin, h, w, cout, k, s, g, DT[r["dtype"]])
        # Shapes that differ only in residual/ReLU share a key: keep the slower time per backend.
        slot = times.setdefault(key, {})
        slot[names[r["provider"]]] = max(slot.get(names[r["provider"]], 0.0), r["median_ms"])
        device = r["device"]
    choices = {k: min(v, key=v.get) for k, v in times.items() if len(v) >= 2}
    from fused_resnet.triton.configs import device_tag

    path = os.path.join(args.out, f"backend_{device_tag(device)}.json")
    if os.path.exists(path):
        with open(path) as f:
            if json.load(f).get("format", 1) >= 2:
                print(f"{path} is a format-2 tactic table (python -m fused_resnet tune): not overwritten")
                return 1
    with open(path, "w") as f:
        json.dump({"device": device, "source": args.source or os.path.basename(args.results), "eager_from": eager_from,
                   "choices": choices}, f, indent=1)
    counts = {b: sum(v == b for v in choices.values()) for b in ("cuda", "triton", "eager")}
    print(f"wrote {path}: {counts} of {len(choices)} shapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
