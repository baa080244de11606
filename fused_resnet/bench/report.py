"""Benchmark rows and their outputs: the table printed, JSON/CSV files, the plot."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..timing import paired_ratio


@dataclass
class Row:
    provider: str
    model: str
    level: str
    shape: str
    batch: int
    dtype: str
    format: str
    graphs: bool
    median_ms: float
    spread_ms: float
    runs: int
    items_per_s: float = 0.0
    ratio_vs_baseline: float = 0.0  # baseline time / this time (>1 = faster than baseline)
    baseline: str = ""
    build_s: float = 0.0
    gflop: float = 0.0
    tflops: float = 0.0
    gbps_fused: float = 0.0
    frac_peak_flops: float = 0.0
    frac_peak_bw: float = 0.0
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark while this row was timed
    tactic: str = ""  # op level: the tactic this provider ran (fused_resnet: the one auto picked)
    out_bytes: int = 0  # op level: bytes of the conv's output
    residual_bytes: int = 0  # op level: bytes of the residual read (0: no residual)
    copy_gbps: float = 0.0  # op level: the card's measured device-to-device copy bandwidth
    env: dict = field(default_factory=dict)
    # Median and IQR of the per-round ratio baseline/this (timing.paired_ratio); 0 when the providers
    # were not timed in the same rounds (--cuda-graphs). On a noisy machine this is the ratio to quote.
    ratio_paired: float = 0.0
    ratio_paired_iqr: float = 0.0
    # Model level: how many times faster fused_resnet ran than this provider, per-round paired as above
    # (median, IQR of this/fused_resnet); 0 when fused_resnet was not timed in the same rounds.
    fused_speedup_paired: float = 0.0
    fused_speedup_paired_iqr: float = 0.0
    # CPU: "yes" if NaN and +-Inf land in the output where the reference model puts them for an input
    # with one NaN and one +Inf pixel ("no": e.g. a fused ReLU that maps NaN to 0); "" not checked
    nan_exact: str = ""



def _paired(base, t, separate: bool) -> dict:
    if separate:  # timed one provider after another: no shared rounds
        return {}
    r, iqr = paired_ratio(base, t)
    return {"ratio_paired": r, "ratio_paired_iqr": iqr}



def print_table(rows: list[Row]) -> None:
    if not rows:
        print("(no results)")
        return
    head = f"{'provider':16s} {'level':5s} {'shape':34s} {'batch':>5s} {'dtype':5s} {'graphs':6s} " \
           f"{'median ms':>10s} {'±IQR':>7s} {'items/s':>9s} {'vs ' + rows[0].baseline:>18s} " \
           f"{'paired ±IQR':>13s} {'TFLOP/s':>8s} {'NaN ok':>6s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.provider:16s} {r.level:5s} {r.shape[:34]:34s} {r.batch:5d} {r.dtype:5s} {str(r.graphs):6s} "
              f"{r.median_ms:10.3f} {r.spread_ms:7.3f} {r.items_per_s:9.1f} {r.ratio_vs_baseline:17.2f}x "
              f"{_paired_text(r):>13s} {r.tflops:8.2f} {r.nan_exact or '-':>6s}")


def print_fused_speedups(rows: list[Row]) -> None:
    """One line per model, batch and dtype: fused_resnet's paired speedup over each other provider
    (the ratio a comparison such as "ahead of ONNX Runtime" rests on)."""
    groups: dict = {}
    for r in rows:
        if r.level == "model" and r.fused_speedup_paired and r.provider != "fused_resnet":
            groups.setdefault((r.model, r.batch, r.dtype), []).append(r)
    for (model, batch, dtype), rs in groups.items():
        cells = ", ".join(f"{r.provider} {r.fused_speedup_paired:.3f}x [IQR {r.fused_speedup_paired_iqr:.3f}]"
                          for r in rs)
        print(f"fused_resnet vs each, paired per round ({model} batch {batch} {dtype}): {cells}")


def _paired_text(r: Row) -> str:
    return f"{r.ratio_paired:.2f}x ±{r.ratio_paired_iqr:.2f}" if r.ratio_paired else "-"


def write_results(rows: list[Row], out_prefix: str) -> list[str]:
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    records = [{**{k: v for k, v in asdict(r).items() if k != "env"}, **r.env} for r in rows]
    paths = [out_prefix + ".json", out_prefix + ".csv"]
    with open(paths[0], "w") as f:
        json.dump(records, f, indent=1)
    with open(paths[1], "w", newline="") as f:
        if records:
            wr = csv.DictWriter(f, fieldnames=list(records[0]))
            wr.writeheader()
            wr.writerows(records)
    return paths


def plot(rows: list[Row], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (matplotlib not installed: no plot)")
        return None
    model_rows = [r for r in rows if r.level == "model"]
    op_rows = [r for r in rows if r.level == "op"]
    fig, axes = plt.subplots(1, 2 if op_rows else 1, figsize=(14 if op_rows else 7, 5), squeeze=False)
    ax = axes[0][0]
    for p in dict.fromkeys(r.provider for r in model_rows):
        pts = sorted((r.batch, r.items_per_s) for r in model_rows if r.provider == p and not r.graphs)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=p)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch")
    ax.set_ylabel("images / s")
    ax.set_title("throughput vs batch" + (f" ({model_rows[0].model}, {model_rows[0].dtype})" if model_rows else ""))
    ax.legend(fontsize=8)
    if op_rows:
        ax = axes[0][1]
        big = max(r.batch for r in op_rows)  # one batch per chart: the largest
        op_rows = [r for r in op_rows if r.batch == big]
        shapes = list(dict.fromkeys(r.shape for r in op_rows))
        provs = list(dict.fromkeys(r.provider for r in op_rows))
        width = 0.8 / len(provs)
        for j, p in enumerate(provs):
            vals = [next((r.median_ms for r in op_rows if r.shape == s and r.provider == p), 0) for s in shapes]
            ax.bar([i + j * width for i in range(len(shapes))], vals, width, label=p)
        ax.set_xticks([i + 0.4 for i in range(len(shapes))])
        ax.set_xticklabels([s.split(":")[0] for s in shapes], rotation=70, fontsize=6)
        ax.set_ylabel("ms")
        ax.set_title(f"per conv shape, batch {big}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

