"""Ahead-of-time compiles of the production Triton kernels for sm_80 and sm_90 (no GPU needed).

Catches what the interpreter lets through (tile shapes the GPU compiler rejects, shared-memory
overflow) and keeps the heuristic tile configs spill-free. Registers/spills are printed (-s or -rA).
"""
import pytest
import torch

from fused_resnet.bench import conv_shapes
from fused_resnet.triton import aot, configs

import fused_resnet

pytestmark = [pytest.mark.aot,
              pytest.mark.skipif(fused_resnet._env.triton_interpreting(),
                                 reason="AOT compiles need the real (non-interpreted) kernels")]


def _resnet50_configs(batch):
    seen = {}
    for s in conv_shapes("resnet50", batch):
        cfg = configs.heuristic(s.n * s.oh * s.ow, s.cout // s.groups, s.cin // s.groups, s.k * s.k, torch.float16)
        seen.setdefault((cfg, s.k), s.name)
    return seen


PRODUCTION = {**_resnet50_configs(256), **_resnet50_configs(1)}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("cfg_k", list(PRODUCTION), ids=lambda ck: f"{ck[1]}x{ck[1]}-{ck[0].block_m}x{ck[0].block_n}x{ck[0].block_k}")
def test_heuristic_configs_compile_without_spills(arch, cfg_k):
    cfg, k = cfg_k
    r = aot.compile_conv(cfg, "fp16", arch, k, k)
    print(f"sm_{arch} {r.name} ({PRODUCTION[cfg_k]}): {r.registers} regs, {r.spill_bytes} B spilled, "
          f"{r.shared_bytes} B shared, {r.mma}")
    assert r.spill_bytes == 0
    # tensor cores, not FMA; Hopper's wgmma needs 64-row tiles per warpgroup, smaller tiles use mma
    assert r.mma == ("wgmma" if arch == 90 and cfg.block_m >= 64 else "mma")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_other_dtypes_compile(dtype):
    cfg = configs.heuristic(100352, 64, 64, 9, torch.float32 if dtype == "fp32" else torch.bfloat16)
    r = aot.compile_conv(cfg, dtype, 90, 3, 3, has_scale=True)
    print(f"sm_90 {r.name}: {r.registers} regs, {r.spill_bytes} B spilled, {r.mma}")
    assert r.mma == "wgmma"


@pytest.mark.parametrize("arch", [80, 90])
def test_stem_per_tap_candidates_compile(arch):
    """The autotuner's per-tap candidates for the 3-channel stem (16-wide padded tiles) compile."""
    for cfg in [c for c in configs.candidates(64, 3, 49) if not c.flat_k][:3]:
        r = aot.compile_conv(cfg, "fp16", arch, 7, 7, has_res=False)
        print(f"sm_{arch} {r.name}: {r.registers} regs, {r.spill_bytes} B spilled, {r.mma}")
        assert r.mma in ("wgmma", "mma")


def test_add_relu_compiles_vectorized():
    r = aot.compile_add_relu("fp16", 90)
    print(f"sm_90 {r.name}: {r.registers} regs, {r.spill_bytes} B spilled, loads {r.mma}")
    assert r.spill_bytes == 0 and r.mma == "v4"  # 16-byte loads
