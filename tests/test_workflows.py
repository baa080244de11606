"""The workflow matrix: what users do to a converted model, times how they run it.

Each cell builds a torchvision (or timm) model and a converted copy, runs the converted one once
(fold caches, launch plans and compiled graphs exist), applies the same mutation to both, then
compares the converted model run in one mode with the reference model doing the same thing in
eager mode. "off" is max|fused - reference| / max|reference|; a silently wrong result is 0.1 or
more, float32 rounding differences ~1e-6.

Modes: eager (no_grad), compile (torch.compile with aot_eager: dynamo + functionalization, the
part that holds cached folds as graph inputs), export (torch.export after the mutation, run
through .module()), optimize (fused_resnet.optimize, CPU: the converted model under one owner).
"""
import copy
import io
import pickle

import pytest
import torch
import torchvision.models.resnet as tvr
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import fused_resnet
from fused_resnet.testing import randomize_bn

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
TOL = 1e-4


def _tv_model(seed: int = 0, block=tvr.BasicBlock):
    torch.manual_seed(seed)
    m = tvr.ResNet(block, [1, 1, 1, 1], num_classes=10)  # every block kind: plain, strided + downsample
    return randomize_bn(m, torch.Generator().manual_seed(seed)).eval()


def _timm_model(seed: int = 0, block="basic"):
    timm_resnet = pytest.importorskip("timm.models.resnet")
    torch.manual_seed(seed)
    cls = timm_resnet.BasicBlock if block == "basic" else timm_resnet.Bottleneck
    m = timm_resnet.ResNet(cls, [1, 1, 1, 1], num_classes=10)
    return randomize_bn(m, torch.Generator().manual_seed(seed)).eval()


BUILDERS = {"torchvision": _tv_model, "timm": _timm_model}
OTHER = {}  # family -> another model's state_dict (same architecture, other values)


def _other_state(m, family):
    key = (family, type(m.layer1[0]).__name__)
    if key not in OTHER:
        block = "basic" if "Basic" in key[1] else "bottleneck"
        OTHER[key] = (_tv_model(7, tvr.BasicBlock if block == "basic" else tvr.Bottleneck) if family == "torchvision"
                      else _timm_model(7, block)).state_dict()
    return OTHER[key]


def _off(out, ref) -> float:
    assert out.shape == ref.shape, (tuple(out.shape), tuple(ref.shape))
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max())


# --- mutations: f(model, family) -> model (the same object, or the copy to use from now on) ------

def _inplace(m, family):
    with torch.no_grad():
        m.layer1[0].bn1.weight.mul_(2.0)
        m.layer2[0].conv1.weight.add_(0.05)
        m.layer3[0].downsample[1].running_mean.add_(0.3)
    return m


def _data_write(m, family, refresh):
    # EMA updates, old init code and loaders write through .data: no version bump, nothing to see.
    m.layer1[0].bn1.weight.data.mul_(3.0)
    m.layer2[0].conv2.weight.data.mul_(-1.0)
    refresh(m)
    return m


def _deepcopy_load(m, family):
    m2 = copy.deepcopy(m)
    m2.load_state_dict(_other_state(m, family))
    return m2


def _deepcopy_in_inference_mode(m, family):
    with torch.inference_mode():
        return copy.deepcopy(m)


def _pickle(m, family):
    return pickle.loads(pickle.dumps(m))


def _torch_save_load(m, family):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _cloudpickle(m, family):
    try:
        import cloudpickle
    except ImportError:  # Ray ships its own copy (what Ray uses to send models to actors)
        cloudpickle = pytest.importorskip("ray.cloudpickle")
    return cloudpickle.loads(cloudpickle.dumps(m))


def _load_state_dict(m, family):
    m.load_state_dict(_other_state(m, family))
    return m


def _load_state_dict_assign(m, family):
    m.load_state_dict({k: v.clone() for k, v in _other_state(m, family).items()}, assign=True)
    return m


class _FunctionalCall(nn.Module):
    """Runs ``model`` with another state through torch.func.functional_call (writes the modules'
    parameter dicts directly for the call, no hook, no version bump)."""

    def __init__(self, model, state):
        super().__init__()
        self.model, self.state = model, state

    def forward(self, x):
        return torch.func.functional_call(self.model, self.state, (x,))


def _functional_call(m, family):
    return _FunctionalCall(m, _other_state(m, family))


class _Scale(nn.Module):
    def forward(self, w):
        return w * 1.5


def _parametrize(m, family):
    torch.nn.utils.parametrize.register_parametrization(m.layer1[0].conv1, "weight", _Scale())
    return m


def _last_stride_1(m, family):
    # The re-identification / segmentation trick: layer4 keeps its resolution.
    for conv in m.layer4[0].modules():
        if isinstance(conv, nn.Conv2d):
            conv.stride = (1, 1)
    return m


def _dilation_padding(m, family):
    conv = m.layer3[0].conv2
    conv.dilation, conv.padding = (2, 2), (2, 2)
    return m


def _eps(m, family):
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eps = 0.1
    return m


def _replace_bn(m, family):
    torch.manual_seed(3)
    old = m.layer1[0].bn1
    new = randomize_bn(nn.BatchNorm2d(old.num_features), torch.Generator().manual_seed(3)).eval()
    m.layer1[0].bn1 = new
    return m


def _replace_bn_frozen(m, family):
    old = m.layer2[0].bn2
    new = FrozenBatchNorm2d(old.num_features)
    new.weight.copy_(old.weight.detach() * 0.5)
    new.bias.copy_(old.bias.detach())
    new.running_mean.copy_(old.running_mean)
    new.running_var.copy_(old.running_var)
    m.layer2[0].bn2 = new
    return m


def _replace_conv(m, family):
    torch.manual_seed(4)
    old = m.layer2[0].conv2
    m.layer2[0].conv2 = nn.Conv2d(old.in_channels, old.out_channels, 3, padding=1, bias=True)
    return m


def _replace_activation(m, family):
    block = m.layer1[0]
    if family == "timm":
        block.act1 = nn.Hardtanh(0.0, 1.0)
    else:
        block.relu = nn.Hardtanh(0.0, 1.0)
    return m


def _bn_batch_stats(m, family):
    m.layer1[0].bn2.track_running_stats = False  # eval now uses batch statistics, as in torchvision
    return m


def _downsample_insert(m, family):
    # Sequential.insert writes _modules directly: no registration hook fires
    m.layer2[0].downsample.insert(2, nn.ReLU())
    return m


def _downsample_del(m, family):
    # Sequential.__delitem__ rebuilds _modules directly: no registration hook fires
    del m.layer3[0].downsample[1]
    return m


def _swap_tensors(m, family):
    w = m.layer3[0].conv1.weight
    torch.utils.swap_tensors(w, nn.Parameter(w.detach() * 0.5))
    return m


def _set_data(m, family):
    w = m.layer1[0].conv2.weight
    w.data = w.data * -2.0
    return m


def _hook_edits_output(m, family):
    m.layer1[0].bn1.register_forward_hook(lambda mod, inp, out: out * 2.0)
    return m


def _pre_hook_on_conv(m, family):
    m.layer2[0].conv1.register_forward_pre_hook(lambda mod, inp: (inp[0] * 0.5,))
    return m


def _hook_on_downsample(m, family):
    m.layer2[0].downsample.register_forward_hook(lambda mod, inp, out: out + 1.0)
    return m


def _hook_on_stem(m, family):
    m.conv1.register_forward_hook(lambda mod, inp, out: out - 0.5)
    return m


def _to_half_and_back(m, family):
    return m.half().float()


def _train_eval_toggle(m, family):
    m.train()
    with torch.no_grad():
        m(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)))  # running stats move
    return m.eval()


def _frozen(m, family):
    m.requires_grad_(False)
    return _inplace(m, family)


MUTATIONS = {
    "inplace_no_grad": _inplace,
    "data_write+eval": lambda m, f: _data_write(m, f, lambda mm: mm.eval()),
    "data_write+refresh": lambda m, f: _data_write(m, f, fused_resnet.refresh),
    "deepcopy+load_state_dict": _deepcopy_load,
    "deepcopy_in_inference_mode": _deepcopy_in_inference_mode,
    "pickle": _pickle,
    "torch.save/load": _torch_save_load,
    "cloudpickle": _cloudpickle,
    "load_state_dict": _load_state_dict,
    "load_state_dict_assign": _load_state_dict_assign,
    "functional_call": _functional_call,
    "parametrize": _parametrize,
    "last_stride_1": _last_stride_1,
    "dilation+padding": _dilation_padding,
    "eps": _eps,
    "replace_bn": _replace_bn,
    "replace_bn_frozen": _replace_bn_frozen,
    "replace_conv": _replace_conv,
    "replace_activation": _replace_activation,
    "bn_batch_stats": _bn_batch_stats,
    "swap_tensors": _swap_tensors,
    "downsample.insert": _downsample_insert,
    "del downsample[1]": _downsample_del,
    "set_data": _set_data,
    "hook_edits_output": _hook_edits_output,
    "pre_hook_on_conv": _pre_hook_on_conv,
    "hook_on_downsample": _hook_on_downsample,
    "hook_on_stem": _hook_on_stem,
    "half_and_back": _to_half_and_back,
    "train_eval_toggle": _train_eval_toggle,
    "frozen+inplace": _frozen,
}


# --- modes --------------------------------------------------------------------------------------

class _Mode:
    """prepare(model) before the mutation, then run(model, x) after it."""

    def __init__(self, name):
        self.name, self.compiled, self.opt = name, None, None

    def prepare(self, model):
        if self.name == "compile":
            torch._dynamo.reset()
            self.compiled = (model, torch.compile(model, backend="aot_eager"))
        elif self.name == "optimize":
            self.opt = fused_resnet.optimize(model)
            model = self.opt.model
        with torch.no_grad():
            self.call(model, X.to(next(model.parameters()).device))
        return model

    def call(self, model, x):
        if self.name == "eager":
            return model(x)
        if self.name == "compile":
            if self.compiled[0] is not model:  # a copy (or wrapper) of the compiled one: compile it
                self.compiled = (model, torch.compile(model, backend="aot_eager"))
            return self.compiled[1](x)
        if self.name == "export":
            return torch.export.export(model, (x,)).module()(x)
        if self.name == "optimize":
            if self.opt.model is not model:  # a copy (or wrapper): optimize that one
                self.opt = fused_resnet.optimize(model)
            return self.opt(x)
        raise ValueError(self.name)


MODES = ["eager", "compile", "export", "optimize"]
# Cells that cannot run for reasons of PyTorch, not of this library (torchvision's own model fails
# the same way: checked with torch 2.14).
_NOT_A_CELL = {
    ("export", "deepcopy_in_inference_mode"): "torch.export rejects inference-tensor parameters",
    ("export", "swap_tensors"): "torch.export leaves weakrefs to the parameters; swap_tensors refuses them",
}


def _check(family, mutation, mode, block="basic", device="cpu"):
    if (mode, mutation) in _NOT_A_CELL:
        pytest.skip(_NOT_A_CELL[(mode, mutation)])
    ref = BUILDERS[family](block=block) if family == "timm" else _tv_model(block=tvr.BasicBlock if block == "basic" else tvr.Bottleneck)
    ref = ref.to(device)
    x = X.to(device)
    fused = fused_resnet.convert(copy.deepcopy(ref))
    runner = _Mode(mode)
    fused = runner.prepare(fused)
    f = MUTATIONS[mutation]
    ref, fused = f(ref, family), f(fused, family)
    with torch.no_grad():
        expected = ref(x)
        out = runner.call(fused, x).clone()  # (optimize()'s output is its static buffer)
        off = _off(out, expected)
        assert off < TOL, f"{family} {mutation} {mode}: off {off:.3g}"
        # and again: the second call replays whatever the first one rebuilt
        off = _off(runner.call(fused, x) if mode != "export" else out, expected)
        assert off < TOL, f"{family} {mutation} {mode} (second call): off {off:.3g}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_torchvision_matrix(mutation, mode):
    _check("torchvision", mutation, mode)


TIMM_MUTATIONS = ["inplace_no_grad", "data_write+eval", "deepcopy+load_state_dict", "pickle", "functional_call",
                  "last_stride_1", "eps", "hook_edits_output", "hook_on_stem", "replace_activation", "train_eval_toggle"]


@pytest.mark.parametrize("mode", ["eager", "compile"])
@pytest.mark.parametrize("mutation", TIMM_MUTATIONS)
def test_timm_matrix(mutation, mode):
    _check("timm", mutation, mode)


@pytest.mark.parametrize("mutation", ["inplace_no_grad", "data_write+refresh", "pickle", "functional_call",
                                      "last_stride_1", "hook_on_downsample"])
def test_bottleneck_rows(mutation):
    _check("torchvision", mutation, "eager", block="bottleneck")


# On a GPU: the cells where cached launches, packed weights and CUDA graphs (optimize()) can go stale.
CUDA_MUTATIONS = ["inplace_no_grad", "data_write+eval", "data_write+refresh", "pickle", "torch.save/load",
                  "last_stride_1", "dilation+padding", "eps", "hook_edits_output", "hook_on_downsample", "set_data"]


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["eager", "optimize"])
@pytest.mark.parametrize("mutation", CUDA_MUTATIONS)
def test_cuda_matrix(mutation, mode):
    # fp32 without TF32, so the 1e-4 bound holds for every backend that runs fp32 (Triton, cuDNN)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            _check("torchvision", mutation, mode, device="cuda")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
