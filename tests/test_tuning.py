"""Measured tactics on CPU: the tactic table (format 2, and format-1 files refused), the noise rule, auto
following a tabled tactic only where it can run, explain() showing tactics, the sm90 adapter with
fakes, the `tune` command's refusal without a GPU, and the op bench's bound arithmetic. The
tactics' kernels run in tests/test_gpu.py (test_every_tactic_on_gpu, test_tune_*)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_resnet
from fused_resnet import _env, _ext, _selector, tuning
from fused_resnet.bench import op_bound_ms, op_bound_summary
from fused_resnet.tuning import Entry, decide

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CL = torch.channels_last
SM90 = "cuda:sm90_conv_f16_ws_128x128x64_c1x1"
SM90_GEMM = "cuda:sm90_gemm_f16_coop_128x256x64_c1x1"


# --- the noise rule ---------------------------------------------------------------------------------

def test_noise_rule_keeps_default_when_the_winner_wins_by_noise():
    e = decide({"triton": 1.00, "cuda:sm80_large": 1.02}, {}, "cuda:sm80_large")  # 2% < 3% floor
    assert e.tactic == "cuda:sm80_large" and e.kept_default and e.fastest == "triton"
    assert e.margin == pytest.approx(1.00 / 1.02 - 1)  # negative: the kept default is the slower one
    assert "default kept" in e.note()


def test_noise_rule_picks_a_clear_winner_and_records_margin():
    e = decide({"eager:cudnn_fused": 0.80, "cuda:sm80_large": 1.00, "triton": 1.5}, {}, "cuda:sm80_large")
    assert e.tactic == "eager:cudnn_fused" and not e.kept_default
    assert e.margin == pytest.approx(0.25) and e.noise == tuning.NOISE_FLOOR


def test_noise_threshold_grows_with_measured_spread():
    # 10% faster, but the measurements spread by 20% of the median: noise, keep the default
    e = decide({"triton": 0.90, "cuda:sm80_small": 1.00}, {"triton": 0.18, "cuda:sm80_small": 0.01}, "cuda:sm80_small")
    assert e.kept_default and e.noise == pytest.approx(0.2)


def test_noise_rule_without_a_timed_default_takes_the_fastest():
    e = decide({"triton": 2.0, "eager:cudnn+pointwise": 1.0}, {}, "cuda:sm80_large",
               failed={"cuda:sm80_large": "channels not a multiple of 8"})
    assert e.tactic == "eager:cudnn+pointwise" and not e.kept_default and e.failed
    assert decide({"triton": 1.0}, {}, "triton").margin is None  # one candidate: no runner-up


# --- table files --------------------------------------------------------------------------------------

def test_table_round_trip(tmp_path):
    entries = {
        tuning.tactic_key(32, 64, 56, 56, 256, 1, 1, 1, torch.float16, 0, 1, True, True):
            decide({"eager:cudnn_fused": 0.10, "cuda:sm80_large": 0.12}, {"eager:cudnn_fused": 0.001}, "cuda:sm80_large"),
        tuning.tactic_key(32, 64, 56, 56, 256, 1, 1, 1, torch.float16, 0, 1, False, False):
            decide({"eager:cudnn_fused": 0.10, "cuda:sm80_large": 0.101}, {}, "cuda:sm80_large"),
    }
    path = tuning.write_table(str(tmp_path / "backend_x.json"), entries, device="Test GPU", env={"torch": "t"},
                              command="tune --test")
    assert tuning.read_table(path) == entries
    data = json.loads(open(path).read())
    assert data["format"] == 2 and data["device"] == "Test GPU" and data["noise_floor"] == tuning.NOISE_FLOOR
    k = "n32_c64_h56_w56_k256_r1_s1_g1_float16_p0_d1_res_relu"
    assert data["tactics"][k]["tactic"] == "eager:cudnn_fused" and data["tactics"][k]["times_ms"]


def test_committed_tables_are_format_2_with_runnable_tactic_names(tmp_path):
    """The committed tables (converted from format 1) name registered tactics; a format-1 file is
    refused with a message, never read as an empty table."""
    from fused_resnet import tactics

    for name in ("backend_nvidia_h100_80gb_hbm3.json", "backend_nvidia_h200.json"):
        path = os.path.join(ROOT, "fused_resnet", "tuned", name)
        table = tuning.read_table(path)
        assert len(table) >= 264 and {e.tactic for e in table.values()} <= set(tactics.all_names())
        assert tuning.read_meta(path)["device"].startswith("NVIDIA H")
    stem = tuning.read_table(os.path.join(ROOT, "fused_resnet", "tuned", "backend_nvidia_h100_80gb_hbm3.json"))
    assert stem["n32_c3_h224_w224_k64_r7_s2_g1_float16_p3_d1_relu"].tactic == "eager:cudnn+pointwise"
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"device": "Test GPU", "choices": {"n32_c3_h224_w224_k64_r7_s2_g1_float16": "eager"}}))
    with pytest.raises(ValueError, match="format 1"):
        tuning.read_table(str(old))


# --- auto follows the table where the tactic can run ---------------------------------------------------

@pytest.fixture
def gpu_world(monkeypatch, tmp_path):
    """Fake CUDA tensors with both GPU backends 'available', and a tactic table at FUSED_RESNET_TABLE."""
    monkeypatch.setattr(_ext, "status", lambda: (True, "test"))
    monkeypatch.setattr(_env, "triton_status", lambda: (True, "test"))
    monkeypatch.setattr(_env, "sm_count", lambda device=None: 132)  # an H100
    monkeypatch.delenv("FUSED_RESNET_PREFER", raising=False)
    path = tmp_path / "backend_test.json"
    monkeypatch.setenv("FUSED_RESNET_TABLE", str(path))
    tuning.clear_cache()

    def write(entries):
        tuning.write_table(str(path), entries, device="Test GPU")

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield write
    tuning.clear_cache()


def _conv(cin=64, cout=256, k=1, n=32, hw=56):
    x = torch.empty(n, cin, hw, hw, dtype=torch.float16, device="cuda").contiguous(memory_format=CL)
    w = torch.empty(cout, cin, k, k, dtype=torch.float16, device="cuda")
    return x, w


def _key(x, w, padding=0, relu=True, residual=True):
    n, c, h, wd = x.shape
    return tuning.tactic_key(n, c, h, wd, w.shape[0], w.shape[2], 1, 1, x.dtype, padding, 1, relu, residual)


def test_auto_follows_a_runnable_tabled_tactic(gpu_world):
    x, w = _conv()
    gpu_world({_key(x, w): decide({"eager:cudnn+pointwise": 0.8, "cuda:sm80_large": 1.0}, {}, "cuda:sm80_large")})
    c = _selector.select_conv(x, w, 1, "auto", residual=True)
    assert (c.backend, c.tactic) == ("eager", "eager:cudnn+pointwise") and "tuned table" in c.reason, c
    # the key includes the epilogue: the same shape without residual is not tabled -> heuristic
    c = _selector.select_conv(x, w, 1, "auto", residual=False)
    assert c.backend == "cuda" and c.tactic in ("cuda:sm80_large", "cuda:sm80_small") and "tuned table" not in c.reason
    assert c[:2] == (c.backend, c.reason)  # Choice keeps its first two fields


def test_auto_skips_a_tabled_tactic_that_cannot_run(gpu_world, monkeypatch):
    monkeypatch.setattr(_env, "device_capability", lambda device=None: (8, 0))  # an A100: no sm90 kernels
    x3, w3 = _conv(cin=3, cout=64, k=7, hw=224)
    x, w = _conv()
    gpu_world({_key(x3, w3, 3): Entry("cuda:sm80_small"), _key(x, w): Entry(SM90)})
    c = _selector.select_conv(x3, w3, 1, "auto", padding=3, residual=True)
    assert c.tactic == "triton" and "cannot run" in c.reason and "multiple of 8" in c.reason  # 3 channels
    c = _selector.select_conv(x, w, 1, "auto", residual=True)  # tabled sm90 kernel on an sm_80 card
    assert c.backend == "cuda" and c.tactic in ("cuda:sm80_large", "cuda:sm80_small") and SM90 in c.reason and "sm_90" in c.reason


def test_auto_takes_the_next_fastest_tabled_tactic_when_the_winner_cannot_run(gpu_world):
    """A table measured before eager:cudnn_fused learnt to refuse a ReLU (cuDNN's fused ReLU drops NaN
    on some engines): auto runs the fastest tabled tactic that can run, not the untabled default."""
    x, w = _conv()
    times = {"eager:cudnn_fused": 0.8, "triton": 0.9, "cuda:sm80_large": 1.0}
    gpu_world({_key(x, w): decide(times, {}, "cuda:sm80_large"),
               _key(x, w, relu=False, residual=False): decide(times, {}, "cuda:sm80_large")})
    c = _selector.select_conv(x, w, 1, "auto", residual=True)
    assert c.tactic == "triton" and "fastest tabled tactic that can run" in c.reason and "NaN" in c.reason, c
    c = _selector.select_conv(x, w, 1, "auto", relu=False, residual=False)  # no ReLU: cuDNN's fused bias runs
    assert c.tactic == "eager:cudnn_fused" and "tuned table" in c.reason, c


def test_auto_reports_a_kept_default(gpu_world):
    x, w = _conv()
    gpu_world({_key(x, w): decide({"triton": 0.99, "cuda:sm80_large": 1.0}, {}, "cuda:sm80_large")})
    c = _selector.select_conv(x, w, 1, "auto", residual=True)
    assert c.tactic == "cuda:sm80_large" and "default kept" in c.reason


def test_explicit_cuda_takes_the_tabled_cuda_tactic(gpu_world):
    x, w = _conv()
    gpu_world({_key(x, w): Entry("cuda:sm80_small")})
    assert _selector.select_conv(x, w, 1, "cuda", residual=True).tactic == "cuda:sm80_small"
    assert _selector.select_conv(x, w, 1, "eager", residual=True).tactic == "eager:cudnn+pointwise"
    assert _selector.select_conv(x, w, 1, "triton", residual=True).tactic == "triton"


def test_sm80_tile_fills_the_gpus_sms_twice(monkeypatch):
    from fused_resnet.tactics.cutlass import sm80_tile

    with FakeTensorMode(allow_non_fake_inputs=True):
        big, wb = _conv(n=8)  # 8*56*56/128 * 2 = 392 tiles of 128x128
        small, ws = _conv(cin=512, cout=512, n=1, hw=7)
        for sms, big_tile in ((132, "cuda:sm80_large"), (108, "cuda:sm80_large"), (200, "cuda:sm80_small")):
            monkeypatch.setattr(_env, "sm_count", lambda device=None, n=sms: n)
            assert sm80_tile(_selector.problem(big, wb)) == big_tile, sms  # large from 2 waves: 392 >= 2 * SMs
            assert sm80_tile(_selector.problem(small, ws)) == "cuda:sm80_small"


# --- the sm90 adapter, with fakes of branch sm90's API ------------------------------------------------

@pytest.fixture
def fake_sm90(monkeypatch):
    """An H100 as far as the sm90 guard can tell, and a launcher that records the config it is given."""
    calls = []
    monkeypatch.setattr(_env, "device_capability", lambda device=None: (9, 0))

    def op(x, weight, bias, residual, stride, padding, dilation, relu, config):  # the op's schema
        calls.append(config)
        return torch.zeros(x.shape[0], weight.shape[0], x.shape[2], x.shape[3], dtype=x.dtype)
    monkeypatch.setattr(_ext.sm90, "_sm90_op", lambda: op)
    return calls


def test_sm90_configs_become_tactics(gpu_world, fake_sm90):
    x, w = _conv()
    tactics = fused_resnet.tactics.conv_tactics(x)
    assert SM90 in tactics and SM90_GEMM in tactics and "eager:cudnn_fused" in tactics
    assert len([t for t in tactics if t.startswith("cuda:sm90_")]) == len(_ext.sm90_configs())
    kw = dict(residual=True)
    assert _selector.tactic_guard(SM90, x, w, 1, **kw) is None
    assert _selector.tactic_guard(SM90_GEMM, x, w, 1, **kw) is None  # 1x1 s1
    x3, w3 = _conv(k=3)
    assert "1x1" in _selector.tactic_guard(SM90_GEMM, x3, w3, 1, padding=1)
    assert "f16" in _selector.tactic_guard(SM90, x.bfloat16(), w.bfloat16(), 1)
    gpu_world({_key(x, w): Entry(SM90)})
    c = _selector.select_conv(x, w, 1, "auto", residual=True)
    assert (c.backend, c.tactic) == ("cuda", SM90)


def test_sm90_tactics_only_for_cuda_tensors_and_hopper(gpu_world, monkeypatch):
    monkeypatch.setattr(_env, "device_capability", lambda device=None: (8, 0))
    x, w = _conv()
    assert "sm_90" in _selector.tactic_guard(SM90, x, w, 1)  # an A100: refused with the reason
    assert fused_resnet.tactics.conv_tactics(torch.empty(1, 3, 4, 4)) == ("eager:cpu",)


def test_sm90_launch_prepares_once_and_pads_the_stem(monkeypatch):
    seen = []

    def op(x, weight, bias, residual, stride, padding, dilation, relu, config):
        seen.append((x, weight, bias, residual, stride, padding, dilation, relu, config))
        return x
    monkeypatch.setattr(_ext.sm90, "_sm90_op", lambda: op)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float16)  # NCHW, 3 channels: the stem
    w = torch.randn(16, 3, 7, 7, dtype=torch.float16)
    run = _ext.sm90_launch(x, w, torch.randn(16, dtype=torch.float64), 2, 3, 1, True, "conv_f16_ws_128x128x64_c1x1")
    run(x, None)
    run(x, None)
    (x1, w1, b1, r1, *rest1), (x2, w2, b2, *_) = seen
    assert w1 is w2 and b1 is b2  # packed once, at plan time
    assert x1.shape == (2, 8, 9, 9) and x1.is_contiguous(memory_format=CL) and torch.equal(x1[:, :3], x)
    assert not x1[:, 3:].any()  # zero channels
    assert w1.shape == (16, 8, 7, 7) and w1.is_contiguous(memory_format=CL) and torch.equal(w1[:, :3], w)
    assert b1.dtype == torch.float32 and r1 is None
    assert rest1 == [[2, 2], [3, 3], [1, 1], True, _ext.sm90_config_index("conv_f16_ws_128x128x64_c1x1")]


def test_run_tactic_passes_the_sm90_config(fake_sm90):
    from fused_resnet.tactics import run as run_tactic

    x = torch.randn(2, 8, 5, 5, dtype=torch.float16).contiguous(memory_format=CL)
    w = torch.randn(16, 8, 1, 1, dtype=torch.float16)
    out = run_tactic(SM90, x, w, torch.randn(16), None, [1, 1], [0, 0], [1, 1], 1, None, True)
    assert fake_sm90 == [_ext.sm90_config_index(SM90[len("cuda:sm90_"):])] and out.shape == (2, 16, 5, 5)
    with pytest.raises(ValueError, match="unknown fused_conv2d tactic"):
        run_tactic("cuda:nope", x, w, None, None, [1, 1], [0, 0], [1, 1], 1, None, True)


# --- explain and the CPU path -----------------------------------------------------------------------

def test_explain_shows_the_tactic():
    import torchvision

    m = fused_resnet.convert(torchvision.models.resnet18().eval())
    report = fused_resnet.explain(m, torch.randn(1, 3, 32, 32))
    assert {r.tactic for r in report.rows} == {"eager:cpu"} and len(report.rows) == 20
    text = str(report)
    assert "tactic" in text.splitlines()[0] and "eager:cpu" in text


def test_tune_shape_on_cpu_measures_and_decides():
    """The tuner's per-shape loop (run on CPU tensors with the CPU tactic; the GPU test runs all)."""
    from fused_resnet.bench import distinct_shapes
    from fused_resnet.tuner import tune_shape

    s = distinct_shapes("resnet18", 1, 32)[1]
    key, entry = tune_shape(s, torch.float32, runs=3, progress=False, device="cpu")
    assert key.startswith("n1_c64_h8_w8_k64_r3_s1_g1_float32_p1_d1_")
    assert entry.tactic == "eager:cpu" and entry.default == "eager:cpu" and entry.times_ms["eager:cpu"] > 0


# --- the tune command ---------------------------------------------------------------------------------

def _cli(*args):
    env = {**os.environ, "FUSED_RESNET_JIT": "0"}
    return subprocess.run([sys.executable, "-m", "fused_resnet", *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_tune_refuses_without_a_gpu(tmp_path):
    r = _cli("tune", "--model", "resnet18", "--batch", "1", "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "t.json").exists()


def test_tune_help():
    r = _cli("tune", "--help")
    assert r.returncode == 0 and "usage:" in r.stdout
    for word in ("--budget-s", "--out", "--batch", "--dtype", "noise", "--triton-configs"):
        assert word in r.stdout


# --- the op bench's target ------------------------------------------------------------------------------

def test_op_bound_summary_on_synthetic_rows():
    def row(provider, shape, ms, res_bytes=0, tactic=""):
        return {"level": "op", "model": "resnet50", "batch": 32, "dtype": "fp16", "shape": shape,
                "provider": provider, "median_ms": ms, "residual_bytes": res_bytes, "copy_gbps": 3000.0,
                "tactic": tactic}

    res = 32 * 256 * 56 * 56 * 2  # 51.4 MB residual: 0.01713 ms at 3000 GB/s
    rows = [row("conv_alone", "a", 0.100), row("fused_resnet", "a", 0.110, res, "eager:cudnn_fused"),
            row("conv_alone", "b", 0.200), row("fused_resnet", "b", 0.201, 0, "cuda:sm80_large"),
            row("conv_alone", "c", 0.300), row("cuda:sm80_large", "c", 0.1)]  # c: auto not timed
    assert op_bound_ms(0.100, res, 3000.0) == pytest.approx(0.100 + res / 3e12 * 1e3)
    met, total, details = op_bound_summary(rows)
    assert (met, total) == (1, 2)
    assert [d["ok"] for d in details] == [True, False] and details[0]["tactic"] == "eager:cudnn_fused"


def test_tune_command_loop_writes_and_updates_the_table(tmp_path, monkeypatch, capsys):
    """`tune`'s own loop (progress, budget, table written after each shape, update of an existing table),
    with the GPU stood in for by CPU tensors and the CPU tactic."""
    from fused_resnet import tuner
    from fused_resnet.__main__ import main

    real = tuner.tune_shape
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    monkeypatch.setattr(_env, "device_tag", lambda device=None: "test_gpu")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 0)
    monkeypatch.setattr(tuner, "tune_shape", lambda s, dt, tactics, runs, floor: real(
        s, torch.float32, tactics, runs, floor, device="cpu"))
    import fused_resnet.profiling as profiling

    monkeypatch.setattr(profiling, "environment", lambda device: {"device": "Test GPU", "torch": "t", "triton": "t"})
    args = ["tune", "--model", "resnet18", "--batch", "1", "--image-size", "32", "--runs", "2", "--out", str(tmp_path)]
    assert main(args + ["--limit", "2"]) == 0
    path = tmp_path / "backend_test_gpu.json"
    out = capsys.readouterr().out
    assert "[1/" in out and "[2/" in out and "-> pick eager:cpu" in out and str(path) in out
    assert len(tuning.read_table(str(path))) == 2 and torch.backends.cudnn.benchmark
    assert main(args + ["--budget-s", "0"]) == 0  # nothing measured: the table keeps its 2 entries
    assert "budget" in capsys.readouterr().out and len(tuning.read_table(str(path))) == 2


def test_default_tactic_ignores_table_and_prefer(gpu_world, monkeypatch):
    x, w = _conv()
    gpu_world({_key(x, w): Entry("eager:cudnn_fused")})
    monkeypatch.setenv("FUSED_RESNET_PREFER", "triton")
    assert _selector.select_conv(x, w, 1, "auto", residual=True).tactic == "triton"  # PREFER wins in auto
    assert _selector.default_tactic(x, w, 1, residual=True) in ("cuda:sm80_large", "cuda:sm80_small")


def test_narrow_grouped_convs_run_on_cudnn_not_triton(gpu_world):
    """ResNeXt's grouped 3x3 convs (4-32 output channels per group): Triton's GEMM per group idled
    (the model at 0.17x torch.compile on an H200); untabled, they go to cuDNN with the one-pass
    epilogue. Wide groups stay on Triton."""
    gpu_world({})
    x = torch.empty(32, 128, 56, 56, dtype=torch.float16, device="cuda").contiguous(memory_format=CL)
    c = _selector.select_conv(x, torch.empty(128, 4, 3, 3, dtype=torch.float16, device="cuda"), 32, "auto", padding=1)
    assert c.tactic == "eager:cudnn+epilogue" and "per group" in c.reason, c
    c = _selector.select_conv(x, torch.empty(128, 64, 3, 3, dtype=torch.float16, device="cuda"), 2, "auto", padding=1)
    assert c.tactic == "triton", c
