"""convert() and refresh(): swapping a model's blocks for the fused ones, in place.

Which classes swap is a registry: ``SWAPS`` modules by the module prefix of the classes they replace.
torchvision's (fused_resnet.blocks) and timm's (fused_resnet.timm_resnet, imported only for models
that already use timm) are registered here; each provider module has ``SWAPS = {its class: fused
subclass}``. A new model family is one provider module and one line below.
"""
from __future__ import annotations

import importlib
from typing import Optional

from torch import nn

from . import _selector, folding
from ._fused import _DERIVED, _FusedMixin

PROVIDERS = {"torchvision.": "fused_resnet.blocks", "timm.": "fused_resnet.timm_resnet"}


def _swap_for(cls) -> Optional[type]:
    for prefix, provider in PROVIDERS.items():
        if cls.__module__.startswith(prefix):
            return importlib.import_module(provider).SWAPS.get(cls)
    return None


def convert(model: nn.Module, *, backend: Optional[str] = None, cpu_graph: bool = True) -> nn.Module:
    """Make ``model``'s ResNet blocks (and a torchvision ResNet's stem) fused, in place.

    Every module whose type is exactly torchvision's BasicBlock, Bottleneck or ResNet, anywhere in
    the tree (classification models, detection/segmentation backbones), becomes the fused subclass;
    so do timm's (timm.models.resnet: BasicBlock, Bottleneck, ResNet; see fused_resnet.timm_resnet).
    The modules keep their parameters, buffers, hooks and state_dict keys: nothing is copied.
    Subclasses of torchvision's blocks with their own forward are left alone.

    On the CPU a converted torchvision ResNet runs a no-grad float32 eval forward as one oneDNN graph
    (``fused_resnet._cpu_graph``) where it can: when the onednn-cpu-gomp wheel is installed
    (``pip install fused_resnet[cpu]``), no hook sits inside the model and the backend is auto.

    Args:
        model: any nn.Module.
        backend: pin the converted modules to "auto", "eager", "triton" or "cuda"; None follows
            use_backend() / FUSED_RESNET_BACKEND at each call.
        cpu_graph: False keeps converted ResNets off the CPU graph (their fused blocks run every
            CPU call; FUSED_RESNET_CPU_GRAPH=0 does this for every model).
    Returns:
        the same ``model`` object.
    """
    if backend is not None:
        _selector.requested_backend(backend)  # validates the name
    folding.install_epoch_hooks()
    for module in model.modules():
        fused = _swap_for(type(module))
        if fused is not None:
            module.__class__ = fused
        if isinstance(module, _FusedMixin):
            module._fused_backend = backend
            module.__dict__["_cpu_graph_on"] = cpu_graph  # (read by torchvision ResNets: blocks.ResNet)
            for key in _DERIVED:
                module.__dict__.pop(key, None)
            module._keep_hook_dicts()  # before any torch.compile (see _hook_problem)
    return model


def refresh(model: nn.Module) -> nn.Module:
    """Refold every converted module of ``model`` now and drop its launch plans (and the CUDA graphs
    of an ``OptimizedModel``). Needed only after writes PyTorch gives no signal for: in-place writes
    through ``.data`` (``bn.weight.data.mul_(2)``, some EMA and init code). Everything else (in-place
    edits, load_state_dict, replaced tensors or modules, geometry, .to()) is detected on the next
    call. ``model.eval()`` does the same, lazily. Returns ``model``."""
    for module in model.modules():
        hook = getattr(type(module), "_fused_resnet_refresh", None)  # fused modules, OptimizedModel
        if hook is not None:
            hook(module)
    return model
