"""fused_conv2d: conv2d -> per-channel scale/bias (folded BN) -> + residual -> ReLU, in one op.

    out[n, c, h, w] = act( conv2d(x, weight)[n, c, h, w] * scale[c] + bias[c] + residual[n, c, h, w] )

Shapes: x (N, Cin, H, W); weight (Cout, Cin/groups, KH, KW); scale, bias (Cout,); residual has the
output's shape. Dtypes: x, weight and residual share one dtype (fp32, fp16, bf16); scale and bias may
be fp32. Every backend accumulates in fp32. The output has x's memory format (channels_last in,
channels_last out), like torch.nn.functional.conv2d.

How a call runs: ``_selector.choose`` picks a tactic from the registry (fused_resnet.tactics: the
eager oneDNN/cuDNN tactics, Triton, the CUTLASS sm80/sm90 kernels), whose ``prepare`` gives the
launch; ``launch_for`` keeps it beside a folded weight, so the blocks' plans and compiled graphs reuse it.
The op is registered as ``torch.ops.fused_resnet.fused_conv2d`` (torch.library.custom_op) with a
fake implementation, so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
import torch.utils.flop_counter

from .. import _context, _selector, _trace, tactics
from .._geometry import IntOrPair, memory_format_of, out_size
from .._geometry import pair as _pair
from .._packing import packed_object
from ..tactics import Problem

# Inductor must hand the op tensors with the strides seen at trace time: the output layout
# follows the input layout (channels_last in, channels_last out).
_FIXED_STRIDES = (torch.Tag.needs_fixed_stride_order,)


def fused_conv2d_ref(x, weight, bias=None, scale=None, stride=1, padding=0, dilation=1, groups=1,
                     residual=None, relu=True, upcast=False):
    """Eager reference: plain PyTorch ops (differentiable). upcast=True computes in float64."""
    dtype = x.dtype
    if upcast:
        x, weight = x.double(), weight.double()
        residual = residual.double() if residual is not None else None
    out = F.conv2d(x, weight, None, _pair(stride), _pair(padding), _pair(dilation), groups)
    shape = (1, -1, 1, 1)
    if scale is not None:
        out = out * scale.to(out.dtype).reshape(shape)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(shape)
    if residual is not None:
        out = out + residual
    if relu:
        out = torch.relu(out)
    return out if upcast else out.to(dtype)


class Launch(NamedTuple):
    """One conv's launch, resolved once: ``run(x, residual) -> out`` with the tactic, packed weights,
    bias and output policy bound; ``choice`` says which tactic and why (what explain() reports)."""

    run: Callable
    choice: _selector.Choice


def resolve(x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu, backend,
            into_residual=False) -> Launch:
    """Everything about a fused conv call that depends only on its signature (shapes, dtype, device,
    layout, requested backend), not on the tensors' values: the tactic (``_selector.choose`` over the
    registry), then ``Tactic.prepare`` (packed weights, the bias in the kernel's dtype, the config).
    explain() records the choice. stride/padding/dilation are pairs."""
    p = Problem(x, weight, tuple(stride), tuple(padding), tuple(dilation), groups, scale is not None, has_residual,
                relu, into_residual)
    choice = _selector.choose(p, backend)
    if _trace._records is not None:  # explain() is recording
        _trace.record(x, weight, stride, padding, dilation, groups, choice)
    return Launch(tactics.prepare(choice.tactic, p, weight, bias, scale), choice)


def launch_for(x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu, backend,
               into_residual=False) -> Launch:
    """The launch for this call: the one launch cache. For a folded weight (stable, see _packing) the
    resolved launch is kept beside its packed layouts per call signature, and a refold clears both;
    other weights resolve every call; explain() always resolves (it records every choice). The
    fused blocks keep the launches they get here in their plans; the registered ops (torch.compile
    graphs) call this per conv per forward."""
    args = (x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu, backend, into_residual)
    if _trace._records is not None:  # explain() is recording: it sees every choice made
        return resolve(*args)
    key = ("launch", x.shape, x.stride(), x.dtype, x.device, tuple(stride), tuple(padding), tuple(dilation),
           groups, scale is None, has_residual, relu, backend, into_residual)
    bound_bias, launch = packed_object(weight, key, lambda _: (bias, resolve(*args)))
    if bound_bias is not bias:  # the same weight with another bias object: resolve for this one
        launch = resolve(*args)
    return launch


def _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend, into_residual=False):
    """Run one call in x's memory format (the registered ops' implementation)."""
    launch = launch_for(x, weight, bias, scale, stride, padding, dilation, groups, residual is not None, relu, backend,
                        into_residual)
    # (Backends that cannot write into the residual return a new tensor; copying it over the residual
    # would cost a pass over the output for nothing: callers use the returned tensor.)
    return launch.run(x, residual).contiguous(memory_format=memory_format_of(x))


@torch.library.custom_op("fused_resnet::fused_conv2d", mutates_args=(), tags=_FIXED_STRIDES)
def _fused_conv2d_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     scale: Optional[torch.Tensor], stride: List[int], padding: List[int],
                     dilation: List[int], groups: int, residual: Optional[torch.Tensor], relu: bool,
                     backend: str) -> torch.Tensor:
    return _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend)


@_fused_conv2d_op.register_fake
def _(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend):
    n, _, h, w = x.shape
    cout, _, kh, kw = weight.shape
    oh = out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = out_size(w, kw, stride[1], padding[1], dilation[1])
    return torch.empty((n, cout, oh, ow), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


@torch.utils.flop_counter.register_flop_formula(torch.ops.fused_resnet.fused_conv2d)
def _fused_conv2d_flops(x_shape, w_shape, bias_shape, scale_shape, stride, padding, dilation, groups, residual_shape,
                        relu, backend, *, out_shape=None, **kwargs) -> int:
    """FlopCounterMode counts the convolution, as it does for torchvision's conv (the epilogue's
    per-element bias/add/ReLU are not FLOPs there either)."""
    return torch.utils.flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


@torch.library.custom_op("fused_resnet::fused_conv2d_into_residual", mutates_args=("residual",), tags=_FIXED_STRIDES)
def _fused_conv2d_into_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                          scale: Optional[torch.Tensor], stride: List[int], padding: List[int],
                          dilation: List[int], groups: int, residual: torch.Tensor, relu: bool, backend: str) -> None:
    """The op writing its result over ``residual`` (which the caller owns). Under torch.compile the
    fused blocks call this for the residual conv on CPU: inductor re-inplaces it where the residual
    is dead afterwards (inside a network it is), which saves a fresh output buffer per block
    (measured on CPU, eager: a (8,256,56,56) conv+add+ReLU 6.5 ms into a fresh buffer, 3.2 ms in place)."""
    out = _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend, into_residual=True)
    if out.data_ptr() != residual.data_ptr():  # a backend that cannot write in place made a new tensor
        residual.copy_(out)


@_fused_conv2d_into_op.register_fake
def _(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend):
    return None


def _out_shape(x, weight, stride, padding, dilation) -> tuple:
    if x.dim() != 4 or weight.dim() != 4:
        return ()
    return (x.shape[0], weight.shape[0], out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]),
            out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1]))


def _validate(x, weight, bias, scale, groups, residual, out_shape):
    if x.dim() != 4:
        raise ValueError(f"fused_conv2d: expected 4D input (N, C, H, W), got {x.dim()}D input of shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"fused_conv2d: expected 4D weight (Cout, Cin/groups, KH, KW), got shape {tuple(weight.shape)}")
    cout = weight.shape[0]
    if x.shape[1] != weight.shape[1] * groups or cout % groups:
        raise RuntimeError(
            f"fused_conv2d: given groups={groups}, weight of size {list(weight.shape)}, expected input"
            f"{list(x.shape)} to have {weight.shape[1] * groups} channels, but got {x.shape[1]} channels instead")
    if x.dtype != weight.dtype:
        raise RuntimeError(f"fused_conv2d: input type ({x.dtype}) and weight type ({weight.dtype}) should be the same")
    for name, t in (("weight", weight), ("bias", bias), ("scale", scale), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise RuntimeError(f"fused_conv2d: {name} is on {t.device} but input is on {x.device}")
    for name, t in (("bias", bias), ("scale", scale)):
        if t is not None and tuple(t.shape) != (cout,):
            raise ValueError(f"fused_conv2d: {name} must have shape ({cout},), got {tuple(t.shape)}")
    if residual is not None:
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"fused_conv2d: residual shape {tuple(residual.shape)} != output shape {out_shape}")
        if residual.dtype != x.dtype:
            raise RuntimeError(f"fused_conv2d: residual type ({residual.dtype}) and input type ({x.dtype}) should be the same")


def fused_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                 scale: Optional[torch.Tensor] = None, stride: IntOrPair = 1, padding: IntOrPair = 0,
                 dilation: IntOrPair = 1, groups: int = 1, residual: Optional[torch.Tensor] = None,
                 relu: bool = True, backend: Optional[str] = None, _into_residual: bool = False) -> torch.Tensor:
    """act(conv2d(x, weight) * scale + bias + residual), fused into one kernel where a backend allows.

    Args:
        x: (N, Cin, H, W) input, fp32/fp16/bf16, NCHW or channels_last.
        weight: (Cout, Cin/groups, KH, KW), same dtype as x.
        bias, scale: optional (Cout,) per-output-channel vectors (fp32 recommended).
        stride, padding, dilation, groups: as torch.nn.functional.conv2d (zero padding).
        residual: optional tensor of the output's shape and x's dtype, added before the ReLU.
        relu: apply ReLU last (NaN propagates, as torch.relu).
        backend: "auto" | "eager" | "triton" | "cuda"; None reads use_backend() / FUSED_RESNET_BACKEND.
        _into_residual: (private) the result may be written over ``residual`` (backends that can do so
            avoid an allocation); only for callers that own the residual tensor (the fused blocks).
    Returns:
        (N, Cout, OH, OW) tensor in x's dtype and memory format.
    Raises:
        ValueError / RuntimeError for bad shapes, dtypes or devices (as torch's conv2d does);
        BackendUnavailableError if an explicitly requested backend cannot run this call.

    When autograd needs a graph (grad mode on and any tensor requires grad), the differentiable
    eager reference runs instead, so gradients are always correct.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    out_shape = _out_shape(x, weight, stride, padding, dilation)
    _validate(x, weight, bias, scale, groups, residual, out_shape)
    requested = _selector.requested_backend(backend)
    tensors = (x, weight, bias, scale, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        _trace.record(x, weight, stride, padding, dilation, groups,
                      _selector.Choice("eager", "eager: autograd (a tensor requires grad; use torch.no_grad() "
                                                "or torch.inference_mode() for fused kernels)", "eager:autograd"))
        return fused_conv2d_ref(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu)
    # torch.export (ONNX, AOTInductor) and torch.jit.trace record plain aten conv/add/relu: programs
    # that run without this package (ONNX Runtime, a loaded AOTInductor package), and that their
    # own compilers fuse.
    if _context.exporting() or torch.jit.is_tracing():
        return fused_conv2d_ref(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu)
    # torch.compile traces the registered ops: the functional one, or on CPU for a residual the caller
    # owns, the one writing over it (re-inplaced by inductor where the residual is dead afterwards).
    # A dispatch mode (FlopCounterMode, ...) sees the functional op by name.
    if _context.in_dispatch_mode():
        return _fused_conv2d_op(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested)
    if torch.compiler.is_compiling():
        if _into_residual and residual is not None and x.device.type == "cpu":
            _fused_conv2d_into_op(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested)
            return residual
        return _fused_conv2d_op(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested)
    # Eager calls the implementation directly, skipping the custom op's Python-side dispatch, which
    # adds to every conv's host time (batch-1 inference on a GPU is host-bound). Inference tensors may
    # only be written in place inside inference mode.
    into = _into_residual and residual is not None and may_write(residual)
    return _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested, into)


def plan_conv(x, weight, bias, stride, padding, dilation, groups, residual, relu, backend,
              into_residual=False) -> Launch:
    """The planning seam of the fused blocks: the launch for one conv of a planned (eager, no-autograd)
    call, validated as the op validates; the blocks run ``launch.run(x, residual)`` now and keep the
    launch in their plan. stride/padding/dilation are pairs; ``backend`` is the requested one."""
    _validate(x, weight, bias, None, groups, residual,
              _out_shape(x, weight, stride, padding, dilation) if residual is not None else ())
    into = into_residual and residual is not None and may_write(residual)
    return launch_for(x, weight, bias, None, stride, padding, dilation, groups, residual is not None, relu, backend,
                      into)


def may_write(t: torch.Tensor) -> bool:
    """Whether ``t`` may be written in place here (inference tensors only inside inference mode)."""
    return torch.is_inference_mode_enabled() or not t.is_inference()
