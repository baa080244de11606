"""fused_resnet.convert on timm 1.0 ResNets (timm.models.resnet), on CPU (eager backend).

timm models are built with pretrained=False; zero_init_last zeroes each block's last BN weight, so
randomize_bn gives every BN realistic statistics first (else the residual branches compare zeros).
Images are 64x64, batch 2: every layer runs (layer4 at 2x2) and the file stays quick on 2 cores.
"""
import copy
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

import fused_resnet  # noqa: E402
from fused_resnet import timm_resnet  # noqa: E402
from fused_resnet.testing import compare, randomize_bn  # noqa: E402

from helpers import CL  # noqa: E402


def _model(name, **kwargs):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, **kwargs)
    return randomize_bn(m, torch.Generator().manual_seed(0)).eval()


def _x(batch=2, size=64):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def _check_against_timm(m, x, dtype=torch.float32):
    """Converted copy vs timm's forward in ``dtype``, both against the float64 reference (ARCHITECTURE.md's
    rule). Returns the converted model."""
    with torch.no_grad():
        ref = copy.deepcopy(m).double()(x.double())
    m = m.to(dtype)
    fused = fused_resnet.convert(copy.deepcopy(m))
    xd = x.to(dtype)
    with torch.no_grad():
        eager = m(xd)
        out = fused(xd)
    assert out.dtype == eager.dtype and out.shape == eager.shape
    cmp = compare(out, eager, ref)
    assert cmp.ok, str(cmp)
    return fused


# (model, convs in the forward, convs that run fused). seresnet50: the SE gates' two 1x1 convs per
# block (16 blocks) stay timm's. resnet50d: deep stem (3 convs) + avg-pool downsample.
# resnetblur50: BlurPool2d after each stride-2 conv2 and in the stem pool (no nn.Conv2d of its own).
MODELS = [
    ("resnet18", 20, 20),
    ("resnet50", 53, 53),
    ("resnet50d", 55, 55),
    ("seresnet50", 85, 53),
    ("resnext50_32x4d", 53, 53),
    ("resnetblur50", 53, 53),
]


@pytest.mark.parametrize("name,total,fused_convs", MODELS, ids=[m[0] for m in MODELS])
def test_model_matches_timm(name, total, fused_convs):
    m = _model(name)
    keys = list(m.state_dict())
    fused = _check_against_timm(m, _x())
    assert type(fused) is timm_resnet.ResNet and isinstance(fused, timm.models.resnet.ResNet)
    assert list(fused.state_dict()) == keys
    report = fused_resnet.explain(fused, _x(batch=1))
    assert len(report.rows) == total
    assert report.fused_count() == fused_convs, str(report)
    assert all(r.reason == "eager: CPU tensor" for r in report.rows if r.fused)
    assert all("se (SEModule) runs as timm's" in r.reason for r in report.rows if not r.fused)


@pytest.mark.parametrize("name,dtype", [("resnet50d", torch.bfloat16), ("seresnet50", torch.float32)])
def test_channels_last_input(name, dtype):
    m = _model(name)
    x = _x().contiguous(memory_format=CL)
    fused = _check_against_timm(m, x, dtype)
    with torch.no_grad():
        feats, timm_feats = fused.forward_features(x.to(dtype)), m.to(dtype).forward_features(x.to(dtype))
    assert feats.is_contiguous(memory_format=CL) == timm_feats.is_contiguous(memory_format=CL)
    assert feats.is_contiguous() == timm_feats.is_contiguous()


def test_more_stems_and_attention():
    """deep_tiered stem (resnet26t); resnetrs's conv stem pool + SE; ECA attention (Conv1d gate)."""
    for name, fused_convs in (("resnet26t", 31), ("resnetrs50", 56), ("ecaresnet50d", 55)):
        fused = _check_against_timm(_model(name), _x(batch=1, size=32))
        assert fused_resnet.explain(fused, _x(batch=1, size=32)).fused_count() == fused_convs, name


def test_convert_shares_parameters_and_lazy_import():
    m = _model("resnet18")
    params = {n: p.data_ptr() for n, p in m.named_parameters()}
    assert fused_resnet.convert(m) is m
    assert type(m.layer1[0]) is timm_resnet.BasicBlock
    assert {n: p.data_ptr() for n, p in m.named_parameters()} == params
    code = ("import sys, torchvision, fused_resnet; fused_resnet.convert(torchvision.models.resnet18()); "
            "assert 'timm' not in sys.modules, 'fused_resnet imported timm'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_train_mode_parity():
    """Train mode runs timm's forward: outputs, gradients and running statistics are timm's exactly."""
    m = _model("resnet26t", drop_path_rate=0.1).train()
    fused = fused_resnet.convert(copy.deepcopy(m)).train()
    x = _x(batch=4, size=32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(5)  # drop_path draws random numbers: same seed for both
    ya = m(xa)
    torch.manual_seed(5)
    yb = fused(xb)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)
    for (n, pa), (_, pb) in zip(m.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=0, atol=0, msg=n)
    for (n, ba), (_, bb) in zip(m.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(bb, ba, rtol=0, atol=0, msg=n)


def test_eval_with_autograd_runs_timm_forward():
    m = _model("seresnet50")
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = _x(batch=1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = m(xa), fused(xb)
    torch.testing.assert_close(yb, ya, rtol=0, atol=0)
    ya.sum().backward()
    yb.sum().backward()
    # Same graph, so the same gradients up to torch's own run-to-run spread: two identical timm
    # seresnet50 models (no fused_resnet imported) give input gradients differing by up to 7.5e-8 in
    # 5 of 24 fresh processes on a 2-core CPU (benchmarks/NOTES.md), so bit equality is not torch's.
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-5, atol=1e-6)
    assert type(yb.grad_fn) is type(ya.grad_fn)
    # explain() traces under no_grad, so ask the block directly
    assert fused.layer1[0]._fusion_problem(torch.randn(1, 64, 8, 8)).startswith("eager: autograd is recording")


# Fallbacks: timm's forward exactly, and explain() names the reason for every conv.
FALLBACKS = [
    ("resnet50_gn", {}, "norm layer GroupNorm cannot be folded"),
    ("resnet18", {"act_layer": "silu"}, "activation SiLU is not ReLU"),
    ("resnet18", {"norm_layer": timm.layers.BatchNormAct2d}, "norm layer BatchNormAct2d cannot be folded"),
]


@pytest.mark.parametrize("name,kwargs,why", FALLBACKS, ids=["groupnorm", "silu", "batchnormact"])
def test_fallbacks_are_timms_forward(name, kwargs, why):
    m = _model(name, **kwargs)
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = _x(batch=1, size=32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x), rtol=0, atol=0)
    report = fused_resnet.explain(fused, x)
    assert report.fused_count() == 0
    assert {r.reason for r in report.rows} == {f"eager: {why}"}


def test_grad_checkpointing_falls_back():
    m = _model("resnet18")
    fused = fused_resnet.convert(copy.deepcopy(m))
    fused.set_grad_checkpointing(True)
    x = _x(batch=1, size=32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x), rtol=0, atol=0)
    report = fused_resnet.explain(fused, x)
    assert report.fused_count() == 0
    assert {r.reason for r in report.rows} == {"eager: timm grad_checkpointing is on"}
    fused.set_grad_checkpointing(False)
    assert fused_resnet.explain(fused, x).fused_count() == 20


def test_foreign_drop_module_falls_back():
    m = _model("resnet18")
    m.layer2[1].drop_path = torch.nn.Dropout(0.1).eval()  # not timm's DropPath: may act differently
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = _x(batch=1, size=32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x), rtol=1e-5, atol=1e-5)
    rows = {r.name: r for r in fused_resnet.explain(fused, x).rows}
    assert rows["layer2.1.conv1"].reason == "eager: drop module Dropout is not timm's DropPath/DropBlock2d"
    assert rows["layer2.0.conv1"].fused and rows["layer3.0.conv1"].fused


def test_structure_edits_after_planning_reach_the_planned_path():
    """A planned block keeps its downsample/aa/se reads with the structure it validated: each edit
    below (a module set, a drop module switched to train() alone, a Sequential's del) must still give
    timm's result on the next call, not a replay of the old structure."""
    torch.manual_seed(0)
    m = _model("resnet18")
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = _x(batch=1, size=32)

    def same():
        with torch.no_grad():
            for _ in range(2):  # (the second call runs planned when the structure allows it)
                torch.testing.assert_close(fused(x), m(x), rtol=1e-5, atol=1e-5)

    same()
    for net in (m, fused):  # an attention module where the block had none
        net.layer2[1].se = torch.nn.Hardtanh(-0.5, 0.5)
    same()
    for net in (m, fused):  # timm's DropPath, then switched to training mode on its own
        net.layer3[1].drop_path = timm.layers.DropPath(0.5).eval()
    same()
    for net in (m, fused):
        net.layer3[1].drop_path.train()
    torch.manual_seed(1)
    with torch.no_grad():
        ref = m(x)
    torch.manual_seed(1)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), ref, rtol=1e-5, atol=1e-5)  # (random drops: same seed)
    for net in (m, fused):
        net.layer3[1].drop_path.eval()
        del net.layer4[0].downsample[1]  # the downsample's BN: its conv no longer folds
    same()
    assert fused_resnet.explain(fused, x).fused_count() == 19  # layer4.0's downsample conv runs as timm's


def test_selective_kernel_blocks_not_converted():
    m = _model("skresnet18")
    fused = _check_against_timm(m, _x(batch=1, size=32))
    report = fused_resnet.explain(fused, _x(batch=1, size=32))
    assert [r.name for r in report.rows if r.fused] == ["conv1"]  # the stem; SK blocks stay timm's
    assert all("not converted" in r.reason for r in report.rows if not r.fused)


def test_state_dicts_load_into_torchvision():
    """README claim: these timm state_dicts load into torchvision's builders with strict=True."""
    import torchvision

    for name in ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"):
        with torch.device("meta"):
            sd = timm.create_model(name, pretrained=False).state_dict()
            tv = getattr(torchvision.models, name)()
        tv.load_state_dict(sd, strict=True, assign=True)


# --- command line: --model timm/NAME ---------------------------------------------------------------

def test_cli_verify_timm_with_checkpoint(tmp_path, capsys):
    from fused_resnet.__main__ import main

    path = tmp_path / "r18.pth"
    torch.save(_model("resnet18").state_dict(), path)
    rc = main(["verify", "--model", "timm/resnet18", "--batch", "1", "--image-size", "32", "--device", "cpu",
               "--dtype", "float32", "--checkpoint", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "20 of 20 fused" in out and out.strip().endswith("PASS")


def test_cli_bench_timm_baseline(tmp_path):
    import json

    from fused_resnet.__main__ import main

    prefix = str(tmp_path / "r")
    rc = main(["bench", "--device", "cpu", "--model", "timm/resnet18", "--batch", "1", "--image-size", "32",
               "--providers", "timm,torchvision,fused_resnet", "--runs", "1", "--dtype", "float32", "--out", prefix])
    assert rc == 0
    rows = json.load(open(prefix + ".json"))
    assert [r["provider"] for r in rows] == ["timm", "fused_resnet"]  # "torchvision" is not this model's
    assert rows[1]["baseline"] == "timm" and rows[0]["model"] == "timm/resnet18"
