"""Render README.md's performance section from the committed results (benchmarks/results/*/*.json),
so the README never shows a number that no file backs.

    python benchmarks/render_table.py            # rewrites the block between the perf-table markers
    python benchmarks/render_table.py --check    # exit 1 if README.md is stale
"""
import argparse
import collections
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "README.md")
START, END = "<!-- perf-table:start -->", "<!-- perf-table:end -->"
# The run each table comes from (later runs of the same card supersede earlier ones).
SOURCES = {"model": ["h200-run3/results.json", "h200-run2/results.json"], "compile": ["h200-run2/results.json"],
           "op": ["h200-run3/results.json"], "cpu": ["cpu-2core/resnet50_b8.json"]}


def load(rel):
    with open(os.path.join(HERE, "results", rel)) as f:
        return json.load(f)


ORDER = ["torchvision", "torchvision_cl", "torchscript", "compile", "compile_max", "fused_eager", "fused_triton",
         "fused_cuda", "fused_resnet"]


def sha_of(run: str, rows) -> str:
    """git sha recorded in the rows, else the one in the run's run.json (device copies had no history)."""
    sha = rows[0].get("git_sha", "unknown")
    meta = os.path.join(HERE, "results", run, "run.json")
    if sha in ("", "unknown") and os.path.exists(meta):
        with open(meta) as f:
            sha = json.load(f)["git_sha"]
    return sha


def model_table(rows, title):
    out = [f"**{title}**", "", "| provider | batch | CUDA graphs | median ms | images/s | vs torchvision (NCHW) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['provider']} | {r['batch']} | {'yes' if r['graphs'] else 'no'} | {r['median_ms']:.3f} | "
                   f"{r['items_per_s']:.0f} | {r['ratio_vs_baseline']:.2f}x |")
    return out


def render() -> str:
    lines = []
    run3 = load(SOURCES["model"][0])
    env = run3[0]
    lines.append(f"GPU: {env['device']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
                 f"git {sha_of('h200-run3', run3)} ({env['date'][:10]}); ResNet-50, fp16, 224x224, random weights, "
                 f"medians of 20-50 interleaved runs. Files: `benchmarks/results/h200-run3/`, "
                 f"`h200-run2/` (torch.compile).")
    lines.append("")
    models = [r for r in run3 if r["level"] == "model"]
    lines += model_table(sorted(models, key=lambda r: (-r["batch"], r["graphs"], ORDER.index(r["provider"]))),
                         "Whole model")
    comp = [r for r in load(SOURCES["compile"][0]) if r["level"] == "model" and r["provider"] == "compile"]
    for r in comp:
        base = next(x for x in load(SOURCES["compile"][0]) if x["level"] == "model" and x["batch"] == r["batch"]
                    and x["provider"] == "torchvision" and not x["graphs"])
        lines.append(f"| compile (inductor, freezing; run 2) | {r['batch']} | no | {r['median_ms']:.3f} | "
                     f"{r['items_per_s']:.0f} | {base['median_ms'] / r['median_ms']:.2f}x |")
    lines.append("")
    lines.append("**Per conv shape** (each distinct ResNet-50 conv, fp16, channels_last): time of the fused "
                 "kernel relative to cuDNN's conv alone (`F.conv2d`, no BN/ReLU); above 1 would be faster. "
                 "Median [min, max] over shapes. These runs repacked the weight on every fused call (since "
                 "fixed), which weighs most at batch 1.")
    lines.append("")
    lines.append("| batch | conv + BN + ReLU (+add), cuDNN | fused triton | fused cuda (CUTLASS) |")
    lines.append("|---|---|---|---|")
    by = collections.defaultdict(dict)
    for r in load(SOURCES["op"][0]):
        if r["level"] == "op":
            by[(r["shape"], r["batch"])][r["provider"]] = r["median_ms"]
    for b in sorted({k[1] for k in by}):
        cells = []
        for p in ("conv_bn_relu", "fused_triton", "fused_cuda"):
            rs = [v["conv_alone"] / v[p] for (s, bb), v in by.items() if bb == b and p in v]
            cells.append(f"{statistics.median(rs):.2f}x [{min(rs):.2f}, {max(rs):.2f}]" if rs else "-")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines.append("")
    cpu = load(SOURCES["cpu"][0])
    lines.append(f"CPU: {cpu[0]['device']} ({cpu[0]['threads']} threads), torch {cpu[0]['torch']}, ResNet-50 fp32, "
                 f"224x224, git {sha_of('cpu-2core', cpu)}. File: `benchmarks/results/cpu-2core/`.")
    lines.append("")
    lines += model_table([r for r in cpu if r["level"] == "model"], "Whole model, CPU")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    with open(README) as f:
        text = f.read()
    if START not in text or END not in text:
        print(f"README.md has no {START} ... {END} block", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{render()}\n{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    with open(README, "w") as f:
        f.write(new)
    print("README.md performance table updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
