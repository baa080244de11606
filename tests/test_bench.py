"""The benchmark tooling on CPU: bench CLI outputs, roofline counts, the pytest-benchmark files."""
import json
import os
import re
import subprocess
import tarfile
import sys

import torch

from fused_resnet.__main__ import build_parser
from fused_resnet.bench import conv_shapes, roofline, unknown_providers
from fused_resnet.timing import Timing, paired_ratio, time_blocks, time_interleaved

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_roofline_resnet50_counts():
    shapes = conv_shapes("resnet50", 1)
    assert len(shapes) == 53
    r = roofline("resnet50", 1, 2)
    assert abs(r["gflop"] - 8.17) < 0.05  # 4.09 G multiply-adds per 224x224 image (convs only)
    assert 50 < r["mb_act_fused"] < 60 and 150 < r["mb_act_unfused"] < 165  # the roofline model: ~57 / ~162 MB per image


def test_paired_ratio_cancels_a_slow_spell():
    # The machine slows 3x for the second half of the run: both providers' medians move, the per-round
    # ratio does not (the baseline always takes 1.5x this provider's time).
    t = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]
    base = Timing(0, 0, 6, tuple(1.5 * v for v in t))
    assert paired_ratio(base, Timing(0, 0, 6, tuple(t))) == (1.5, 0.0)
    assert paired_ratio(base, Timing(0, 0, 5, tuple(t[:5]))) == (0.0, 0.0)  # not the same rounds


def test_settle_calls_come_before_each_timed_sample():
    """time_interleaved(settle=1): each timed call of fn follows an untimed call of the same fn, never
    directly another fn's call (a previous runtime's spinning threads would be timed with it)."""
    log = []
    fns = [lambda: log.append("a"), lambda: log.append("b")]
    time_interleaved(fns, torch.device("cpu"), warmup=1, runs=3, settle=1)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 3


def test_blocks_time_each_fn_alone_in_rotated_rounds():
    """time_blocks: per round, each fn's settle calls then its timed calls back to back, the order
    rotated each round; sample k of every fn from the same round (ratios pair by index)."""
    log = []
    fns = [lambda: log.append("a"), lambda: log.append("b"), lambda: log.append("c")]
    out = time_blocks(fns, torch.device("cpu"), warmup=1, runs=4, rounds=2, settle=1)
    block = lambda f: [f] * (1 + 2)  # noqa: E731 (1 settle + ceil(4/2) timed)
    assert log == ["a", "b", "c"] + block("a") + block("b") + block("c") + block("b") + block("c") + block("a")
    assert [t.runs for t in out] == [4, 4, 4] and all(t.median_s >= 0 for t in out)


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


def test_gpu_suite_invocations_parse():
    # The suite runs where a GPU is lent, rarely: a mistyped flag or provider there costs device time.
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_suite

    cmds = [(st.kind, st.args) for p in gpu_suite.PHASES for st in p.steps if st.kind in ("bench", "tune")]
    assert sum(c == "bench" for c, _ in cmds) >= 8 and any(c == "tune" for c, _ in cmds)
    parser = build_parser()
    for cmd, argv in cmds:
        args = parser.parse_args([cmd] + argv)  # exits (fails the test) on an unknown flag
        if cmd == "bench" and args.providers:
            assert unknown_providers(args.providers.split(",")) == [], (cmd, argv)


def test_bench_rejects_an_unknown_provider():
    r = subprocess.run([sys.executable, "-m", "fused_resnet", "bench", "--device", "cpu", "--providers",
                        "torchvison,fused_resnet"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "unknown provider(s) torchvison" in r.stderr and "Traceback" not in r.stderr


def test_gpu_suite_dry_run(tmp_path):
    """The rehearsal on this CPU: every phase's commands (bench as tiny CPU stand-ins, every pytest
    selection collected and non-empty, GPU-only programs' arguments parsed), the plan within one
    10-minute command, and what comes back within the limits (<= 8 files, <= 2 folders deep, < 16 MiB)."""
    out = tmp_path / "suite"
    r = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--dry-run", str(out)],
                       capture_output=True, text=True, timeout=900, cwd=ROOT,
                       env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    # What the window is told and carries: the command writes under "$OUT" with the sha passed in, one
    # carry path (no venv), under 60 MiB with the tree, and the JIT build's headers all there.
    cmd = re.search(r"^device command: (.*)$", r.stdout, re.M)
    assert cmd and '"$OUT"' in cmd.group(1) and "FUSED_RESNET_GIT_SHA=" in cmd.group(1), r.stdout[:2000]
    assert re.search(r"^carry: \.gpu-prebuilt$", r.stdout, re.M), r.stdout[:2000]
    nbytes = re.search(r"^carry bytes: (\d+)", r.stdout, re.M)
    assert nbytes and int(nbytes.group(1)) < 60 * 2 ** 20
    assert re.search(r"^jit headers: ok \(16 translation units", r.stdout, re.M), r.stdout[:3000]
    assert "principal phases: 9 of 9 ran" in r.stdout
    m = re.search(r"planned device seconds: (\d+)", r.stdout)
    assert m and int(m.group(1)) <= 560, r.stdout[:3000]
    for phase in ("build", "info", "sm90", "nan", "tune", "op", "model256", "b1", "graphs"):
        assert f"phase {phase} done" in r.stdout, phase
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8 and (out / "suite.log").exists() and (out / "raw.tar.gz").exists()
    with tarfile.open(out / "raw.tar.gz") as tar:
        names = tar.getnames()
    assert "raw/op.json" in names and "raw/sm90.log" in names, names


def test_jit_header_check_fails_without_tools_util(tmp_path):
    """The dry run's header check is a real check: CUTLASS's include/ alone (without tools/util/include)
    does not preprocess an sm90 conv source for sm_90a (cutlass/util/packed_stride.hpp)."""
    import shutil

    import pytest

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_window

    if not os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        pytest.skip("no nvcc")
    cutlass = pytest.importorskip("cutlass_library")
    shutil.copytree(os.path.join(os.path.dirname(cutlass.__file__), "source", "include"), tmp_path / "include")
    n, errors = gpu_window.check_headers(ROOT, include=str(tmp_path / "include"), only=("conv_f16_ws_128",))
    assert n == 1 and errors and "packed_stride.hpp" in " ".join(errors), errors
    shutil.copytree(os.path.join(os.path.dirname(cutlass.__file__), "source", "tools", "util", "include"),
                    tmp_path / "tools" / "util" / "include")
    assert gpu_window.check_headers(ROOT, include=str(tmp_path / "include"), only=("conv_f16_ws_128",)) == (1, [])


def test_carry_refuses_a_venv(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_window

    (tmp_path / gpu_window.PREBUILT / "venv").mkdir(parents=True)
    (tmp_path / gpu_window.PREBUILT / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert any("venv" in p for p in gpu_window.carry_problems(str(tmp_path)))


# --- runtimes outside torch (ONNX Runtime, OpenVINO): optional providers ----------------------------

def test_onnxruntime_provider_row():
    import pytest

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fused_resnet.bench.model import run_model_bench

    rows = run_model_bench("resnet18", 1, "fp32", "cpu", ["torchvision", "onnxruntime"], runs=2, image_size=32,
                           progress=False)
    ort_row = next(r for r in rows if r.provider == "onnxruntime")
    assert ort_row.median_ms > 0 and ort_row.ratio_paired > 0 and ort_row.baseline == "torchvision"
    assert {r.provider: r.nan_exact for r in rows} == {"torchvision": "yes", "onnxruntime": "yes"}


def test_fused_speedups_pair_with_fused_resnet(capfd):
    """Each row's fused_speedup_paired is the per-round ratio of its samples to fused_resnet's (the
    number a claim such as "ahead of ONNX Runtime" rests on), printed one line per model and batch."""
    from fused_resnet.bench.model import run_model_bench
    from fused_resnet.bench.report import print_fused_speedups

    rows = run_model_bench("resnet18", 1, "fp32", "cpu", ["torchvision", "fused_resnet", "fused_eager"], runs=4,
                           image_size=32, progress=False, protocol="blocks", rounds=4)
    by = {r.provider: r for r in rows}
    assert by["torchvision"].runs == 4
    assert by["fused_resnet"].fused_speedup_paired == 1.0 and by["fused_resnet"].fused_speedup_paired_iqr == 0.0
    for name in ("torchvision", "fused_eager"):
        assert by[name].fused_speedup_paired > 0 and by[name].fused_speedup_paired_iqr >= 0
    print_fused_speedups(rows)
    out = capfd.readouterr().out
    assert "fused_resnet vs each, paired per round (resnet18 batch 1 fp32): torchvision " in out
    assert "fused_eager " in out and "fused_resnet 1.000x" not in out


def test_external_provider_skip_reasons(monkeypatch):
    import importlib.util

    from fused_resnet.bench import external
    from fused_resnet.bench.model import provider_available

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("onnxruntime", "openvino") else real(n, *a))
    assert "onnxruntime is not installed" in provider_available("onnxruntime", "cpu")
    assert "openvino is not installed" in provider_available("openvino", "cpu")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    assert external.external_available("onnxruntime", "cpu") is None
    assert "CPU only" in external.external_available("onnxruntime", "cuda")


def test_external_correctness_gate_rejects_a_wrong_output():
    import pytest
    import torch
    import torchvision

    from fused_resnet.bench.external import check_against

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert check_against("same", lambda t: m(t), m, x) < 1e-6
    with pytest.raises(AssertionError, match="differs from the reference"):
        check_against("off", lambda t: m(t) * 1.001, m, x)
    with pytest.raises(AssertionError):
        check_against("nan", lambda t: m(t).index_fill(1, torch.tensor([3]), float("nan")), m, x)


def test_nan_placement_check_catches_a_dropped_nan():
    import torch
    import torchvision

    from fused_resnet.bench.external import nan_input, nan_placement_matches

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    assert nan_input(x).isnan().sum() == 1 and nan_input(x).isinf().sum() == 1
    assert nan_placement_matches(m, m, x)
    assert not nan_placement_matches(lambda t: m(torch.nan_to_num(t, nan=0.0)), m, x)  # NaN dropped, Inf kept
    assert not nan_placement_matches(lambda t: m(torch.nan_to_num(t, nan=float("nan"), posinf=0.0)), m, x)


def test_cpu_gap_counts_each_onednn_conv_once(capfd):
    """benchmarks/cpu_gap.py's split reads oneDNN's own log: one exec line per conv primitive, and
    C-level stdout restored after it (a converted resnet18 on the CPU runs its 20 convs as oneDNN
    primitives)."""
    import pytest

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import cpu_gap

    from fused_resnet.swap import convert
    from fused_resnet.verify import build_reference_model

    model = convert(build_reference_model("resnet18", seed=0).eval(), cpu_graph=False)  # (torch's oneDNN calls)
    x = torch.randn(1, 3, 64, 64)
    lines = cpu_gap.onednn_log(model, x, forwards=2)
    split = cpu_gap.onednn_exec(model, x, 2, lines)
    assert split["convolution"]["calls"] == 20 and split["convolution"]["ms"] > 0, split
    classes = cpu_gap.onednn_conv_classes(lines, 2)  # resnet18 at 64x64: 11 classes, 20 convs
    assert sum(n for n, _ in classes.values()) == 20 and classes["3x3/1 64->64 @16"][0] == 4, classes
    assert classes["7x7/2 3->64 @64"][0] == 1 and classes["1x1/2 256->512 @4"][0] == 1, classes
    assert cpu_gap.per_call_cost_us(runs=200) > 0
    os.write(1, b"fd 1 restored\n")  # lost in the deleted log if the redirection were left in place
    assert "fd 1 restored" in capfd.readouterr().out
