"""Every frontend a user points at a converted model: torch.fx, create_feature_extractor, TorchScript
(script and trace), ONNX (dynamo and legacy exporters, run in onnxruntime), AOTInductor (a package
that loads without fused_resnet), FlopCounterMode, float64 models, hooks inside blocks, copies."""
import copy
import io
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import torchvision
import torchvision.models.resnet as tvr
from torch import nn

import fused_resnet
from fused_resnet.testing import randomize_bn

from helpers import random_model

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _pair(builder=torchvision.models.resnet18):
    tv = random_model(builder)
    return tv, fused_resnet.convert(copy.deepcopy(tv)).eval()


def _close(out, ref, tol=1e-4):
    assert out.shape == ref.shape
    off = float((out.double() - ref.double()).abs().max() / ref.double().abs().max())
    assert off < tol, off


# --- torch.fx -----------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
def test_fx_symbolic_trace(train):
    tv, fused = _pair()
    fused.train(train), tv.train(train)
    gm = torch.fx.symbolic_trace(fused)
    assert any(n.op == "call_module" and "conv" in n.target for n in gm.graph.nodes)
    gm.eval(), tv.eval()
    with torch.no_grad():
        fused(X)
        _close(gm(X), tv(X))


def test_create_feature_extractor():
    from torchvision.models.feature_extraction import create_feature_extractor

    tv, fused = _pair(torchvision.models.resnet50)
    nodes = {"layer2": "c3", "layer4": "c5"}
    fx, tvx = create_feature_extractor(fused, nodes), create_feature_extractor(tv, nodes)
    with torch.no_grad():
        a, b = fx(X), tvx(X)
    for k in nodes.values():
        _close(a[k], b[k])


def test_timm_fx_trace_train_and_eval():
    timm = pytest.importorskip("timm")
    tm = randomize_bn(timm.create_model("resnet18")).eval()
    fused = fused_resnet.convert(copy.deepcopy(tm))
    for train in (True, False):
        fused.train(train)
        gm = torch.fx.symbolic_trace(fused)
    with torch.no_grad():
        _close(gm.eval()(X), tm(X))


# --- TorchScript --------------------------------------------------------------------------------

def test_jit_script_runs_the_reference_forward_with_a_warning(tmp_path):
    tv, fused = _pair()
    with pytest.warns(UserWarning, match="torch.jit.script compiles the reference"):
        scripted = torch.jit.script(fused)
    assert isinstance(fused.layer1[0], fused_resnet.BasicBlock)  # the user's model is still converted
    path = tmp_path / "m.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        _close(scripted(X), tv(X))
        _close(loaded(X), tv(X))
        _close(fused(X), tv(X))


def test_jit_script_timm():
    timm = pytest.importorskip("timm")
    tm = randomize_bn(timm.create_model("resnet18")).eval()
    fused = fused_resnet.convert(copy.deepcopy(tm))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fused)
    with torch.no_grad():
        _close(scripted(X), tm(X))


@pytest.mark.parametrize("grad", [False, True])
def test_jit_trace(grad):
    tv, fused = _pair()
    with torch.set_grad_enabled(grad), warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        traced = torch.jit.trace(fused, X, check_trace=False)
    with torch.no_grad():
        _close(traced(X), tv(X))
        _close(traced(X * 2), tv(X * 2))  # the trace holds no input-specific shortcut


# --- ONNX ---------------------------------------------------------------------------------------

def _onnx_run(f, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _onnx_ops(f):
    onnx = pytest.importorskip("onnx")
    return {n.op_type for n in onnx.load(f).graph.node}


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("dynamo", [True, False])
def test_onnx_export_runs_in_onnxruntime(tmp_path, dynamo, grad):
    pytest.importorskip("onnxscript" if dynamo else "onnx")
    tv, fused = _pair()
    with torch.no_grad():
        fused(X)
    f = str(tmp_path / "m.onnx")
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch.onnx.export(fused, (X,), f, dynamo=dynamo)
        if dynamo and out is not None:
            out.save(f)
    ops = _onnx_ops(f)
    assert "Conv" in ops and "Relu" in ops and "Add" in ops, ops
    assert not any("fused" in o.lower() for o in ops), ops
    with torch.no_grad():
        _close(_onnx_run(f, X), tv(X))


# --- AOTInductor --------------------------------------------------------------------------------

@pytest.mark.slow
def test_aoti_package_runs_without_fused_resnet(tmp_path):
    torch.manual_seed(0)
    tv = randomize_bn(tvr.ResNet(tvr.BasicBlock, [1, 1, 1, 1], num_classes=10)).eval()
    fused = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        fused(X)
        ep = torch.export.export(fused, (X,))
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "m.pt2"))
        expected = tv(X)
    torch.save({"x": X, "expected": expected}, tmp_path / "io.pt")
    code = (
        "import sys, torch\n"
        f"m = torch._inductor.aoti_load_package({path!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "out = m(io['x'])\n"
        "off = float((out - io['expected']).abs().max() / io['expected'].abs().max())\n"
        "assert 'fused_resnet' not in sys.modules\n"
        "print(off)\n")
    env = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) < 1e-4


# --- FlopCounterMode ----------------------------------------------------------------------------

@pytest.mark.parametrize("grad", [False, True])
def test_flop_counter_counts_the_fused_convs(grad):
    from torch.utils.flop_counter import FlopCounterMode

    tv, fused = _pair(torchvision.models.resnet50)
    with torch.no_grad():
        fused(X)  # plans exist: the counted forward must not replay them past the mode
    counts = []
    for m in (tv, fused):
        with torch.set_grad_enabled(grad), FlopCounterMode(display=False) as fc:
            m(X)
        counts.append(fc.get_total_flops())
    assert counts[0] > 0 and counts[0] == counts[1], counts


# --- float64 ------------------------------------------------------------------------------------

def test_float64_model_folds_and_computes_in_float64():
    tv, fused = _pair()
    tv, fused = tv.double(), fused.double()
    with torch.no_grad():
        out, ref = fused(X.double()), tv(X.double())
    assert out.dtype == torch.float64
    off = float((out - ref).abs().max() / ref.abs().max())
    assert off < 1e-12, off  # fp32 rounding of the folded bias would be ~1e-8


# --- hooks inside blocks ------------------------------------------------------------------------

def test_hooks_inside_blocks_fire_and_explain_says_why():
    tv, fused = _pair()
    seen = {"tv": [], "fused": []}
    for key, m in (("tv", tv), ("fused", fused)):
        for name, mod in m.named_modules():
            if isinstance(mod, nn.Conv2d):
                mod.register_forward_hook(lambda mod, i, o, name=name, key=key: seen[key].append((name, o.shape)))
    with torch.no_grad():
        _close(fused(X), tv(X))
    assert seen["fused"] == seen["tv"] and len(seen["tv"]) == 20
    report = fused_resnet.explain(fused, X)
    assert any("hook on conv1" in r.reason for r in report.rows), str(report)


def test_backward_hooks_on_layers_and_blocks_fire_with_autograd():
    tv, fused = _pair()
    counts = {"tv": 0, "fused": 0}
    for key, m in (("tv", tv), ("fused", fused)):
        for mod in (m.layer1, m.layer2[0]):
            mod.register_full_backward_hook(lambda *a, key=key: counts.__setitem__(key, counts[key] + 1))
    with torch.no_grad():
        fused(X)  # plans exist
    x = X.clone().requires_grad_(True)
    fused(x).sum().backward()
    tv(X.clone().requires_grad_(True)).sum().backward()
    assert counts["fused"] == counts["tv"] == 2, counts


def test_global_module_hook_fires():
    tv, fused = _pair()
    calls = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda mod, i, o: calls.append(type(mod).__name__) if isinstance(mod, nn.BatchNorm2d) else None)
    try:
        with torch.no_grad():
            fused(X)
            n_fused = len(calls)
            calls.clear()
            tv(X)
    finally:
        handle.remove()
    assert n_fused == len(calls) == 20
    with torch.no_grad():
        _close(fused(X), tv(X))  # fused again once the hook is gone


# --- copies are independent ---------------------------------------------------------------------

COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "torch.save": lambda m: _save_load(m),
}


def _save_load(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", list(COPIES))
def test_copies_share_no_cache_with_the_original(how):
    tv, fused = _pair()
    with torch.no_grad():
        fused(X)
        compiled = torch.compile(fused, backend="aot_eager")
        compiled(X)
        twin = COPIES[how](fused)
        tv_twin = copy.deepcopy(tv)
        for m in (twin, tv_twin):
            m.layer1[0].bn1.running_var.mul_(4.0)
            m.layer3[0].conv1.weight.mul_(-1.0)
        _close(twin(X), tv_twin(X))
        _close(torch.compile(twin, backend="aot_eager")(X), tv_twin(X))
        _close(fused(X), tv(X))  # the original is untouched
        _close(compiled(X), tv(X))
