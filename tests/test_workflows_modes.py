"""Workflows where PyTorch gives no version signal or runs the model in another mode (the sibling of
test_workflows.py): each class against torchvision's (or timm's) own model doing the same thing.

- donation: activations someone keeps (hooks on inner modules, wrappers, views, detach) are never
  written over by a later block;
- optimizer steps: fused steps bump no ``_version``; a model kept in eval refolds after any step;
- modes: torch.func transforms, forward-mode AD, FakeTensorMode give torchvision's values and
  tangents, and leave no state behind;
- autocast and layout: the dtypes and memory formats torchvision returns, layer by layer, and
  values within the numerics rule against a float64 reference.
"""
import copy

import pytest
import torch
import torchvision.models.resnet as tvr
from torch import nn

import fused_resnet
from fused_resnet.testing import compare, randomize_bn
from test_workflows import TOL, X, _off, _timm_model, _tv_model

CL = torch.channels_last
# A realistic input size, so the paths for large activations (the guarded post-op, tactics/eager.py) run too.
BIG = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))


def _pair(model):
    """(reference, converted copy run once: folds, plans and donation decisions exist)."""
    fused = fused_resnet.convert(copy.deepcopy(model))
    with torch.no_grad():
        fused(BIG)
    return model, fused


# --- donation: kept activations are not overwritten ----------------------------------------------

def _keep(store, key, how="same"):
    def hook(mod, inp, out):
        store[key] = {"same": out, "detach": out.detach(), "view": out[:, :8]}[how]
    return hook


def _hook_relu(m, store, how="same"):
    block = m.layer1[0]
    (block.act2 if hasattr(block, "act2") else block.relu).register_forward_hook(_keep(store, "relu", how))


def _hook_last_bn(m, store):
    # torchvision adds the identity into the last BN's output and applies the ReLU in place: the
    # tensor the hook keeps is the block's output
    block = m.layer1[0]
    (block.bn3 if hasattr(block, "bn3") else block.bn2).register_forward_hook(_keep(store, "bn"))


def _hook_layer1(m, store):
    m.layer1.register_forward_hook(_keep(store, "layer1"))


class _Keep(nn.Module):
    """A plain wrapper that stores its child's output (feature collection without hooks)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.out = inner, None

    def forward(self, x):
        self.out = self.inner(x)
        return self.out


def _wrap_block(m, store):
    m.layer1[0] = _Keep(m.layer1[0])
    store["wrapper"] = m.layer1[0]


def _hook_pool_identity(m, store):
    m.layer1[0] = nn.Identity()  # the next block's input is the pool's output, which the hook keeps
    m.maxpool.register_forward_hook(_keep(store, "maxpool"))


DONATION = {
    "hook_relu": lambda m, s: _hook_relu(m, s),
    "hook_relu_detach": lambda m, s: _hook_relu(m, s, "detach"),
    "hook_relu_view": lambda m, s: _hook_relu(m, s, "view"),
    "hook_last_bn": _hook_last_bn,
    "hook_layer1": _hook_layer1,
    "wrapper_stores_output": _wrap_block,
    "hook_pool_then_identity": _hook_pool_identity,
}


def _kept(store):
    return {k: (v.out if isinstance(v, _Keep) else v).clone() for k, v in store.items()}


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("case", list(DONATION))
def test_kept_activations_not_overwritten(case, block):
    if case == "hook_pool_then_identity" and block == "bottleneck":
        pytest.skip("a Bottleneck layer1 changes the channel count: no Identity can stand in for its first block")
    cls = tvr.BasicBlock if block == "basic" else tvr.Bottleneck
    torch.manual_seed(0)
    ref = randomize_bn(tvr.ResNet(cls, [2, 1, 1, 1], num_classes=10), torch.Generator().manual_seed(0)).eval()
    ref, fused = _pair(ref)
    ref_store, fused_store = {}, {}
    DONATION[case](ref, ref_store)
    DONATION[case](fused, fused_store)
    with torch.no_grad():
        expected = ref(BIG)
        out = fused(BIG)
        assert _off(out, expected) < TOL
        kept, kept_ref = _kept(fused_store), _kept(ref_store)
        out2 = fused(BIG)  # and the planned call
        assert _off(out2, expected) < TOL
    for k in kept_ref:
        assert _off(kept[k], kept_ref[k]) < TOL, f"{case}: kept {k} overwritten"
        assert _off(fused_store[k].out if k == "wrapper" else fused_store[k], kept_ref[k]) < TOL, k


@pytest.mark.parametrize("case", ["hook_relu", "hook_relu_detach", "wrapper_stores_output"])
def test_kept_activations_timm(case):
    timm_resnet = pytest.importorskip("timm.models.resnet")
    torch.manual_seed(0)
    ref = timm_resnet.ResNet(timm_resnet.BasicBlock, [2, 1, 1, 1], num_classes=10)
    ref, fused = _pair(randomize_bn(ref, torch.Generator().manual_seed(0)).eval())
    ref_store, fused_store = {}, {}
    DONATION[case](ref, ref_store)
    DONATION[case](fused, fused_store)
    with torch.no_grad():
        expected = ref(BIG)
        for _ in range(2):
            assert _off(fused(BIG), expected) < TOL
            for k, v in _kept(ref_store).items():
                assert _off(_kept(fused_store)[k], v) < TOL, f"{case}: kept {k} overwritten"


def test_fresh_activations_are_still_donated(monkeypatch):
    """Donation is decided from the tensor: with nobody holding a block's input, it is donated
    (the plans record donate=True), also when the previous block wrote over its own input; a hook
    keeping it turns that off. (The fused blocks' path: the CPU graph keeps its own buffers.)"""
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH", "0")
    torch.manual_seed(0)
    ref = randomize_bn(tvr.ResNet(tvr.BasicBlock, [2, 1, 1, 1], num_classes=10), torch.Generator().manual_seed(0))
    _, fused = _pair(ref.eval())
    assert [[key[5] for key in blk._plans] for blk in fused.layer1] == [[True], [True]]
    store = {}
    fused.layer1[0].relu.register_forward_hook(_keep(store, "relu"))  # keeps layer1[1]'s input
    with torch.no_grad():
        fused(BIG)
    assert [key[5] for key in fused.layer1[1]._plans] == [True, False]


# --- optimizer steps: a signal for every step, fused ones included -------------------------------

def _step(m, opt_cls, fused_step, seed):
    params = [p for p in m.parameters()]
    opt = opt_cls(params, lr=0.05, fused=fused_step) if fused_step is not None else opt_cls(params, lr=0.05)
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("mode", ["eager", "compile", "optimize"])
@pytest.mark.parametrize("opt", ["SGD", "Adam", "AdamW"])
def test_fused_optimizer_step_in_eval(opt, mode):
    """Validation between fine-tuning steps without another eval(): the step wrote the weights in a
    fused kernel (no version bump); the converted model must not run the old folds."""
    cls = getattr(torch.optim, opt)
    ref, fused = _tv_model(), fused_resnet.convert(_tv_model())
    runner = {"eager": fused, "compile": torch.compile(fused, backend="aot_eager"),
              "optimize": fused_resnet.optimize(fused)}[mode]
    with torch.no_grad():
        runner(X)
    for seed in (1, 2):
        _step(ref, cls, True, seed)
        _step(fused, cls, True, seed)
        with torch.no_grad():
            assert _off(runner(X).clone(), ref(X)) < TOL, f"{opt} fused step, {mode}, step {seed}"


def test_frozen_bn_finetuning_loop():
    """Frozen-BN fine-tuning: the model stays in eval; forward with grad (differentiable folded
    path), backward, fused Adam step, then a no_grad validation forward."""
    ref, fused = _tv_model(), fused_resnet.convert(_tv_model())
    opts = [torch.optim.Adam(m.parameters(), lr=0.01, fused=True) for m in (ref, fused)]
    with torch.no_grad():
        fused(X)
    for _ in range(2):
        for m, opt in zip((ref, fused), opts):
            m(X).square().mean().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            assert _off(fused(X), ref(X)) < TOL


def test_documented_untracked_writes_refresh():
    """Aliasing writes (parameters viewing a flat buffer refilled in place) are documented as
    untracked; fused_resnet.refresh() and eval() make the next call right."""
    ref, fused = _tv_model(), fused_resnet.convert(_tv_model())
    with torch.no_grad():
        fused(X)
    for m in (ref, fused):
        flat = torch.nn.utils.parameters_to_vector(m.parameters())
        torch.nn.utils.vector_to_parameters(flat, m.parameters())  # parameters now view `flat`
        with torch.no_grad():
            flat.mul_(0.9)
    for refresh in (fused_resnet.refresh, lambda m: m.eval()):
        refresh(fused)
        with torch.no_grad():
            assert _off(fused(X), ref(X)) < TOL


# --- modes: torch.func, forward AD, fake tensors -------------------------------------------------

def _models(family="torchvision"):
    ref = _tv_model() if family == "torchvision" else _timm_model()
    fused = fused_resnet.convert(copy.deepcopy(ref))
    with torch.no_grad():
        fused(X)  # warm: caches exist
    return ref, fused


TANGENT = torch.randn(X.shape, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_jvp(family, frozen):
    ref, fused = _models(family)
    if frozen:  # parameters without requires_grad: no autograd path would catch it
        ref.requires_grad_(False), fused.requires_grad_(False)
    p_ref, t_ref = torch.func.jvp(ref, (X,), (TANGENT,))
    p, t = torch.func.jvp(fused, (X,), (TANGENT,))
    assert _off(p, p_ref) < TOL and _off(t, t_ref) < TOL


@pytest.mark.parametrize("frozen", [False, True])
def test_forward_ad_dual(frozen):
    import torch.autograd.forward_ad as fwAD

    ref, fused = _models()
    if frozen:
        ref.requires_grad_(False), fused.requires_grad_(False)
    with fwAD.dual_level(), torch.no_grad():
        out_ref = fwAD.unpack_dual(ref(fwAD.make_dual(X, TANGENT)))
        out = fwAD.unpack_dual(fused(fwAD.make_dual(X, TANGENT)))
    assert out.tangent is not None
    assert _off(out.primal, out_ref.primal) < TOL and _off(out.tangent, out_ref.tangent) < TOL


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_vmap(family):
    ref, fused = _models(family)
    xs = torch.stack([X, X.flip(0) * 0.5])
    assert _off(torch.func.vmap(fused)(xs), torch.func.vmap(ref)(xs)) < TOL
    with torch.no_grad():
        assert _off(fused(X), ref(X)) < TOL  # and nothing left behind


def test_jacfwd():
    ref, fused = _models()
    x = X[:1, :, :8, :8]
    assert _off(torch.func.jacfwd(fused)(x), torch.func.jacfwd(ref)(x)) < TOL


def test_per_sample_grads():
    from torch.func import functional_call, grad, vmap

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        def loss(p, x):
            return functional_call(model, (p, buffers), (x[None],)).square().sum()
        return vmap(grad(loss), in_dims=(None, 0))(params, X)

    ref, fused = _models()
    g_ref, g = per_sample(ref), per_sample(fused)
    for k in g_ref:
        assert _off(g[k], g_ref[k]) < TOL, k


def test_model_ensemble():
    from torch.func import functional_call, stack_module_state, vmap

    def ensemble(models):
        params, buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        return vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(params, buffers, X)

    refs = [_tv_model(s) for s in (0, 1)]
    fused = [fused_resnet.convert(copy.deepcopy(m)) for m in refs]
    with torch.no_grad():
        for m in fused:
            m(X)
    assert _off(ensemble(fused), ensemble(refs)) < TOL


@pytest.mark.parametrize("warm", [False, True])
def test_fake_tensor_forward_leaves_no_state(warm):
    from torch._subclasses.fake_tensor import FakeTensorMode

    ref = _tv_model()
    fused = fused_resnet.convert(copy.deepcopy(ref))
    if warm:
        with torch.no_grad():
            fused(X)
    for m in (ref, fused):  # an edit the fake forward sees first
        with torch.no_grad():
            m.layer1[0].conv1.weight.mul_(0.5)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.no_grad():
        fx = mode.from_tensor(X)
        assert fused(fx).shape == ref(fx).shape
    with torch.no_grad():
        assert _off(fused(X), ref(X)) < TOL
        assert _off(fused(X), ref(X)) < TOL


# --- autocast and memory formats, layer by layer ------------------------------------------------

def _observed(model):
    """(name, dtype, channels_last, contiguous) of the model's and its layers' and blocks' outputs:
    the modules the fused path itself calls (hooks there keep it fused)."""
    seen = []
    names = ["", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "global_pool"]
    mods = dict(model.named_modules())
    targets = [(n, mods[n]) for n in names if n in mods]
    targets += [(f"{ln}.{i}", blk) for ln in ("layer1", "layer2", "layer3", "layer4")
                for i, blk in enumerate(mods[ln])]

    def hook(name):
        def f(mod, inp, out):
            seen.append((name, out.dtype, out.is_contiguous(memory_format=CL), out.is_contiguous()))
        return f
    handles = [m.register_forward_hook(hook(n)) for n, m in targets]
    return seen, handles


def _layerwise(ref, fused, x, ctx):
    seen_ref, h1 = _observed(ref)
    seen, h2 = _observed(fused)
    with torch.no_grad(), ctx():
        out_ref, out = ref(x), fused(x)
    for h in h1 + h2:
        h.remove()
    assert seen == seen_ref
    return out, out_ref


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("family", ["torchvision", "torchvision_bottleneck", "timm"])
def test_autocast_cpu_bf16(family, layout):
    if family == "timm":
        ref = _timm_model()
    else:
        ref = _tv_model(block=tvr.Bottleneck if family.endswith("bottleneck") else tvr.BasicBlock)
    fused = fused_resnet.convert(copy.deepcopy(ref))
    x = X if layout == "nchw" else X.contiguous(memory_format=CL)
    with torch.no_grad():
        fused(x)  # fp32 folds and plans exist: autocast must not reuse them
        ref64 = copy.deepcopy(ref).double()(x.double())
    for _ in range(2):  # the second call replays the autocast plan
        out, eager = _layerwise(ref, fused, x, _autocast)
        assert out.dtype == eager.dtype == torch.bfloat16
        cmp = compare(out, eager, ref64)
        assert cmp.ok, str(cmp)
    with torch.no_grad():  # and back without autocast: fp32 again, the fp32 folds
        assert fused(x).dtype == torch.float32
        assert _off(fused(x), ref(x)) < TOL


def test_autocast_block_called_directly():
    ref = _tv_model(block=tvr.Bottleneck)
    fused = fused_resnet.convert(copy.deepcopy(ref))
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(3)).relu()
    for name in ("layer1", "layer2"):
        r, f = getattr(ref, name), getattr(fused, name)
        with torch.no_grad():
            ref64 = copy.deepcopy(r).double()(x.double())
            with _autocast():
                eager, out = r(x), f(x)
        assert out.dtype == eager.dtype and out.is_contiguous() == eager.is_contiguous()
        cmp = compare(out, eager, ref64)
        assert cmp.ok, (name, str(cmp))
        x = ref64.float()


def test_autocast_under_compile():
    ref = _tv_model()
    fused = fused_resnet.convert(copy.deepcopy(ref))
    with torch.no_grad():
        fused(X)
        ref64 = copy.deepcopy(ref).double()(X.double())
    compiled = torch.compile(fused, backend="aot_eager")
    with torch.no_grad(), _autocast():
        out, eager = compiled(X), ref(X)
    assert out.dtype == eager.dtype == torch.bfloat16
    cmp = compare(out, eager, ref64)
    assert cmp.ok, str(cmp)


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_channels_last_weights_nchw_input(family):
    ref = _tv_model() if family == "torchvision" else _timm_model()
    ref = ref.to(memory_format=CL)
    fused = fused_resnet.convert(copy.deepcopy(ref))
    out, out_ref = _layerwise(ref, fused, X, torch.no_grad)
    assert _off(out, out_ref) < TOL
    if family == "timm":  # forward_features returns a 4D activation
        with torch.no_grad():
            f, r = fused.forward_features(X), ref.forward_features(X)
        assert f.is_contiguous(memory_format=CL) == r.is_contiguous(memory_format=CL)
        assert f.is_contiguous() == r.is_contiguous()


@pytest.mark.parametrize("which", ["conv1", "conv2", "downsample"])
def test_one_channels_last_weight_in_a_block(which):
    """A single channels_last weight decides the block's output format as in torchvision (PyTorch's
    conv: channels_last when the input or the weight is); a downsample's does not."""
    ref = _tv_model()
    block = ref.layer2[0]
    w = (block.downsample[0] if which == "downsample" else getattr(block, which)).weight
    w.data = w.data.contiguous(memory_format=CL)
    fused = fused_resnet.convert(copy.deepcopy(ref))
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for _ in range(2):
            out, r = fused.layer2[0](x), block(x)
            assert (out.is_contiguous(memory_format=CL), out.is_contiguous()) == \
                (r.is_contiguous(memory_format=CL), r.is_contiguous())
            assert _off(out, r) < TOL


# --- on a GPU -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_autocast_fp16_runs_tensor_core_tactics():
    ref = _tv_model().cuda()
    fused = fused_resnet.convert(copy.deepcopy(ref))
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(6)).cuda()
    with torch.no_grad():
        ref64 = copy.deepcopy(ref).double()(x.double())
        with torch.autocast("cuda", dtype=torch.float16):
            eager = ref(x)
            out = fused(x)
            out2 = fused(x)  # planned
            report = fused_resnet.explain(fused, x)
    assert out.dtype == out2.dtype == eager.dtype == torch.float16
    for o in (out, out2):
        cmp = compare(o, eager, ref64)
        assert cmp.ok, str(cmp)
    assert all(r.fused for r in report.rows), str(report)
    assert all("float16" in r.conv for r in report.rows), str(report)
    # fp16 tactics: CUTLASS (cuda:*) or Triton, tensor-core kernels; never the fp32 path
    assert all(r.backend in ("cuda", "triton") or r.tactic.startswith("eager:cudnn") for r in report.rows), str(report)
    assert any(r.backend in ("cuda", "triton") for r in report.rows), str(report)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["hook_relu", "hook_relu_detach", "wrapper_stores_output"])
def test_cuda_kept_activation_safe(case):
    # fp32 without TF32 (as test_workflows' CUDA cells), so the 1e-4 bound holds for every backend
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
            torch.manual_seed(0)
            ref = randomize_bn(tvr.ResNet(tvr.BasicBlock, [2, 1, 1, 1], num_classes=10),
                               torch.Generator().manual_seed(0)).eval().cuda()
            fused = fused_resnet.convert(copy.deepcopy(ref))
            x = BIG.cuda()
            fused(x)
            ref_store, fused_store = {}, {}
            DONATION[case](ref, ref_store)
            DONATION[case](fused, fused_store)
            expected = ref(x)
            for _ in range(2):
                assert _off(fused(x), expected) < TOL
                for k, v in _kept(ref_store).items():
                    assert _off(_kept(fused_store)[k], v) < TOL, f"{case}: kept {k} overwritten"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
