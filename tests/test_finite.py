"""The guarded ReLU post-op on the CPU (fused_resnet/_finite.py): used where no NaN can reach it, never
where one can. Each NaN case also checks that it would fail with the guard bypassed."""
import copy

import pytest
import torch
import torchvision
import torchvision.models.resnet as tvr

import fused_resnet
from fused_resnet import _finite
from fused_resnet.tactics import eager

from helpers import random_model

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def every_conv_may_take_the_post_op(monkeypatch):
    """Small test shapes, so every conv is eligible (the real size threshold has its own test)."""
    monkeypatch.setattr(eager, "POST_OP_MIN_NUMEL", 0)
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH", "0")  # the fused blocks' path (the CPU graph has its own tests)


def _pair(name=torchvision.models.resnet18):
    tv = random_model(name)
    return tv, fused_resnet.convert(copy.deepcopy(tv))


def _masks_equal(out, ref) -> bool:
    return torch.equal(out.isnan(), ref.isnan()) and torch.equal(out.isinf(), ref.isinf())


@pytest.fixture
def unguarded(monkeypatch):
    """The guard bypassed: every tensor measures 0, so every conv takes the post-op (what the NaN
    tests must catch)."""
    def bypass():
        monkeypatch.setattr(_finite, "measure", lambda t: 0.0)
        monkeypatch.setattr(_finite, "TOKENS", iter(range(10**6, 2 * 10**6)))
    return bypass


def _relu_passes(model, x) -> int:
    with torch.profiler.profile() as prof:
        model(x)
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::relu_", "aten::clamp_min_"))


@pytest.mark.parametrize("name", [torchvision.models.resnet18, torchvision.models.resnet50])
def test_post_op_is_used_and_bit_exact(name):
    tv, fused = _pair(name)
    with torch.inference_mode():
        fused(X)
        guarded, passes = fused(X), _relu_passes(fused, X)
        try:
            _finite.ENABLED = False
            exact, exact_passes = fused(X), _relu_passes(fused, X)
        finally:
            _finite.ENABLED = True
        ref = tv(X)
    # (what may be left: residual adds that are not written in place: add_ + relu_)
    assert passes < exact_passes, (passes, exact_passes)
    assert torch.equal(guarded, exact)
    torch.testing.assert_close(guarded, ref, rtol=1e-4, atol=1e-4)


def _nan_inf_input():
    x = X.clone()
    x[0, 1, 5, 7] = float("nan")
    x[1, 2, 20, 3] = float("inf")
    x[1, 0, 30, 30] = float("-inf")
    return x


def test_nan_and_inf_inputs(unguarded):
    tv, fused = _pair()
    x = _nan_inf_input()
    with torch.no_grad():
        ref, out = tv(x), fused(x)
        assert ref.isnan().any()
        assert _masks_equal(out, ref)
        unguarded()
        assert not _masks_equal(fused(x), ref)  # (the guard is what keeps them)


def test_overflow_inside_the_network(unguarded):
    """Finite input, weights that overflow fp32 in layer2: the bound says no, the exact path runs."""
    tv, _ = _pair()
    with torch.no_grad():
        tv.layer2[0].conv1.weight.mul_(1e30)
        tv.layer2[0].conv2.weight.mul_(1e30)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        ref, out = tv(X), fused(X)
        assert not ref.isfinite().all()
        assert _masks_equal(out, ref)
        unguarded()
        assert not _masks_equal(fused(X), ref)


def test_a_bound_is_not_believed_in_another_call():
    """A block's output, written through numpy (no version bump) and fed to the next call, is measured
    again; no bound is left on the caller's tensors."""
    torch.manual_seed(0)
    tv = tvr.BasicBlock(16, 16).eval()
    fused = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
        y = fused(x)
        assert _finite.KEY not in x.__dict__ and _finite.KEY not in y.__dict__  # (nothing left on them)
        y.numpy()[0, 3, 2, 2] = float("nan")
        ref, out = tv(y.clone()), fused(y)
    assert ref.isnan().any() and _masks_equal(out, ref)


class _WritesNaN(torch.nn.Module):
    """A module between blocks that writes into its input through .data and returns it."""

    def forward(self, x):
        x.data[0, 0, 0, 0] = float("nan")
        return x


def test_what_a_foreign_module_returns_is_measured():
    tv, _ = _pair()
    tv.layer2 = torch.nn.Sequential(tv.layer2[0], _WritesNaN(), tv.layer2[1])
    fused = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        ref, out = tv(X), fused(X)
    assert ref.isnan().any() and _masks_equal(out, ref)


def test_small_outputs_keep_the_exact_path(monkeypatch):
    """Below POST_OP_MIN_NUMEL output elements the conv keeps relu_ (the post-op was slower there)."""
    monkeypatch.setattr(eager, "POST_OP_MIN_NUMEL", 1 << 16)
    _, fused = _pair()
    with torch.inference_mode():
        fused(X)
        small = _relu_passes(fused, X)
        big_x = torch.randn(2, 3, 96, 96)  # stem and layer1 outputs over 64K elements, the rest under
        fused(big_x)
        mixed = _relu_passes(fused, big_x)
        try:
            _finite.ENABLED = False
            exact = _relu_passes(fused, big_x)
        finally:
            _finite.ENABLED = True
    assert small == exact and 0 < mixed < exact, (small, mixed, exact)


def test_small_convs_pass_bounds_on(monkeypatch):
    """Below the size threshold the exact path still propagates the output's bound (so the next large
    conv need not measure it), and a residual it writes over gets its new bound, never keeps its old
    one (which would let a later conv take the post-op on values it does not bound)."""
    monkeypatch.setattr(eager, "POST_OP_MIN_NUMEL", 1 << 16)
    cl = torch.channels_last
    x = torch.rand(1, 8, 4, 4).contiguous(memory_format=cl)
    w, b = torch.randn(8, 8, 1, 1), torch.randn(8)
    gain, bias_max = float(w.abs().sum(dim=(1, 2, 3)).amax()), float(b.abs().amax())
    p = fused_resnet._selector.problem(x, w, residual=True, into_residual=True)
    run = eager.EagerCPU().prepare(p, w, b, None)
    tok = 12345
    try:
        _finite.STATE.token = tok
        with torch.inference_mode():
            res = torch.rand(1, 8, 4, 4).contiguous(memory_format=cl)
            setattr(x, _finite.KEY, (tok, 1.0))
            setattr(res, _finite.KEY, (tok, 1.0))
            out = run(x, res)
            assert out is res  # (written over the residual)
            assert getattr(out, _finite.KEY) == (tok, gain + bias_max + 1.0)
            del x.__dict__[_finite.KEY]  # an input with no bound: the residual's old bound is dropped
            res = torch.rand(1, 8, 4, 4).contiguous(memory_format=cl)
            setattr(res, _finite.KEY, (tok, 1.0))
            out = run(x, res)
            assert out is res and _finite.KEY not in out.__dict__
    finally:
        _finite.STATE.token = 0


def test_measure():
    t = torch.randn(2, 8, 5, 5)
    for v in (t, t.contiguous(memory_format=torch.channels_last), t[:, :, 1:4], torch.empty(0)):
        want = float(v.abs().amax()) if v.numel() else 0.0
        assert _finite.measure(v) == want
    for bad in (float("nan"), float("inf"), float("-inf")):
        u = t.contiguous(memory_format=torch.channels_last)
        u[1, 3, 2, 2] = bad
        assert _finite.measure(u) == float("inf")
        assert _finite.measure(u[:, :, 1:4]) == float("inf")


def test_outside_a_forward_no_bounds_are_used():
    """The op called bare (as a compiled graph calls it) never takes the post-op: token 0."""
    assert _finite.token() == 0
    tv, fused = _pair()
    with torch.no_grad():
        fused(X)
    assert _finite.token() == 0
