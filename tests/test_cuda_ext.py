"""The CUDA extension on a machine without a GPU: it builds with nvcc for sm_80/sm_90 and loads;
op schemas, fake tensors, selection logic and the build-or-skip paths. Its kernels run only in
the GPU tests (tests/test_gpu.py::test_cuda_backend_*)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fused_resnet
from fused_resnet import _ext, _selector


@pytest.fixture(scope="session")
def built_library():
    why = _ext.toolchain_problem()
    if why:
        pytest.skip(f"no CUDA toolchain here: {why}")
    path = _ext.build()  # compiles on first use (a few minutes on 2 cores), cached afterwards
    torch.ops.load_library(path)
    return path


def test_extension_builds_and_registers_cuda_kernels(built_library):
    for op in ("_conv2d_cutlass", "_bias_residual_act_cuda", "_add_relu_cuda"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fused_resnet::{op}", "CUDA"), op


def test_fake_shapes_trace_without_gpu():
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(2, 64, 15, 15, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        w = torch.empty(128, 64, 3, 3, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
        out = torch.ops.fused_resnet._conv2d_cutlass(x, w, torch.empty(128), None, [2, 2], [1, 1], [1, 1], True, 0)
        assert out.shape == (2, 128, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
        y = torch.ops.fused_resnet._add_relu_cuda(x, x)
        assert y.shape == x.shape


def test_build_or_skip_paths(monkeypatch):
    monkeypatch.setenv("CUTLASS_INCLUDE", "/nonexistent")
    monkeypatch.setattr(_ext, "cutlass_include", lambda: None)
    assert "CUTLASS headers not found" in _ext.toolchain_problem()
    monkeypatch.setattr(_ext, "_state", {})
    monkeypatch.setenv("FUSED_RESNET_JIT", "0")
    ok, why = _ext._load()
    assert not ok and "FUSED_RESNET_JIT=0" in why


def test_selector_guards_for_cuda(monkeypatch):
    monkeypatch.setattr(_selector, "_cuda_ext_status", lambda: (True, "test"))
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(1, 64, 8, 8, dtype=torch.float16, device="cuda")
        w = torch.empty(64, 64, 3, 3, dtype=torch.float16, device="cuda")
        assert _selector._cuda_guard(x, w, 1) is None
        assert "grouped" in _selector._cuda_guard(x, torch.empty(64, 2, 3, 3, dtype=torch.float16, device="cuda"), 32)
        assert "fp16/bf16" in _selector._cuda_guard(x.float(), w.float(), 1)
        x3 = torch.empty(1, 3, 8, 8, dtype=torch.float16, device="cuda")
        assert "multiple of 8" in _selector._cuda_guard(x3, torch.empty(64, 3, 7, 7, dtype=torch.float16, device="cuda"), 1)
        assert "scale" in _selector._cuda_guard(x, w, 1, scale=torch.empty(64, device="cuda"))
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
    env = {**os.environ, "FUSED_RESNET_BUILD_CUDA": "1"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    check = ("import torch; from fused_resnet import _ext; ok, why = _ext._load(); print(why); "
             "assert ok and 'prebuilt' in why; "
             "assert torch._C._dispatch_has_kernel_for_dispatch_key('fused_resnet::_conv2d_cutlass', 'CUDA')")
    r = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
