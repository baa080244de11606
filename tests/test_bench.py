"""The benchmark tooling on CPU: bench CLI outputs, roofline counts, the pytest-benchmark files."""
import json
import os
import subprocess
import sys

from fused_resnet.__main__ import build_parser
from fused_resnet.bench import conv_shapes, roofline, unknown_providers
from fused_resnet.timing import Timing, paired_ratio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_roofline_resnet50_counts():
    shapes = conv_shapes("resnet50", 1)
    assert len(shapes) == 53
    r = roofline("resnet50", 1, 2)
    assert abs(r["gflop"] - 8.17) < 0.05  # 4.09 G multiply-adds per 224x224 image (convs only)
    assert 50 < r["mb_act_fused"] < 60 and 150 < r["mb_act_unfused"] < 165  # DESIGN: ~57 / ~162 MB


def test_paired_ratio_cancels_a_slow_spell():
    # The machine slows 3x for the second half of the run: both providers' medians move, the per-round
    # ratio does not (the baseline always takes 1.5x this provider's time).
    t = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    base = Timing(0, 0, 6, tuple(1.5 * v for v in t))
    assert paired_ratio(base, Timing(0, 0, 6, tuple(t))) == (1.5, 0.0)
    assert paired_ratio(base, Timing(0, 0, 5, tuple(t[:5]))) == (0.0, 0.0)  # not the same rounds


def test_bench_cli_writes_json_csv_png(tmp_path):
    out = tmp_path / "r"
    cmd = [sys.executable, "-m", "fused_resnet", "bench", "--device", "cpu", "--model", "resnet18", "--batch", "1",
           "--image-size", "32", "--runs", "2", "--providers", "torchvision,fused_eager", "--level", "model,op",
           "--out", str(out), "--plot", str(tmp_path / "r.png")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "vs torchvision" in r.stdout
    rows = json.loads((tmp_path / "r.json").read_text())
    providers = {(x["level"], x["provider"]) for x in rows}
    assert ("model", "fused_eager") in providers and ("op", "conv_alone") in providers
    for key in ("device", "torch", "git_sha", "date", "median_ms", "spread_ms", "ratio_vs_baseline", "ratio_paired"):
        assert key in rows[0]
    fused = next(x for x in rows if x["level"] == "model" and x["provider"] == "fused_eager")
    assert fused["ratio_paired"] > 0 and fused["ratio_paired_iqr"] >= 0
    assert (tmp_path / "r.csv").exists() and (tmp_path / "r.png").stat().st_size > 1000


def test_pytest_benchmark_files_run(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "benchmarks", "--benchmark-disable", "-p",
                        "no:cacheprovider", "-k", "layer1 or r18 or torchvision"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_readme_table_is_rendered_from_results():
    r = subprocess.run([sys.executable, "benchmarks/render_table.py", "--check"], cwd=ROOT, timeout=60)
    assert r.returncode == 0, "README.md performance table is stale: run python benchmarks/render_table.py"


def _suite_commands():
    """(subcommand, argv) of every `bench NAME ARGS` / `python3 -m fused_resnet tune|bench ARGS` call in
    benchmarks/gpu_suite.sh, shell variables replaced by a number."""
    import re
    import shlex

    text = open(os.path.join(ROOT, "benchmarks", "gpu_suite.sh")).read().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        line = re.sub(r'"?\$\(?\(?[^ ]*\)?\)?"?', "1", line.split(" >")[0].split(" 2>")[0])
        m = re.search(r"(?:^|&& |^\s+)bench [a-z0-9_]+ (--.*)$", line)
        if m:
            cmds.append(("bench", shlex.split(m.group(1))))
        m = re.search(r"python3 -m fused_resnet (tune|bench) (--.*)$", line)
        if m:
            cmds.append((m.group(1), shlex.split(m.group(2))))
    return cmds


def test_gpu_suite_invocations_parse():
    # The suite runs where a GPU is lent, rarely: a mistyped flag or provider there costs device time.
    cmds = _suite_commands()
    assert sum(c == "bench" for c, _ in cmds) >= 10 and any(c == "tune" for c, _ in cmds)
    parser = build_parser()
    for cmd, argv in cmds:
        args = parser.parse_args([cmd] + argv)  # exits (fails the test) on an unknown flag
        if cmd == "bench" and args.providers:
            assert unknown_providers(args.providers.split(",")) == [], (cmd, argv)


def test_bench_rejects_an_unknown_provider():
    r = subprocess.run([sys.executable, "-m", "fused_resnet", "bench", "--device", "cpu", "--providers",
                        "torchvison,fused_resnet"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "unknown provider(s) torchvison" in r.stderr and "Traceback" not in r.stderr


def test_gpu_suite_test_selections_are_not_empty():
    import re

    text = open(os.path.join(ROOT, "benchmarks", "gpu_suite.sh")).read()
    selections = re.findall(r'gpu_tests [a-z0-9_]+ .*"([^"]+)"$', text, flags=re.M)
    assert len(selections) >= 4
    for k in selections:
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "tests",
                            "-p", "no:cacheprovider", "-k", k], capture_output=True, text=True, timeout=300, cwd=ROOT)
        m = re.search(r"(\d+)/\d+ tests collected", r.stdout)
        assert m and int(m.group(1)) > 0, (k, r.stdout[-500:])
