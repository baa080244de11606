"""Op level: fused_conv2d per backend vs the library conv alone vs conv + BN + ReLU (+ add).

Shapes: distinct ResNet-50 convs (CPU: batch 1 and 56x56-class layers only, to stay short)."""
import pytest
import torch
import torch.nn.functional as F

from fused_resnet._packing import mark_stable
from fused_resnet.bench import conv_shapes
from fused_resnet.ops import fused_conv2d
from fused_resnet.ops.fused_conv2d import fused_conv2d_ref

from conftest import DEVICE, DTYPE, GPU, fused_backends, timed

BATCH = 32 if GPU else 1
_seen = set()
SHAPES = [s for s in conv_shapes("resnet50", BATCH)
          if (key := (s.cin, s.h, s.cout, s.k, s.stride, s.residual)) not in _seen and not _seen.add(key)]
if not GPU:
    SHAPES = [s for s in SHAPES if s.name.startswith(("layer1.0", "layer3.1"))]
PROVIDERS = ["conv_alone", "conv_bn_relu"] + [f"fused_{b}" for b in fused_backends()]


def _inputs(s):
    cl = torch.channels_last
    x = torch.randn(s.n, s.cin, s.h, s.w, device=DEVICE, dtype=DTYPE).contiguous(memory_format=cl)
    w = mark_stable((torch.randn(s.cout, s.cin // s.groups, s.k, s.k, device=DEVICE, dtype=DTYPE) * 0.05)
                    .contiguous(memory_format=cl))
    b = torch.randn(s.cout, device=DEVICE)
    res = (torch.randn(s.n, s.cout, s.oh, s.ow, device=DEVICE, dtype=DTYPE).contiguous(memory_format=cl)
           if s.residual else None)
    return x, w, b, res


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("s", SHAPES, ids=lambda s: s.name)
def test_fused_conv2d(benchmark, s, provider):
    x, w, b, res = _inputs(s)
    args = (s.stride, s.padding, s.dilation, s.groups)
    bn = torch.nn.BatchNorm2d(s.cout).to(DEVICE, DTYPE).eval()
    if provider == "conv_alone":
        fn = lambda: F.conv2d(x, w, None, *args)  # noqa: E731
    elif provider == "conv_bn_relu":
        def fn():
            y = bn(F.conv2d(x, w, None, *args))
            return F.relu(y + res if res is not None else y)
    else:
        fn = lambda: fused_conv2d(x, w, b, stride=s.stride, padding=s.padding, dilation=s.dilation,  # noqa: E731
                                  groups=s.groups, residual=res, relu=s.relu, backend=provider[len("fused_"):])
        ref = fused_conv2d_ref(x, w, b, stride=s.stride, padding=s.padding, dilation=s.dilation, groups=s.groups,
                               residual=res, relu=s.relu)
        torch.testing.assert_close(fn(), ref, rtol=2e-2, atol=2e-2)  # sanity, not the numerics test
    benchmark.extra_info.update(shape=f"{s.k}x{s.k}/{s.stride} {s.cin}->{s.cout} {s.h}x{s.w}", batch=s.n,
                                gflop=s.flops / 1e9)
    benchmark(timed(fn))
