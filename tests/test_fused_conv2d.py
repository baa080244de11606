"""fused_resnet.ops.fused_conv2d: eager backend (CPU) numerics, dispatch and argument checks.

The Triton kernel's own numerics are in tests/test_fused_conv2d_triton.py (interpreter) and its
GPU-only compile checks in tests/test_triton_aot.py.
"""
import pytest
import torch

import fused_resnet
from fused_resnet.ops import fused_conv2d
from fused_resnet.ops.fused_conv2d import fused_conv2d_ref
from fused_resnet.testing import compare

CL = torch.channels_last

# (N, Cin, H, W, Cout, k, stride, pad, dil, groups): one row per ResNet conv class, tiny.
CASES = [
    (2, 8, 9, 9, 16, 1, 1, 0, 1, 1),    # 1x1 (bottleneck conv1/conv3), odd spatial
    (2, 8, 9, 9, 16, 1, 2, 0, 1, 1),    # 1x1 stride-2 downsample
    (2, 8, 8, 8, 8, 3, 1, 1, 1, 1),     # 3x3
    (1, 8, 9, 9, 8, 3, 2, 1, 1, 1),     # 3x3 stride 2
    (1, 8, 9, 9, 8, 3, 1, 2, 2, 1),     # 3x3 dilation 2
    (1, 8, 12, 12, 8, 3, 1, 4, 4, 1),   # 3x3 dilation 4
    (2, 16, 7, 7, 16, 3, 1, 1, 1, 4),   # grouped (ResNeXt)
    (1, 3, 15, 15, 8, 7, 2, 3, 1, 1),   # 7x7 stem, 3 input channels
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[5]}s{c[6]}d{c[8]}g{c[9]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("epilogue", ["bias+relu", "scale+bias", "residual+relu"])
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_eager_matches_float64_reference(case, dtype, epilogue, fmt):
    n, cin, h, w, cout, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, w, generator=gen)
    wt = torch.randn(cout, cin // g, k, k, generator=gen) / (cin // g * k * k) ** 0.5
    bias = torch.randn(cout, generator=gen)
    scale = torch.rand(cout, generator=gen) + 0.5 if epilogue == "scale+bias" else None
    oh = (h + 2 * p - d * (k - 1) - 1) // s + 1
    ow = (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(n, cout, oh, ow, generator=gen) if epilogue == "residual+relu" else None
    relu = epilogue != "scale+bias"
    if fmt == "channels_last":
        x = x.contiguous(memory_format=CL)
        res = res.contiguous(memory_format=CL) if res is not None else None
    kw = dict(scale=scale, stride=s, padding=p, dilation=d, groups=g, residual=res, relu=relu)
    ref = fused_conv2d_ref(x, wt, bias, upcast=True, **{k_: v for k_, v in kw.items()})
    xd, wd = x.to(dtype), wt.to(dtype)
    rd = res.to(dtype) if res is not None else None
    out = fused_conv2d(xd, wd, bias, backend="eager", **{**kw, "residual": rd})
    eager = fused_conv2d_ref(xd, wd, bias, **{**kw, "residual": rd})  # plain torch ops in dtype
    assert out.dtype == dtype and out.shape == ref.shape
    assert out.is_contiguous(memory_format=CL) == (fmt == "channels_last")
    cmp = compare(out, eager, ref)
    assert cmp.ok, str(cmp)


def test_nan_propagates_through_relu():
    x = torch.randn(1, 8, 6, 6).contiguous(memory_format=CL)
    x[0, 2, 3, 3] = float("nan")
    w = torch.randn(8, 8, 3, 3)
    out = fused_conv2d(x, w, torch.zeros(8), padding=1)
    ref = fused_conv2d_ref(x, w, torch.zeros(8), padding=1)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), ref.isnan())


def test_into_residual_writes_over_residual():
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    w = torch.randn(8, 8, 1, 1)
    res = torch.randn(2, 8, 5, 5).contiguous(memory_format=CL)
    expected = fused_conv2d_ref(x, w, None, residual=res)
    with torch.no_grad():
        out = fused_conv2d(x, w, None, residual=res, _into_residual=True)
    assert out is res
    torch.testing.assert_close(res, expected)


def test_autograd_path_gives_correct_gradients():
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fused_conv2d(x, w, b, padding=1), (x, w, b))


@pytest.mark.parametrize("bad, err, match", [
    (dict(x=torch.randn(4, 5, 5)), ValueError, "4D input"),
    (dict(x=torch.randn(1, 3, 5, 5)), RuntimeError, "to have 4 channels"),
    (dict(x=torch.randn(1, 4, 5, 5, dtype=torch.float64)), RuntimeError, "should be the same"),
    (dict(bias=torch.randn(3)), ValueError, "bias must have shape"),
    (dict(residual=torch.randn(1, 4, 4, 4)), ValueError, "residual shape"),
])
def test_argument_checks(bad, err, match):
    args = dict(x=torch.randn(1, 4, 5, 5), weight=torch.randn(4, 4, 3, 3), bias=None, residual=None)
    args.update(bad)
    with pytest.raises(err, match=match):
        fused_conv2d(args["x"], args["weight"], args["bias"], padding=1, residual=args["residual"])


def test_backend_resolution(monkeypatch):
    from fused_resnet._selector import requested_backend

    assert requested_backend() == "auto"
    monkeypatch.setenv("FUSED_RESNET_BACKEND", "eager")
    assert requested_backend() == "eager"
    with fused_resnet.use_backend("triton"):
        assert requested_backend() == "triton"
        assert requested_backend("cuda") == "cuda"
    monkeypatch.setenv("FUSED_RESNET_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown fused_resnet backend"):
        requested_backend()
    assert "eager" in fused_resnet.available_backends()


def test_opcheck():
    x = torch.randn(1, 4, 5, 5).contiguous(memory_format=CL)
    w = torch.randn(4, 4, 3, 3)
    args = (x, w, torch.randn(4), None, [1, 1], [1, 1], [1, 1], 1, None, True, "eager")
    torch.library.opcheck(torch.ops.fused_resnet.fused_conv2d.default, args)


# --- the error rule cannot pass vacuously ----------------------------------------------------------

def test_compare_fails_when_eager_overflowed():
    from fused_resnet.testing import compare

    ref = torch.tensor([1.0, 70000.0, -2.0], dtype=torch.float64)
    eager = torch.tensor([1.0, float("inf"), -2.0], dtype=torch.float16)  # fp16 overflow
    for fused in (eager.clone(), torch.tensor([5.0, 1.0, 3.0], dtype=torch.float16)):
        cmp = compare(fused, eager, ref)
        assert not cmp.ok and "NOT COMPARABLE" in str(cmp), str(cmp)


def test_compare_nan_placement_and_values():
    from fused_resnet.testing import compare, max_rel_error

    ref = torch.tensor([1.0, float("nan"), float("-inf"), 4.0], dtype=torch.float64)
    good = ref.float().clone()
    assert compare(good, good, ref).ok
    assert max_rel_error(torch.tensor([1.0, 0.0, float("-inf"), 4.0]), ref) == float("inf")  # NaN lost
    assert max_rel_error(torch.tensor([1.0, float("nan"), float("inf"), 4.0]), ref) == float("inf")  # sign
    assert max_rel_error(torch.tensor([1.5, float("nan"), float("-inf"), 4.0]), ref) == pytest.approx(0.125)


def test_fit_input_keeps_fp16_activations_in_range():
    import torchvision

    from fused_resnet.testing import fit_input, forward_with_peak, randomize_bn

    torch.manual_seed(0)
    m = randomize_bn(torchvision.models.resnet18()).eval().double()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64) * 1e4  # activations far beyond fp16's 65504
    assert forward_with_peak(m, x)[1] > 65504
    xs, scale, out = fit_input(m, x, torch.float16)
    assert scale < 1 and forward_with_peak(m, xs)[1] <= 65504 / 64
    torch.testing.assert_close(out, m(xs))
