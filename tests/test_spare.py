"""Spare buffers (fused_resnet/_spare.py): the stem's dead output backs layer1's downsample output
inside one forward, bit for bit as a fresh buffer would, and never a tensor someone still holds."""
import copy

import pytest
import torch
import torchvision
from torch import nn

import fused_resnet
from fused_resnet import _donation, _finite, _spare
from fused_resnet.tactics import eager

from helpers import random_model

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def any_size_is_offered(monkeypatch):
    """Small test shapes: every dead stem output may be offered (the size floor has its own test)."""
    monkeypatch.setattr(_spare, "MIN_BYTES", 0)
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH", "0")  # the fused blocks' path (the CPU graph keeps its own buffers)


def _count_takes(monkeypatch) -> list:
    n = [0]
    take = _spare.take

    def counting(*a):
        n[0] += 1
        return take(*a)
    monkeypatch.setattr(_spare, "take", counting)
    return n


def test_stem_output_backs_the_downsample_bit_exactly(monkeypatch):
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    takes = _count_takes(monkeypatch)
    bad = X.clone()
    bad[0, 1, 5, 7] = float("nan")
    bad[1, 2, 20, 3] = float("inf")
    with torch.inference_mode():
        fused(X)
        with_spare, n = fused(X), takes[0]
        bad_out, ref_bad = fused(bad), tv(bad)
        monkeypatch.setattr(_spare, "offer", lambda t: None)
        without = fused(X)
    assert n == 2  # one per forward
    assert torch.equal(with_spare, without)
    torch.testing.assert_close(with_spare, tv(X), rtol=1e-4, atol=1e-4)
    assert torch.equal(bad_out.isnan(), ref_bad.isnan()) and torch.equal(bad_out.isinf(), ref_bad.isinf())
    assert _spare.STATE.t is None  # nothing kept after the forward


def test_a_held_stem_output_is_not_offered():
    """run_stem_pool offers its input only when the caller's variable is the one other holder."""
    pool = nn.MaxPool2d(3, 2, 1)
    try:
        _finite.STATE.token = 7
        with torch.inference_mode():
            x = torch.rand(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
            keep = x
            x = _donation.run_stem_pool(pool, x, torch.channels_last)
            assert _spare.STATE.t is None
            x = torch.rand(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
            view = x[:, :4]  # a view kept: the storage has a second user
            x = _donation.run_stem_pool(pool, x, torch.channels_last)
            assert _spare.STATE.t is None and view.shape[1] == 4
            x = torch.rand(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
            x = _donation.run_stem_pool(pool, x, torch.channels_last)
            assert _spare.STATE.t is not None and _spare.STATE.t.shape == (2, 8, 16, 16)
    finally:
        _finite.STATE.token = 0
        _spare.drop()


def test_a_hook_that_keeps_the_stem_output_sees_it_unchanged(monkeypatch):
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    kept = {}
    for m in (tv, fused):
        m.maxpool.register_forward_hook(lambda mod, inp, out, m=m: kept.__setitem__(id(m), inp[0]))
    takes = _count_takes(monkeypatch)
    with torch.no_grad():
        ref, out = tv(X), fused(X)
    assert takes[0] == 0
    torch.testing.assert_close(kept[id(fused)], kept[id(tv)], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_the_layer_after_the_spare_still_donates(monkeypatch):
    """The downsample output built on the spare is layer1's activation: the blocks after it may
    still write over it (nobody else holds its storage)."""
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    takes = _count_takes(monkeypatch)
    with torch.inference_mode():
        fused(X)
        fused(X)
    assert takes[0] == 2
    assert any(key[5] for key in fused.layer1[1]._plans)  # (donate is the plan key's 6th field)


def test_small_activations_are_not_offered(monkeypatch):
    """Under MIN_BYTES a fresh buffer does not fault and zeroing a spare only costs time."""
    monkeypatch.setattr(_spare, "MIN_BYTES", 16 << 20)
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    takes = _count_takes(monkeypatch)
    with torch.inference_mode():
        fused(X)
    assert takes[0] == 0


@pytest.mark.skipif(torch.bfloat16 not in eager._mkldnn_dtypes(),
                    reason="this CPU runs bf16 convs through conv2d, not oneDNN's fused op")
def test_bit_exact_under_bf16_autocast(monkeypatch):
    tv = random_model(torchvision.models.resnet50)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    takes = _count_takes(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        fused(X)
        with_spare = fused(X)
        assert takes[0] == 2
        monkeypatch.setattr(_spare, "offer", lambda t: None)
        without = fused(X)
    assert with_spare.dtype == without.dtype and torch.equal(with_spare, without)
