"""Who is running the model right now: a tracer, a dispatch mode, or plain eager PyTorch.

The fused path is eager Python around custom kernels. Frontends that record a program instead of
running one need something they can represent:

  torch.fx symbolic_trace, create_feature_extractor -> the reference forward (torchvision's / timm's)
  torch.jit.trace                                    -> the reference forward, with a one-time warning
  torch.jit.script                                   -> the reference forward, compiled (_fused.py)
  torch.export, ONNX (dynamo), AOTInductor           -> folded convs as plain aten conv/add/relu
  a TorchDispatchMode (FlopCounterMode, ...)         -> the registered custom op (it has a FLOP formula),
                                                        with folds made for that call only
  torch.func transforms (vmap, grad, jvp, jacfwd, functional_call under vmap), forward-mode AD,
  FakeTensorMode / make_fx / functionalization, tensor subclass inputs
                                                     -> the reference forward, nothing cached (mode_problem)

Each check here is a flag read: they run on every fused forward (mode_problem once per forward, at
the top-level fused module).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.autograd.forward_ad as _fwad
import torch.fx._symbolic_trace as _fx
from torch.utils import _python_dispatch

_warned: set = set()
# torch 2.14 keeps the fx tracing flag per thread behind a getter; 2.11 has a module global.
_fx_flag = getattr(_fx, "_get_is_fx_tracing", None) or (lambda: _fx._is_fx_tracing_flag)


def fx_tracing() -> bool:
    """torch.fx symbolic tracing (not torch.compile/export, which also set the fx flag)."""
    return _fx_flag() and not torch.compiler.is_compiling()  # (the flag first: it is almost always False)


# Compatibility shim, torch 2.11: its dynamo folds torch.compiler.is_exporting() to True in every
# trace, torch.compile included (pytorch/pytorch#176347; fixed upstream by #176499, which reads the
# flag below instead; 2.14 has the fix). The flag is what is_exporting() returns in eager code on
# every version from 2.11 to 2.14: torch.export sets it for strict and non-strict tracing, and
# torch.compile reads it as a global it guards on. Without this, a compiled model took the export
# branches: plain aten convs instead of the fused op, and folds checked instead of refreshed.
_is_exporting = ((lambda: torch.compiler._is_exporting_flag) if hasattr(torch.compiler, "_is_exporting_flag")
                 else torch.compiler.is_exporting)


def exporting() -> bool:
    """torch.export (and what is built on it: ONNX dynamo export, AOTInductor); False under torch.compile."""
    return _is_exporting()


def in_dispatch_mode() -> bool:
    """A TorchDispatchMode is active (FlopCounterMode, debug modes): it must see our op by name."""
    return _python_dispatch.is_in_torch_dispatch_mode()


# The same answer as a flag read, for the blocks' hot path: the module global that
# is_in_torch_dispatch_mode() returns, where this torch has it (else the function).
if isinstance(getattr(_python_dispatch, "_is_in_torch_dispatch_mode", None), bool):
    def dispatch_mode_flag() -> bool:
        return _python_dispatch._is_in_torch_dispatch_mode
else:  # pragma: no cover - older/newer torch
    dispatch_mode_flag = in_dispatch_mode


_functorch_active = torch._C._are_functorch_transforms_active


def mode_problem(x: torch.Tensor) -> Optional[str]:
    """Why this forward must run the reference forward because of the mode it runs in, or None.

    The fused op runs plain tensors in eager PyTorch (and under torch.compile/export, checked
    elsewhere). It has no batching rule, no forward-mode derivative, and its caches (folds, packed
    weights, plans) must never hold tensors a mode made: under torch.func transforms (vmap, grad, jvp,
    jacfwd, per-sample gradients, model ensembles), forward-mode AD (a dual level is active), a
    tracing dispatch mode (FakeTensorMode, make_fx, functionalization) or with a tensor subclass as
    input, the reference forward runs and nothing is cached. Flag reads first: on the common path
    this is one type check, one C call and one module global."""
    if type(x) is not torch.Tensor:
        return f"eager: input is a {type(x).__name__}, a tensor subclass (reference forward)"
    if _functorch_active():
        return "eager: a torch.func transform (vmap, grad, jvp, jacfwd, ...) is active (reference forward)"
    if _fwad._current_level >= 0:
        return "eager: forward-mode AD (a dual level is active; reference forward)"
    if dispatch_mode_flag():
        mode = _tracing_mode()
        if mode is not None:
            return f"eager: {mode} is active (reference forward)"
    return None


def _tracing_mode() -> Optional[str]:
    """The name of an active dispatch mode that makes fake, functional or proxy tensors, or None."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import FunctionalTensorMode
    from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode

    for mode in _python_dispatch._get_current_dispatch_mode_stack():
        if isinstance(mode, (FakeTensorMode, FunctionalTensorMode, ProxyTorchDispatchMode)):
            return type(mode).__name__
    return None


def tracing_reason(x) -> Optional[str]:
    """Why this call must run the reference forward (``x`` is the block's input), or None. Warns
    once for torch.jit.trace. Under torch.fx symbolic tracing every activation is a Proxy, not a
    tensor, which is the cheap test on the hot path."""
    if not isinstance(x, torch.Tensor):
        return ("eager: torch.fx symbolic tracing (reference forward)" if fx_tracing()
                else f"eager: input is a {type(x).__name__}, not a tensor (reference forward)")
    if torch.jit.is_tracing():
        warn_once("jit", "fused_resnet: torch.jit.trace records the reference (unfused) forward of converted "
                         "blocks; the traced program gives the same outputs without the fused kernels "
                         "(torch.export or torch.compile keep the folded convs)")
        return "eager: torch.jit.trace (reference forward)"
    return None


def warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)
