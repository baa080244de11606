"""The CUDA extension on a machine without a GPU: it builds with nvcc for sm_80/sm_90 and loads;
op schemas, fake tensors, selection logic and the build-or-skip paths. Its kernels run only in
the GPU tests (tests/test_gpu.py::test_cuda_backend_*)."""
import os

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_resnet
from fused_resnet import _ext, _selector
from fused_resnet.tactics.cutlass import cutlass_reasons


@pytest.fixture(scope="session")
def built_library():
    why = _ext.toolchain_problem()
    if why:
        pytest.skip(f"no CUDA toolchain here: {why}")
    path = _ext.build()  # compiles on first use (a few minutes on 2 cores), cached afterwards
    torch.ops.load_library(path)
    return path


def test_extension_builds_and_registers_cuda_kernels(built_library):
    for op in ("_conv2d_cutlass", "_conv2d_sm90", "_bias_residual_act_cuda", "_add_relu_cuda"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_resnet::{op}", "CUDA"), op


def test_fake_shapes_trace_without_gpu():
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 64, 15, 15, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        w = torch.empty(128, 64, 3, 3, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        out = torch.ops.fused_resnet._conv2d_cutlass(x, w, torch.empty(128), None, [2, 2], [1, 1], [1, 1], True, 0)
        assert out.shape == (2, 128, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
        y = torch.ops.fused_resnet._add_relu_cuda(x, x)
        assert y.shape == x.shape


# --- Hopper sm90 kernels: compiled here, checked from their cubins (they run only in tests/test_gpu.py) ---

def test_sm90_kernels_have_no_spills_and_use_wgmma(built_library):
    """Every generated config compiled to exactly one sm_90a CUTLASS kernel with 0 bytes of stack/local
    memory (no spills), at most 255 registers, HGMMA (warpgroup MMA) in its SASS, and a dynamic shared
    memory size that fits an H100 (227 KiB per block)."""
    rows = _ext.sm90_kernel_resources(os.path.dirname(built_library))
    assert [r["name"] for r in rows] == [c.name for c in _ext.sm90_configs()]
    for r in rows:
        assert r["stack"] == 0 and r["local"] == 0, r
        assert 0 < r["registers"] <= 255 and r["hgmma"] > 0, r
        assert 0 < r["shared_dynamic"] + r["shared_static"] <= 227 * 1024, r


def test_sm90_fake_shapes_and_guards():
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 64, 15, 17, dtype=torch.bfloat16, device="cuda").contiguous(memory_format=torch.channels_last)
        w = torch.empty(128, 64, 3, 3, dtype=torch.bfloat16, device="cuda").contiguous(memory_format=torch.channels_last)
        out = torch.ops.fused_resnet._conv2d_sm90(x, w, torch.empty(128), None, [2, 2], [2, 2], [2, 2], True, 0)
        assert out.shape == (2, 128, 8, 9) and out.is_contiguous(memory_format=torch.channels_last)
        # why-not answers, device checks aside (no GPU here)
        assert _ext.sm90_problem(x, w, 2, 2, 2, check_device=False) is None
        assert "fp16/bf16" in _ext.sm90_problem(x.float(), w.float(), check_device=False)
        assert "multiple of 8" in _ext.sm90_problem(x, w[:60], check_device=False)
        assert _ext.sm90_problem(x[:, :3], w[:, :3], check_device=False) is None  # stem: C padded to 8
        assert "grouped" in _ext.sm90_problem(x, w[:, :32], groups=2, check_device=False)
        assert "empty" in _ext.sm90_problem(x[:, :, :1, :1], w, check_device=False)
        w1 = w[:, :, :1, :1]
        gemm = _ext.sm90_config_index("gemm_bf16_coop_128x256x64_c1x1")
        assert _ext.sm90_config_accepts(gemm, x, w1) and not _ext.sm90_config_accepts(gemm, x, w1, stride=2)
        assert not _ext.sm90_config_accepts(gemm, x, w) and not _ext.sm90_config_accepts(0, x, w)  # 0: f16


def test_sm90_launcher_traces_with_fake_tensors():
    """The Python launcher (packing, stem channel padding, default config) up to the op, on fake CUDA
    tensors: what torch.compile sees."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 3, 32, 30, dtype=torch.float16, device="cuda")  # stem: C = 3 -> padded to 8
        w = torch.empty(64, 3, 7, 7, dtype=torch.float16, device="cuda")
        out = _ext.fused_conv2d_sm90(x, w, torch.empty(64, device="cuda"), 2, 3, 1)
        assert out.shape == (2, 64, 16, 15) and out.is_contiguous(memory_format=torch.channels_last)
        x1 = torch.empty(1, 64, 7, 7, dtype=torch.bfloat16, device="cuda")
        w1 = torch.empty(256, 64, 1, 1, dtype=torch.bfloat16, device="cuda")
        res = torch.empty(1, 256, 7, 7, dtype=torch.bfloat16, device="cuda")
        out = _ext.fused_conv2d_sm90(x1, w1, None, residual=res, relu=False, config="gemm_bf16_pingpong_128x128x64_c1x1")
        assert out.shape == (1, 256, 7, 7) and out.dtype == torch.bfloat16


def test_sm90_default_config_heuristic():
    def name(*args, **kw):
        return _ext.sm90_configs()[_ext.default_sm90_config(*args, **kw)].name

    assert name(64, 64, 56, 56, 256, 1, 1) == "gemm_f16_coop_128x256x64_c1x1"  # resnet50 layer1, batch 64
    assert name(64, 256, 56, 56, 64, 1, 1) == "gemm_f16_coop_128x128x64_c2x1"  # K = 64: half a 128x256 tile
    assert name(1, 2048, 7, 7, 512, 1, 1, dtype=torch.bfloat16) == "gemm_bf16_coop_128x128x64_c2x1"  # M = 49
    assert name(64, 64, 56, 56, 64, 3, 3, 1, 1) == "conv_f16_ws_128x128x64_c1x1"
    assert name(1, 512, 7, 7, 512, 3, 3, 1, 1) == "conv_f16_ws_64x128x64_c1x1"
    assert name(64, 256, 56, 56, 512, 1, 1, 2, 0) == "conv_f16_ws_128x128x64_c1x1"  # strided 1x1: no TMA GEMM


def test_sm90_generated_files_in_sync():
    """The committed csrc/sm90/*.cu, registry and fused_resnet/_sm90_configs.py are exactly what
    csrc/generate_sm90.py writes from its table (re-run it after editing CONFIGS)."""
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gen = runpy.run_path(os.path.join(root, "csrc", "generate_sm90.py"))
    files = gen["outputs"]()
    for rel, text in files.items():
        with open(os.path.join(root, rel)) as fh:
            assert fh.read() == text, f"{rel} is stale: run python csrc/generate_sm90.py"
    on_disk = {f"csrc/sm90/{f}" for f in os.listdir(os.path.join(root, "csrc", "sm90"))}
    assert on_disk == {f for f in files if f.startswith("csrc/sm90/")}
    assert [c.name for c in gen["CONFIGS"]] == [c.name for c in _ext.sm90_configs()]
    assert all(f"sm90/{c.name}.cu" in _ext.SOURCES for c in _ext.sm90_configs())


def test_build_or_skip_paths(monkeypatch):
    monkeypatch.setenv("CUTLASS_INCLUDE", "/nonexistent")
    monkeypatch.setattr(_ext.loader, "cutlass_include", lambda: None)
    assert "CUTLASS headers not found" in _ext.toolchain_problem()
    monkeypatch.setattr(_ext.loader, "_state", {})
    monkeypatch.setenv("FUSED_RESNET_JIT", "0")
    ok, why = _ext.loader._load()
    assert not ok and "FUSED_RESNET_JIT=0" in why


def test_a_prebuilt_library_that_does_not_load_is_reported_not_raised(monkeypatch, tmp_path):
    # e.g. a wheel's library built for another torch: dlopen fails; auto must go on without it.
    bad = tmp_path / "_C.cpython-311-x86_64-linux-gnu.so"
    bad.write_bytes(b"not an ELF file")
    monkeypatch.setattr(_ext.loader.glob, "glob", lambda pattern: [str(bad)])
    monkeypatch.setenv("FUSED_RESNET_JIT", "0")
    ok, why = _ext.loader._load()
    assert not ok and "does not load with torch" in why and "FUSED_RESNET_JIT=0" in why


def test_sources_digest_follows_every_kernel_file(monkeypatch, tmp_path):
    from fused_resnet import _sources

    (tmp_path / "sm90").mkdir()
    (tmp_path / "sm90" / "k.cu").write_text("kernel v1")
    (tmp_path / "sm90" / "k.cuh").write_text("header v1")
    (tmp_path / "cpu_graph.cpp").write_text("another extension v1")
    monkeypatch.setattr(_sources, "CSRC", str(tmp_path))
    monkeypatch.setattr(_sources, "sm90_sources", lambda: ["sm90/k.cu"])
    d1 = _sources.digest()
    assert _sources.digest() == d1
    (tmp_path / "sm90" / "k.cu").write_text("kernel v2")
    d2 = _sources.digest()
    assert d2 != d1
    (tmp_path / "sm90" / "k.cuh").write_text("header v2")
    d3 = _sources.digest()
    assert d3 != d2
    # A translation unit of another extension (the CPU graph's) does not orphan a prebuilt library.
    (tmp_path / "cpu_graph.cpp").write_text("another extension v2")
    assert _sources.digest() == d3


def test_selector_guards_for_cuda(monkeypatch):
    monkeypatch.setattr(_ext, "status", lambda: (True, "test"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(1, 64, 8, 8, dtype=torch.float16, device="cuda")
        w = torch.empty(64, 64, 3, 3, dtype=torch.float16, device="cuda")
        def why(x, w, groups=1, scale=None):
            reasons = cutlass_reasons(_selector.problem(x, w, groups, scale))
            return reasons[0] if reasons else None

        assert why(x, w) is None
        assert "grouped" in why(x, torch.empty(64, 2, 3, 3, dtype=torch.float16, device="cuda"), 32)
        assert "fp16/bf16" in why(x.float(), w.float())
        x3 = torch.empty(1, 3, 8, 8, dtype=torch.float16, device="cuda")
        assert "multiple of 8" in why(x3, torch.empty(64, 3, 7, 7, dtype=torch.float16, device="cuda"))
        assert "scale" in why(x, w, scale=torch.empty(64, device="cuda"))
    # on a CPU tensor the cuda backend is never usable, and asking for it explicitly raises
    with pytest.raises(fused_resnet.BackendUnavailableError, match="cuda"):
        fused_resnet.ops.fused_conv2d(torch.randn(1, 8, 4, 4), torch.randn(8, 8, 1, 1), backend="cuda")


def test_ahead_of_time_build_with_setup_py(tmp_path):
    """FUSED_RESNET_BUILD_CUDA=1 builds fused_resnet/_C*.so, and the loader prefers it."""
    import os
    import shutil
    import subprocess
    import sys

    why = _ext.toolchain_problem()
    if why:
        pytest.skip(f"no CUDA toolchain here: {why}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for item in ("setup.py", "pyproject.toml", "README.md", "csrc", "fused_resnet"):
        src = os.path.join(root, item)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, tmp_path / item)
    # Without the sm90 kernel TUs (FUSED_RESNET_SM90=0): they add 10+ minutes on 2 cores and the JIT
    # build above already compiles them from the same source list (fused_resnet/_sources.py).
    env = {**os.environ, "FUSED_RESNET_BUILD_CUDA": "1", "FUSED_RESNET_SM90": "0"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    check = ("import torch; from fused_resnet import _ext; ok, why = _ext.loader._load(); print(why); "
             "assert ok and 'prebuilt' in why; "
             "assert torch._C._dispatch_has_kernel_for_dispatch_key('fused_resnet::_conv2d_cutlass', 'CUDA'); "
             "assert torch._C._dispatch_has_kernel_for_dispatch_key('fused_resnet::_conv2d_sm90', 'CUDA')")
    r = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
