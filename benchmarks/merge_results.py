"""Merge bench JSON files into one results.json/.csv (+ results.png) and print a summary table.

    python benchmarks/merge_results.py OUT_PREFIX a.json b.json ...
"""
import json
import sys

from fused_resnet.bench import Row, plot, print_table, write_results


def load_rows(paths):
    rows = []
    fields = set(Row.__dataclass_fields__) - {"env"}
    for p in paths:
        try:
            with open(p) as f:
                records = json.load(f)
        except (OSError, ValueError) as e:
            print(f"skip {p}: {e}")
            continue
        for r in records:
            rows.append(Row(**{k: r[k] for k in fields}, env={k: v for k, v in r.items() if k not in fields}))
    return rows


if __name__ == "__main__":
    prefix, paths = sys.argv[1], sys.argv[2:]
    rows = load_rows(paths)
    for p in write_results(rows, prefix):
        print("wrote", p)
    if rows:
        plot(rows, prefix + ".png")
        print_table(rows)
