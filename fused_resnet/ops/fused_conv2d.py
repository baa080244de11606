"""fused_conv2d: conv2d -> per-channel scale/bias (folded BN) -> + residual -> ReLU, in one op.

    out[n, c, h, w] = act( conv2d(x, weight)[n, c, h, w] * scale[c] + bias[c] + residual[n, c, h, w] )

Shapes: x (N, Cin, H, W); weight (Cout, Cin/groups, KH, KW); scale, bias (Cout,); residual has the
output's shape. Dtypes: x, weight and residual share one dtype (fp32, fp16, bf16); scale and bias may
be fp32. Every backend accumulates in fp32. The output has x's memory format (channels_last in,
channels_last out), like torch.nn.functional.conv2d.

Backends and their tactics (chosen per call by fused_resnet._selector; ``run_tactic`` runs one):
  eager  - PyTorch ops. eager:cpu: oneDNN's fused conv+bias (+ in-place residual sum) primitive with
           pre-reordered weights for channels_last fp32/bf16 inputs, then an in-place NaN-preserving
           ReLU; plain conv2d + in-place epilogue otherwise. On CUDA tensors: eager:cudnn+pointwise
           (cuDNN conv with bias, in-place add_/relu_), eager:cudnn+epilogue (cuDNN conv, then the
           extension's one-pass bias+residual+ReLU kernel), eager:cudnn_fused (cuDNN's fused
           conv+bias(+add)+ReLU ops; NaN propagation checked by tests/test_gpu.py only).
  triton - fused_resnet.triton.fused_conv2d (implicit GEMM, NHWC, fused epilogue).
  cuda   - the CUTLASS extension (fused_resnet._ext): cuda:sm80_large / cuda:sm80_small (2.x tiles),
           cuda:sm90_<config> (Hopper 3.x kernels, where the build has them).
The op is registered as ``torch.ops.fused_resnet.fused_conv2d`` (torch.library.custom_op) with a
fake implementation, so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

import functools
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
import torch.utils.flop_counter

from .. import _context, _selector, _trace
from .._geometry import IntOrPair, memory_format_of, out_size
from .._geometry import pair as _pair
from .._packing import packed, packed_object

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


# --- eager kernels ----------------------------------------------------------------------------------

def _mkldnn_pointwise():
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


@functools.lru_cache(maxsize=None)
def _mkldnn_dtypes() -> tuple:
    """Dtypes oneDNN's fused conv takes on this CPU: bf16 needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT,
    else its weight reorder raises (seen on an AVX2-only CPU); those CPUs run bf16 through conv2d."""
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


def _eager_cpu_launch(x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu,
                      into_residual=False) -> Callable:
    """run(x, residual) for a CPU tensor: oneDNN's fused conv with pre-reordered weights where it
    applies (channels_last fp32/bf16, no separate scale), else conv2d + in-place epilogue."""
    op = _mkldnn_pointwise()
    cl = torch.channels_last
    if op is None or scale is not None or x.dtype not in _mkldnn_dtypes() \
            or not x.is_contiguous(memory_format=cl):
        return _eager_generic_launch(x, weight, bias, scale, stride, padding, dilation, groups, relu)
    b = bias.to(x.dtype) if bias is not None else None
    # Pre-reordered (blocked) weights skip oneDNN's per-call weight reorder, as inductor does.
    w = packed(weight, ("mkldnn", tuple(stride), tuple(padding), tuple(dilation), groups),
               lambda t: torch.ops.mkldnn._reorder_convolution_weight(
                   t.contiguous(memory_format=cl), padding, stride, dilation, groups, list(x.shape)))
    binary = torch.ops.mkldnn._convolution_pointwise_.binary

    # oneDNN's ReLU post-op maps NaN to 0 (torch.relu keeps NaN), so the ReLU is torch's relu_, in
    # place on the still-cache-warm output.
    def run(x, residual):
        if residual is None:
            out = op(x, w, b, padding, stride, dilation, groups, "none", [], "")
        elif into_residual and residual.is_contiguous(memory_format=cl):
            out = binary(residual, x, w, b, padding, stride, dilation, groups, "add", None, None, [], "")
        else:
            # oneDNN's out-of-place conv+add copies the residual into a fresh buffer first; measured on
            # a (8,64,56,56)->256 1x1 conv: 3.3 ms vs 2.3 ms for conv+bias then in-place add_.
            out = op(x, w, b, padding, stride, dilation, groups, "none", [], "").add_(residual)
        return out.relu_() if relu else out
    return run


def _eager_generic_launch(x, weight, bias, scale, stride, padding, dilation, groups, relu) -> Callable:
    """run(x, residual): conv2d (with the bias when there is no separate scale), then the epilogue
    in place; the bias and scale are cast to x's dtype once, here."""
    shape = (1, -1, 1, 1)
    conv_bias = bias.to(x.dtype) if bias is not None and scale is None else None
    scale_v = scale.to(x.dtype).reshape(shape) if scale is not None else None
    bias_v = bias.to(x.dtype).reshape(shape) if bias is not None and scale is not None else None
    conv = F.conv2d

    def run(x, residual):
        out = conv(x, weight, conv_bias, stride, padding, dilation, groups)
        if scale_v is not None:
            out.mul_(scale_v)
        if bias_v is not None:
            out.add_(bias_v)
        if residual is not None:
            out.add_(residual)
        return out.relu_() if relu else out
    return run


def _cudnn_fused_launch(x, weight, bias, stride, padding, dilation, groups, relu) -> Callable:
    """run(x, residual): cuDNN's fused conv + bias (+ add) + ReLU ops (what TorchScript's
    optimize_for_inference uses), the bias cast to x's dtype once, here. relu=False has no cuDNN
    fused op: conv with bias, then the residual added in place."""
    b = bias.to(x.dtype) if bias is not None else None

    def run(x, residual):
        if not relu:
            out = F.conv2d(x, weight, b, stride, padding, dilation, groups)
            return out.add_(residual) if residual is not None else out
        if residual is not None:
            return torch.cudnn_convolution_add_relu(x, weight, residual, 1.0, b, stride, padding, dilation, groups)
        return torch.cudnn_convolution_relu(x, weight, b, stride, padding, dilation, groups)
    return run


def _cudnn_epilogue_launch(x, weight, bias, stride, padding, dilation, groups, relu) -> Callable:
    """run(x, residual): cuDNN's conv alone, then one pass of our vectorized bias + residual + ReLU
    kernel (_ext); the fp32 bias is prepared once, here."""
    b = bias.float().contiguous() if bias is not None else None
    cl = torch.channels_last

    def run(x, residual):
        out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        res = residual.contiguous(memory_format=cl) if residual is not None else None
        return torch.ops.fused_resnet._bias_residual_act_cuda(out, b, res, relu)
    return run


class Launch(NamedTuple):
    """One conv's launch, resolved once: ``run(x, residual) -> out`` with the tactic, packed weights,
    bias and output policy bound; ``choice`` says which tactic and why (what explain() reports)."""

    run: Callable
    choice: _selector.Choice


def tactic_launch(tactic, x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu,
                  into_residual=False) -> Callable:
    """``run(x, residual) -> out`` for one tactic (a name from _selector's TACTICS), with what depends
    only on the call's signature prepared now; the caller checked _selector.tactic_guard.
    stride/padding/dilation are pairs. ``run`` returns the tensor the kernel wrote (the caller fixes
    the memory format); into_residual=True allows (not requires) writing over the residual."""
    args = (weight, bias, scale, stride, padding, dilation, groups)
    if tactic == _selector.TRITON:
        from ..triton.fused_conv2d import fused_conv2d_triton

        return lambda x, residual: fused_conv2d_triton(x, *args, residual, relu, into_residual=into_residual)
    if tactic in _selector.CUDA_SM80_TILES:
        from .. import _ext

        return _ext.cutlass_launch(x, weight, bias, stride, padding, dilation, relu,
                                   tile=_selector.CUDA_SM80_TILES[tactic])
    if tactic.startswith(_selector.CUDA_SM90_PREFIX):
        from .. import _ext

        return _ext.sm90_tactic_launch(tactic, x, weight, bias, stride, padding, dilation, relu)
    if tactic == _selector.CUDNN_FUSED:
        return _cudnn_fused_launch(x, weight, bias, stride, padding, dilation, groups, relu)
    if tactic == _selector.CUDNN_EPILOGUE:
        return _cudnn_epilogue_launch(x, weight, bias, stride, padding, dilation, groups, relu)
    if tactic == _selector.EAGER_CPU and x.device.type == "cpu":
        return _eager_cpu_launch(x, *args, has_residual, relu, into_residual)
    if tactic in (_selector.EAGER_CPU, _selector.CUDNN_POINTWISE, ""):
        return _eager_generic_launch(x, *args, relu)
    raise ValueError(f"unknown fused_conv2d tactic {tactic!r}")


def run_tactic(tactic, x, weight, bias, scale, stride, padding, dilation, groups, residual, relu,
               into_residual=False):
    """Run one tactic once (the tuner times each candidate this way); see tactic_launch."""
    return tactic_launch(tactic, x, weight, bias, scale, stride, padding, dilation, groups, residual is not None,
                         relu, into_residual)(x, residual)


def resolve(x, weight, bias, scale, stride, padding, dilation, groups, has_residual, relu, backend,
            into_residual=False) -> Launch:
    """Everything about a fused conv call that depends only on its signature (shapes, dtype, device,
    layout, requested backend), not on the tensors' values: the tactic choice, packed weights, the
    bias in the kernel's dtype. The fused blocks keep the result per input signature (a plan) and
    call ``run`` on their hot path."""
    choice = _selector.select_conv(x, weight, groups, backend, scale, stride, padding=padding, dilation=dilation,
                                   relu=relu, residual=has_residual)
    _trace.record(x, weight, stride, padding, dilation, groups, choice)
    run = tactic_launch(choice.tactic, x, weight, bias, scale, stride, padding, dilation, groups, has_residual,
                        relu, into_residual)
    return Launch(run, choice)


def _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend, into_residual=False):
    """Resolve and run one call, in x's memory format. This is the registered ops' path (torch.compile
    graphs call it per conv per forward): for a folded weight (stable, see _packing) the resolved
    launch is cached beside its packed layouts, which a refold clears; explain() always resolves."""
    args = (x, weight, bias, scale, stride, padding, dilation, groups, residual is not None, relu, backend,
            into_residual)
    if _trace.active():
        launch = resolve(*args)
    else:
        key = ("launch", x.shape, x.stride(), x.dtype, x.device, tuple(stride), tuple(padding), tuple(dilation),
               groups, scale is None, residual is not None, relu, backend, into_residual)
        bound_bias, launch = packed_object(weight, key, lambda _: (bias, resolve(*args)))
        if bound_bias is not bias:  # the same weight with another bias object: resolve for this one
            launch = resolve(*args)
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
                 relu: bool = True, backend: Optional[str] = None, _into_residual: bool = False,
                 _record: Optional[list] = None) -> torch.Tensor:
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
        _record: (private) a list the resolved ``Launch`` is appended to (None when this call could not
            be planned: autograd, torch.compile); the fused blocks build their launch plans with it.
    Returns:
        (N, Cout, OH, OW) tensor in x's dtype and memory format.
    Raises:
        ValueError / RuntimeError for bad shapes, dtypes or devices (as torch's conv2d does);
        BackendUnavailableError if an explicitly requested backend cannot run this call.

    When autograd needs a graph (grad mode on and any tensor requires grad), the differentiable
    eager reference runs instead, so gradients are always correct.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if x.dim() == 4 and weight.dim() == 4:
        out_shape = (x.shape[0], weight.shape[0],
                     out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]),
                     out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1]))
    else:
        out_shape = ()
    _validate(x, weight, bias, scale, groups, residual, out_shape)
    requested = _selector.requested_backend(backend)
    tensors = (x, weight, bias, scale, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        _trace.record(x, weight, stride, padding, dilation, groups,
                      _selector.Choice("eager", "eager: autograd (a tensor requires grad; use torch.no_grad() "
                                                "or torch.inference_mode() for fused kernels)", "eager:autograd"))
        if _record is not None:
            _record.append(None)
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
    into = (_into_residual and residual is not None
            and (torch.is_inference_mode_enabled() or not residual.is_inference()))
    launch = resolve(x, weight, bias, scale, stride, padding, dilation, groups, residual is not None, relu,
                     requested, into)
    if _record is not None:
        _record.append(launch)
    return launch.run(x, residual).contiguous(memory_format=memory_format_of(x))
