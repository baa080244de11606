"""What the CPU graph computes, read from a model: ``describe`` turns a torchvision or plain timm ResNet
into a ``Spec`` (stem, max-pool, stages of blocks, classifier), or says why the net cannot compute it
exactly as the model's forward does (``_cpu_graph`` builds nets from the Spec alone)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torchvision.models import resnet as tvr
from torchvision.ops.misc import FrozenBatchNorm2d

from ._fused import _FusedMixin

_BN = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _conv_problem(conv, where: str) -> Optional[str]:
    if type(conv) is not nn.Conv2d:
        return f"{where} is a {type(conv).__name__}, not an nn.Conv2d"
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(p, str) \
            or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
        return f"{where}: grouped, dilated or non-square conv"
    if conv.weight.dtype != torch.float32 or conv.weight.device.type != "cpu":
        return f"{where}: weights are not float32 on the CPU"
    return None


def _pair_problem(conv, bn, where: str) -> Optional[str]:
    why = _conv_problem(conv, where)
    if why:
        return why
    if type(bn) not in _BN or (type(bn) is nn.BatchNorm2d and (bn.training or not bn.track_running_stats)):
        return f"{where}'s norm is not an eval-mode BatchNorm2d with running statistics"
    return None


def _plain(cls: type, tv: type) -> bool:
    """``tv`` itself, or the fused subclass convert() swaps in for it (blocks.py), not a user's subclass."""
    return cls is tv or (issubclass(cls, _FusedMixin) and cls.__bases__[-1] is tv)


@dataclass
class Spec:
    """What a net computes, read from a torchvision or timm ResNet (``describe``): the stem conv and its
    norm (then ReLU), the stem's max-pool, four stages of blocks, an average pool to 1x1 and the
    classifier (None: the pooled features, as a backbone with ``fc = nn.Identity()``)."""
    stem: tuple  # (conv, bn)
    pool: tuple  # the max-pool's (kernel, stride, padding)
    layers: list  # per stage: [(main [(conv, bn), ...] (ReLU after each but the last), downsample (conv, bn) or None)]
    fc: Optional[nn.Linear]


def _maxpool_problem(mp) -> Optional[str]:
    if type(mp) is not nn.MaxPool2d or mp.ceil_mode or mp.return_indices or mp.dilation not in (1, (1, 1)):
        return "the stem's max-pool differs from torchvision's"
    if any(isinstance(v, (tuple, list)) and len(set(v)) != 1 for v in (mp.kernel_size, mp.stride, mp.padding)):
        return "non-square max-pool"
    return None


def _describe_torchvision(model) -> tuple:
    why = _pair_problem(model.conv1, model.bn1, "conv1") or _maxpool_problem(model.maxpool)
    if why:
        return None, why
    if type(model.relu) is not nn.ReLU or type(model.avgpool) is not nn.AdaptiveAvgPool2d \
            or model.avgpool.output_size not in (1, (1, 1)) or type(model.fc) not in (nn.Linear, nn.Identity):
        return None, "the stem's ReLU or the head (average pool to 1x1, Linear or Identity) differ from torchvision's"

    def block_convs(blk, where):
        if not (_plain(type(blk), tvr.BasicBlock) or _plain(type(blk), tvr.Bottleneck)):
            return 0, f"{where} is a {type(blk).__name__}"
        if type(blk.relu) is not nn.ReLU:
            return 0, f"{where}.relu is not an nn.ReLU"
        return (3 if hasattr(blk, "conv3") else 2), None

    return _spec(model, block_convs)


def _describe_timm(model) -> tuple:
    """timm's ResNet in its plain form (resnet18/26/34/50/101/152, wide_resnet*: a 7x7 stem, 1x1-conv
    downsamples, no SE, attention, anti-aliasing, drop-block or drop-path, an average pool head)."""
    from timm.layers import SelectAdaptivePool2d
    from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    from timm.models import resnet as tr

    if type(model.conv1) is not nn.Conv2d:
        return None, "timm's deep stem (conv1 is a Sequential) is not in the CPU graph"
    why = _pair_problem(model.conv1, model.bn1, "conv1") or _maxpool_problem(model.maxpool)
    if why:
        return None, why
    if type(model.act1) is not nn.ReLU or getattr(model, "grad_checkpointing", False):
        return None, "the stem's activation is not an nn.ReLU (or grad checkpointing is on)"
    gp = model.global_pool
    avg = type(gp) is SelectAdaptivePool2d and (
        (type(gp.pool) is nn.AdaptiveAvgPool2d and gp.pool.output_size in (1, (1, 1)) and type(gp.flatten) is nn.Flatten
         and gp.flatten.start_dim == 1 and gp.flatten.end_dim == -1)
        or (type(gp.pool) is FastAdaptiveAvgPool and gp.pool.flatten and tuple(gp.pool.dim) == (2, 3)
            and type(gp.flatten) is nn.Identity))
    if not avg or type(model.fc) not in (nn.Linear, nn.Identity):
        return None, "timm's head is not an average pool to 1x1, flattened, then a Linear or Identity"
    none = (type(None), nn.Identity)

    def block_convs(blk, where):
        bottleneck = _plain(type(blk), tr.Bottleneck)
        if not (bottleneck or _plain(type(blk), tr.BasicBlock)):
            return 0, f"{where} is a {type(blk).__name__}"
        n = 3 if bottleneck else 2
        if any(type(getattr(blk, e, None)) not in none for e in ("drop_block", "aa", "se", "drop_path")):
            return 0, f"{where} has SE, anti-aliasing, drop-block or drop-path"
        if any(type(getattr(blk, f"act{j}")) is not nn.ReLU for j in range(1, n + 1)):
            return 0, f"{where}'s activations are not nn.ReLU"
        return n, None

    return _spec(model, block_convs)


def _spec(model, block_convs) -> tuple:
    """The Spec of a ResNet with torchvision's (and timm's) attribute names: conv1/bn1, maxpool,
    layer1..layer4 of blocks with conv{j}/bn{j} and downsample, fc. ``block_convs(block, where)``:
    (number of main convs, None), or (0, why the net cannot compute that block)."""
    layers = []
    for li in range(1, 5):
        layer = getattr(model, f"layer{li}")
        if type(layer) is not nn.Sequential:
            return None, f"layer{li} is not an nn.Sequential"
        blocks = []
        for bi, blk in enumerate(layer):
            n, why = block_convs(blk, f"layer{li}.{bi}")
            if why:
                return None, why
            blocks.append(([(getattr(blk, f"conv{j}"), getattr(blk, f"bn{j}")) for j in range(1, n + 1)], blk.downsample))
        layers.append(blocks)
    fc = model.fc if type(model.fc) is nn.Linear else None
    return Spec((model.conv1, model.bn1), _pool_geometry(model.maxpool), layers, fc), None


def _pool_geometry(mp) -> tuple:
    return _single(mp.kernel_size), _single(mp.stride), _single(mp.padding)


def describe(model: nn.Module) -> tuple:
    """(Spec, None) if ``model`` (eval, float32, CPU) is a plain torchvision or timm ResNet the net
    computes exactly as its forward does, else (None, why not). Exact types only (or the fused
    subclasses convert() swaps in): a subclass may override forward."""
    if _plain(type(model), tvr.ResNet):
        spec, why = _describe_torchvision(model)
    elif type(model).__module__.startswith(("timm.", "fused_resnet.timm_resnet")) and _is_timm_resnet(type(model)):
        spec, why = _describe_timm(model)
    else:
        return None, f"{type(model).__name__} is not a torchvision or timm ResNet"
    if why:
        return None, why
    for li, blocks in enumerate(spec.layers, 1):
        for bi, (main, ds) in enumerate(blocks):
            where = f"layer{li}.{bi}"
            for j, (conv, bn) in enumerate(main, 1):
                why = _pair_problem(conv, bn, f"{where}.conv{j}")
                if why:
                    return None, why
            if ds is not None:
                if type(ds) is not nn.Sequential or len(ds) != 2:
                    return None, f"{where}.downsample is not Sequential(conv, norm)"
                why = _pair_problem(ds[0], ds[1], f"{where}.downsample")
                if why:
                    return None, why
    if spec.fc is not None and spec.fc.weight.dtype != torch.float32:
        return None, "fc is not float32"
    spec.layers = [[(main, (ds[0], ds[1]) if ds is not None else None) for main, ds in blocks] for blocks in spec.layers]
    return spec, None


def _is_timm_resnet(cls: type) -> bool:
    from timm.models import resnet as tr

    return _plain(cls, tr.ResNet)


def unsupported(model: nn.Module) -> Optional[str]:
    """None if the net can compute ``model`` (``describe``), else why not."""
    return describe(model)[1]


def _single(v) -> int:
    return v[0] if isinstance(v, (tuple, list)) else v
