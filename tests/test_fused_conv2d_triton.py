"""Triton fused_conv2d numerics under TRITON_INTERPRET=1 (CPU), against a float64 reference.

Tiny versions of every conv class a torchvision ResNet contains, with and without
residual/ReLU/scale, fp32/fp16/bf16 (the launcher upcasts low-precision dot operands when
interpreting). The output buffer is poisoned with NaN first, so an unwritten element fails.
Runs in a subprocess-free way: conftest sets TRITON_INTERPRET=1 before triton kernels are defined
(see tests/triton_env.py) and these tests are skipped if that could not happen.
"""
import copy

import pytest
import torch
import triton
import triton.language as tl
import torchvision.models.resnet as tvr

import fused_resnet
from fused_resnet.ops import fused_conv2d
from fused_resnet.ops.fused_conv2d import fused_conv2d_ref
from fused_resnet.testing import compare, randomize_bn
from fused_resnet.triton.fused_conv2d import _round_to_tf32

from helpers import CL, assert_matches_torchvision

pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(not fused_resnet._env.triton_interpreting(),
                                 reason="needs TRITON_INTERPRET=1 (make test sets it)")]

# (N, Cin, H, W, Cout, k, stride, pad, dil, groups)
CASES = [
    (2, 16, 9, 9, 32, 1, 1, 0, 1, 1),    # 1x1 bottleneck conv, odd spatial size
    (2, 32, 9, 9, 16, 1, 2, 0, 1, 1),    # 1x1 stride-2 downsample
    (1, 16, 8, 8, 16, 3, 1, 1, 1, 1),    # 3x3
    (1, 16, 9, 9, 32, 3, 2, 1, 1, 1),    # 3x3 stride 2 (first block of layer2-4)
    (1, 16, 9, 9, 16, 3, 1, 2, 2, 1),    # dilation 2 (segmentation layer3)
    (1, 16, 11, 11, 16, 3, 1, 4, 4, 1),  # dilation 4 (segmentation layer4)
    (1, 64, 7, 7, 64, 3, 1, 1, 1, 16),   # ResNeXt: 4 channels per group (flattened K)
    (1, 64, 7, 7, 64, 3, 2, 1, 1, 4),    # ResNeXt: 16 channels per group, stride 2
    (2, 3, 17, 17, 16, 7, 2, 3, 1, 1),   # 7x7 stem, 3 input channels (flattened K)
    (1, 40, 5, 5, 24, 3, 1, 1, 1, 1),    # channels not multiples of the tile (masked K and N)
]
@triton.jit
def _round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(y_ptr + offs, _round_to_tf32(tl.load(x_ptr + offs, mask=offs < n)), mask=offs < n)


EPILOGUES = {"bias+relu": (False, False, True), "scale+bias": (True, False, False),
             "residual+relu": (False, True, True), "scale+residual": (True, True, False)}


@pytest.fixture
def poisoned_output(monkeypatch):
    from fused_resnet.triton import fused_conv2d as mod

    real = mod._new_output
    monkeypatch.setattr(mod, "_new_output", lambda shape, like: real(shape, like).fill_(float("nan")))


def _run_case(case, dtype, epilogue, into_residual=False):
    n, cin, h, w, cout, k, s, p, d, g = case
    has_scale, has_res, relu = EPILOGUES[epilogue]
    gen = torch.Generator().manual_seed(hash((case, epilogue)) % 2**31)
    x = torch.randn(n, cin, h, w, generator=gen).contiguous(memory_format=CL)
    wt = torch.randn(cout, cin // g, k, k, generator=gen) / (cin // g * k * k) ** 0.5
    bias = torch.randn(cout, generator=gen)
    scale = torch.rand(cout, generator=gen) + 0.5 if has_scale else None
    oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(n, cout, oh, ow, generator=gen).contiguous(memory_format=CL) if has_res else None
    kw = dict(scale=scale, stride=s, padding=p, dilation=d, groups=g, relu=relu)
    ref = fused_conv2d_ref(x, wt, bias, residual=res, upcast=True, **kw)
    xd, wd = x.to(dtype), wt.to(dtype)
    rd = res.to(dtype) if res is not None else None
    eager = fused_conv2d_ref(xd, wd, bias, residual=rd, **kw)
    with torch.no_grad():
        out = fused_conv2d(xd, wd, bias, residual=rd, backend="triton", _into_residual=into_residual, **kw)
    if into_residual:
        assert out is rd
    assert out.dtype == dtype and out.is_contiguous(memory_format=CL)
    cmp = compare(out, eager, ref)
    assert cmp.ok, str(cmp)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[5]}s{c[6]}d{c[8]}g{c[9]}c{c[1]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_conv_classes(case, dtype, poisoned_output):
    _run_case(case, dtype, "residual+relu" if case[6] == 1 and case[1] == case[4] else "bias+relu")


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_epilogues(epilogue, dtype, poisoned_output):
    _run_case(CASES[3], dtype, epilogue)


@pytest.mark.parametrize("case", [CASES[6], CASES[8]], ids=["resnext-4ch", "stem-3ch"])
def test_narrow_channels_per_tap_walk(case, monkeypatch, poisoned_output):
    """The autotuner may pick the per-tap K walk for < 16 channels per group (padded 16-wide tiles)."""
    import dataclasses

    from fused_resnet.triton import configs

    real = configs.interpreter_config
    monkeypatch.setattr(configs, "interpreter_config",
                        lambda *a: dataclasses.replace(real(*a), flat_k=False, block_k=16))
    assert not configs.interpreter_config(64, 16, 3, 49).flat_k
    _run_case(case, torch.float16, "bias+relu")


def test_into_residual():
    _run_case(CASES[0], torch.float16, "residual+relu", into_residual=True)


def test_nan_propagates():
    x = torch.randn(1, 16, 6, 6).contiguous(memory_format=CL)
    x[0, 1, 2, 2] = float("nan")
    w = torch.randn(16, 16, 3, 3)
    out = fused_conv2d(x, w, torch.zeros(16), padding=1, backend="triton")
    assert torch.equal(out.isnan(), fused_conv2d_ref(x, w, torch.zeros(16), padding=1).isnan())


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_whole_block_through_triton(block, dtype):
    torch.manual_seed(0)
    if block == "basic":
        ds = torch.nn.Sequential(tvr.conv1x1(16, 32, 2), torch.nn.BatchNorm2d(32))
        tv = tvr.BasicBlock(16, 32, 2, ds)
    else:
        ds = torch.nn.Sequential(tvr.conv1x1(16, 64, 1), torch.nn.BatchNorm2d(64))
        tv = tvr.Bottleneck(16, 16, 1, ds, groups=1, base_width=64)
    randomize_bn(tv).eval()
    x = torch.randn(2, 16, 9, 9)
    fused = fused_resnet.convert(copy.deepcopy(tv).to(dtype), backend="triton")
    assert_matches_torchvision(tv, x, fused=fused, dtype=dtype)
    rows = fused_resnet.explain(fused, x.to(dtype)).rows
    assert rows and all(r.backend == "triton" for r in rows)


def test_add_relu_triton():
    from fused_resnet.ops import add_relu

    for fmt in (torch.contiguous_format, CL):
        x = torch.randn(2, 8, 5, 7).contiguous(memory_format=fmt)
        y = torch.randn(2, 8, 5, 7).contiguous(memory_format=fmt)
        x[0, 0, 0, 0] = float("nan")
        out = add_relu(x, y, backend="triton")
        torch.testing.assert_close(out, torch.relu(x + y), equal_nan=True)
        assert out.is_contiguous(memory_format=fmt)


def test_round_to_tf32_matches_round_to_nearest():
    """The GPU fp32 path rounds dot operands to tf32 before the tensor cores (they truncate)."""
    x = torch.cat([torch.randn(1000) * 10 ** torch.randint(-5, 5, (1000,)).float(),
                   torch.tensor([1.0, -1.0, 0.0, float("nan"), float("inf"), 1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -11])])
    y = torch.empty_like(x)
    _round_kernel[(1,)](x, y, x.numel(), BLOCK=2048)
    # reference: nearest representable value with 10 mantissa bits (ties away from zero)
    bits = x.view(torch.int32)
    ref = ((bits + 0x1000) & -8192).view(torch.float32)
    assert torch.equal(y.nan_to_num(), ref.nan_to_num()) and y[-4].isnan()
    rel = ((y - x).abs() / x.abs().clamp_min(1e-30))[torch.isfinite(x) & (x != 0)]
    assert float(rel.max()) <= 2 ** -11 + 1e-12  # half a tf32 ulp
    assert y[-2] == 1 + 2 ** -10 and y[-1] == 1 + 2 ** -9  # a tie rounds away from zero
