"""fused_resnet.BasicBlock / Bottleneck / convert / builders against torchvision, on CPU (eager backend)."""
import copy

import pytest
import torch
import torchvision
import torchvision.models.resnet as tvr
from torchvision.ops.misc import FrozenBatchNorm2d

import fused_resnet
from fused_resnet.testing import randomize_bn

from helpers import CL, assert_matches_torchvision, random_model

DTYPES = [torch.float32, torch.bfloat16]


# Every builder; deep ones on small inputs. 32x32 still runs every layer (layer4 at 1x1).
@pytest.mark.parametrize("name", fused_resnet.models.NAMES)
def test_builder_matches_torchvision(name):
    tv = random_model(getattr(torchvision.models, name))
    fused = random_model(getattr(fused_resnet, name))  # same seed -> same weights
    fused.load_state_dict(tv.state_dict(), strict=True)
    assert type(fused) is fused_resnet.ResNet and isinstance(fused, tvr.ResNet)
    x = torch.randn(1, 3, 32, 32)
    for dtype in DTYPES:
        assert_matches_torchvision(tv, x, fused=copy.deepcopy(fused).to(dtype), dtype=dtype)


@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet50_both_formats(fmt, dtype):
    tv = random_model(torchvision.models.resnet50)
    x = torch.randn(2, 3, 64, 64)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=CL)
    assert_matches_torchvision(tv, x, dtype=dtype)


# Block configurations: (block, inplanes, planes, stride, downsample?, groups, base_width, dilation, H)
BLOCK_CASES = [
    (tvr.BasicBlock, 16, 16, 1, False, 1, 64, 1, 9),   # identity block, odd size
    (tvr.BasicBlock, 16, 32, 2, True, 1, 64, 1, 9),    # stride-2 downsample, odd size
    (tvr.Bottleneck, 64, 16, 1, False, 1, 64, 1, 8),   # identity bottleneck
    (tvr.Bottleneck, 32, 16, 2, True, 1, 64, 1, 7),    # stride-2 downsample bottleneck
    (tvr.Bottleneck, 64, 16, 1, True, 4, 16, 1, 8),    # ResNeXt-style groups
    (tvr.Bottleneck, 64, 16, 1, True, 1, 128, 1, 8),   # wide
    (tvr.Bottleneck, 64, 16, 1, True, 1, 64, 2, 8),    # dilation 2 (segmentation)
    (tvr.Bottleneck, 64, 16, 1, False, 1, 64, 4, 9),   # dilation 4
]


def _make_block(block, inplanes, planes, stride, ds, groups, base_width, dilation, norm=torch.nn.BatchNorm2d):
    downsample = None
    if ds:
        downsample = torch.nn.Sequential(tvr.conv1x1(inplanes, planes * block.expansion, stride),
                                         norm(planes * block.expansion))
    torch.manual_seed(0)
    m = block(inplanes, planes, stride, downsample, groups, base_width, dilation, norm)
    return randomize_bn(m).eval()


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: f"{c[0].__name__}-s{c[3]}-g{c[5]}-w{c[6]}-d{c[7]}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_block_variants(case, dtype, fmt):
    block, inplanes, planes, stride, ds, groups, bw, dil, hw = case
    tv = _make_block(block, inplanes, planes, stride, ds, groups, bw, dil)
    x = torch.randn(2, inplanes, hw, hw)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=CL)
    assert_matches_torchvision(tv, x, dtype=dtype)


def test_frozen_batchnorm():
    tv = _make_block(tvr.Bottleneck, 32, 16, 2, True, 1, 64, 1, norm=FrozenBatchNorm2d)
    assert_matches_torchvision(tv, torch.randn(2, 32, 8, 8))


def test_zero_init_residual_and_isinstance():
    m = fused_resnet.resnet18(zero_init_residual=True)
    assert all(isinstance(b, tvr.BasicBlock) for b in m.modules() if isinstance(b, fused_resnet.BasicBlock))
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for b in m.modules() if isinstance(b, tvr.BasicBlock))
    # torchvision's own ResNet built from the fused blocks: zero_init_residual sees them as Bottlenecks
    m = tvr.ResNet(fused_resnet.Bottleneck, [1, 1, 1, 1], zero_init_residual=True)
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in m.modules() if isinstance(b, fused_resnet.Bottleneck))


def test_convert_in_place_shares_parameters():
    tv = random_model(torchvision.models.resnet18)
    params = {n: p.data_ptr() for n, p in tv.named_parameters()}
    out = fused_resnet.convert(tv)
    assert out is tv and type(tv) is fused_resnet.ResNet
    assert type(tv.layer1[0]) is fused_resnet.BasicBlock
    assert {n: p.data_ptr() for n, p in tv.named_parameters()} == params


def test_detection_backbone():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    det = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    randomize_bn(det)
    body = det.backbone.body  # IntermediateLayerGetter over a ResNet-50 with FrozenBatchNorm2d
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = {k: v for k, v in copy.deepcopy(body).double()(x.double()).items()}
        tv_out = body(x)
    fused_resnet.convert(det)
    assert type(body.layer1[0]) is fused_resnet.Bottleneck
    with torch.no_grad():
        out = body(x)
    from fused_resnet.testing import compare

    for k in ref:
        assert out[k].is_contiguous() == tv_out[k].is_contiguous()
        cmp = compare(out[k], tv_out[k], ref[k])
        assert cmp.ok, (k, str(cmp))


def test_segmentation_backbone_dilated():
    from torchvision.models.segmentation import deeplabv3_resnet50

    torch.manual_seed(0)
    seg = randomize_bn(deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False)).eval()
    x = torch.randn(1, 3, 48, 48)

    class Out(torch.nn.Module):  # the backbone returns {"out": features}
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return self.body(x)["out"]

    tv = Out(seg.backbone)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    assert type(fused.body.layer4[0]) is fused_resnet.Bottleneck and fused.body.layer4[0].conv2.dilation == (2, 2)
    assert_matches_torchvision(tv, x, fused=fused)


def test_train_mode_parity():
    tv = random_model(torchvision.models.resnet18).train()
    fused = fused_resnet.convert(copy.deepcopy(tv)).train()
    x = torch.randn(4, 3, 32, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = tv(xa), fused(xb)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)
    for (n, pa), (_, pb) in zip(tv.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=0, atol=0, msg=n)
    for (n, ba), (_, bb) in zip(tv.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=n)


def test_eval_mode_gradients():
    """Eval mode with autograd on: gradients (input and parameters) match torchvision's eval forward."""
    tv = random_model(torchvision.models.resnet18)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    tv, fused = tv.double(), fused.double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    tv(xa).sum().backward()
    fused(xb).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    for (n, pa), (_, pb) in zip(tv.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, msg=n)


def test_state_dict_round_trips():
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.resnet50()
    fused.load_state_dict(tv.state_dict(), strict=True)
    back = torchvision.models.resnet50()
    back.load_state_dict(fused.state_dict(), strict=True)
    assert list(fused.state_dict()) == list(tv.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), tv(x), rtol=0, atol=0)


def test_cache_invalidation():
    tv = _make_block(tvr.Bottleneck, 32, 16, 2, True, 1, 64, 1)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        fused(x)  # fills the cache
        for mutate in (lambda m: m.bn2.running_var.mul_(3.0),
                       lambda m: m.bn1.running_mean.add_(0.5),
                       lambda m: m.conv3.weight.mul_(-1.0),
                       lambda m: m.downsample[1].weight.add_(1.0),
                       lambda m: setattr(m.bn2, "eps", 0.5)):
            mutate(tv)
            mutate(fused)
            torch.testing.assert_close(fused(x), tv(x), rtol=1e-5, atol=1e-5)
        # load_state_dict copies in place
        other = _make_block(tvr.Bottleneck, 32, 16, 2, True, 1, 64, 1)
        randomize_bn(other, torch.Generator().manual_seed(7))
        tv.load_state_dict(other.state_dict())
        fused.load_state_dict(other.state_dict())
        torch.testing.assert_close(fused(x), tv(x), rtol=1e-5, atol=1e-5)
        # train step updates running stats -> eval uses the new ones
        fused.train()(x)
        tv.train()(x)
        fused.eval()
        tv.eval()
        torch.testing.assert_close(fused(x), tv(x), rtol=1e-5, atol=1e-5)
        # dtype change
        torch.testing.assert_close(fused.double()(x.double()), tv.double()(x.double()))


def test_torch_compile_fullgraph():
    tv = _make_block(tvr.Bottleneck, 32, 16, 2, True, 1, 64, 1)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_resnet18():
    tv = random_model(torchvision.models.resnet18)
    compiled = torch.compile(fused_resnet.convert(copy.deepcopy(tv)), fullgraph=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), tv(x), rtol=1e-4, atol=1e-4)


# --- bad input: same behaviour as torchvision ------------------------------------------------------

def _pair_of_blocks():
    tv = _make_block(tvr.BasicBlock, 16, 16, 1, False, 1, 64, 1)
    return tv, fused_resnet.convert(copy.deepcopy(tv))


@pytest.mark.parametrize("bad", [
    torch.randn(16, 8, 8),            # 3D (unbatched)
    torch.randn(1, 2, 16, 8, 8),      # 5D
    torch.randn(2, 8, 8, 8),          # wrong channel count
    torch.randn(2, 16, 8, 8, dtype=torch.float64),  # dtype mismatch with weights
], ids=["3d", "5d", "channels", "dtype"])
def test_bad_input_raises_like_torchvision(bad):
    tv, fused = _pair_of_blocks()
    with pytest.raises(Exception) as tv_err:
        tv(bad)
    with pytest.raises(type(tv_err.value)) as err:
        fused(bad)
    assert str(err.value) == str(tv_err.value)


def test_empty_batch_and_noncontiguous_and_nan():
    tv, fused = _pair_of_blocks()
    with torch.no_grad():
        empty = torch.randn(0, 16, 8, 8)
        assert fused(empty).shape == tv(empty).shape == (0, 16, 8, 8)
        x = torch.randn(2, 16, 8, 16)[..., ::2]  # non-contiguous view
        assert not x.is_contiguous()
        torch.testing.assert_close(fused(x), tv(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(2, 16, 8, 8)
        x[0, 3, 4, 4] = float("nan")
        x[1, 5, 2, 2] = float("inf")
        out, ref = fused(x), tv(x)
        assert torch.equal(out.isnan(), ref.isnan())
        assert torch.equal(out.isinf(), ref.isinf())


def test_explain_reports_backends_and_reasons():
    m = fused_resnet.resnet18().eval()
    report = fused_resnet.explain(m, torch.randn(1, 3, 32, 32))
    assert len(report.rows) == 20  # 1 stem + 16 block convs + 3 downsample
    assert all(r.backend == "eager" and r.reason == "eager: CPU tensor" for r in report.rows)
    assert report.rows[0].name == "conv1" and report.rows[1].name == "layer1.0.conv1"
    assert "20 convs" in str(report)
    report = fused_resnet.explain(m.train(), torch.randn(2, 3, 32, 32))
    assert len(report.rows) == 20 and all(r.reason == "eager: training mode" for r in report.rows)
    tv = torchvision.models.resnet18().eval()
    report = fused_resnet.explain(tv, torch.randn(1, 3, 32, 32))
    assert all("not converted" in r.reason for r in report.rows)


def test_unfusable_norm_falls_back():
    m = tvr.BasicBlock(8, 8, norm_layer=lambda c: torch.nn.GroupNorm(2, c)).eval()
    ref = copy.deepcopy(m)
    fused_resnet.convert(m)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)
    (row,) = {r.reason for r in fused_resnet.explain(m, x).rows}
    assert "GroupNorm cannot be folded" in row
