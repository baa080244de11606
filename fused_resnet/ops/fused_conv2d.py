"""fused_conv2d: conv2d -> per-channel scale/bias (folded BN) -> + residual -> ReLU, in one op.

    out[n, c, h, w] = act( conv2d(x, weight)[n, c, h, w] * scale[c] + bias[c] + residual[n, c, h, w] )

Shapes: x (N, Cin, H, W); weight (Cout, Cin/groups, KH, KW); scale, bias (Cout,); residual has the
output's shape. Dtypes: x, weight and residual share one dtype (fp32, fp16, bf16); scale and bias may
be fp32. Every backend accumulates in fp32. The output has x's memory format (channels_last in,
channels_last out), like torch.nn.functional.conv2d.

Backends (chosen per call by fused_resnet._selector):
  eager  - PyTorch ops. On CPU: oneDNN's fused conv+bias (+ in-place residual sum) primitive with
           pre-reordered weights for channels_last fp32/bf16 inputs, then an in-place NaN-preserving
           ReLU; plain conv2d + in-place epilogue otherwise.
  triton - fused_resnet.triton.fused_conv2d (implicit GEMM, NHWC, fused epilogue).
  cuda   - the CUTLASS extension (fused_resnet._ext).
The op is registered as ``torch.ops.fused_resnet.fused_conv2d`` (torch.library.custom_op) with a
fake implementation, so torch.compile(fullgraph=True) traces through it.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import _selector, _trace
from .._packing import packed

# Inductor must hand the op tensors with the strides seen at trace time: the output layout
# follows the input layout (channels_last in, channels_last out).
_FIXED_STRIDES = (torch.Tag.needs_fixed_stride_order,)

IntOrPair = Union[int, Sequence[int]]


def _pair(v: IntOrPair) -> List[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(i) for i in v]
    if len(v) == 1:
        return v * 2
    if len(v) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {v}")
    return v


def out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch's conv would give its output for input x."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


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


@functools.cache
def _mkldnn_dtypes() -> tuple:
    # oneDNN's bf16 weight reorder raises on CPUs without avx512bw/vl/dq or avx_ne_convert (AVX2-only
    # machines): bf16 then takes the generic path.
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (torch.float32, torch.bfloat16) if bf16 else (torch.float32,)


def _eager_cpu(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, into_residual=False):
    op = _mkldnn_pointwise()
    cl = torch.channels_last
    if (op is not None and scale is None and x.dtype in _mkldnn_dtypes() and x.is_contiguous(memory_format=cl)
            and (not into_residual or residual.is_contiguous(memory_format=cl))):
        b = bias.to(x.dtype) if bias is not None else None
        # Pre-reordered (blocked) weights skip oneDNN's per-call weight reorder, as inductor does.
        weight = packed(weight, ("mkldnn", tuple(stride), tuple(padding), tuple(dilation), groups),
                        lambda w: torch.ops.mkldnn._reorder_convolution_weight(
                            w.contiguous(memory_format=cl), padding, stride, dilation, groups, list(x.shape)))
        # oneDNN's ReLU post-op maps NaN to 0 (torch.relu keeps NaN), so the ReLU is torch's relu_, in
        # place on the still-cache-warm output.
        if residual is None:
            out = op(x, weight, b, padding, stride, dilation, groups, "none", [], "")
        elif into_residual:
            out = torch.ops.mkldnn._convolution_pointwise_.binary(
                residual, x, weight, b, padding, stride, dilation, groups, "add", None, None, [], "")
        else:
            # oneDNN's out-of-place conv+add copies the residual into a fresh buffer first; measured on
            # a (8,64,56,56)->256 1x1 conv: 3.3 ms vs 2.3 ms for conv+bias then in-place add_.
            out = op(x, weight, b, padding, stride, dilation, groups, "none", [], "").add_(residual)
        return out.relu_() if relu else out
    return _eager_generic(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu)


def _eager_generic(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu):
    fold_bias = bias is not None and scale is None
    out = F.conv2d(x, weight, bias.to(x.dtype) if fold_bias else None, stride, padding, dilation, groups)
    shape = (1, -1, 1, 1)
    if scale is not None:
        out.mul_(scale.to(out.dtype).reshape(shape))
    if bias is not None and not fold_bias:
        out.add_(bias.to(out.dtype).reshape(shape))
    if residual is not None:
        out.add_(residual)
    if relu:
        out.relu_()
    return out


def _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, backend, into_residual=False):
    """Compute the fused conv. into_residual=True allows (does not require) the backend to write the
    result over ``residual``; the returned tensor is the result either way."""
    choice = _selector.select_conv(x, weight, groups, backend, scale, stride[0])
    _trace.record(x, weight, stride, padding, dilation, groups, choice)
    args = (x, weight, bias, scale, stride, padding, dilation, groups, residual, relu)
    if choice.backend == "triton":
        from ..triton.fused_conv2d import fused_conv2d_triton

        out = fused_conv2d_triton(*args, into_residual=into_residual)
    elif choice.backend == "cuda":
        from .. import _ext

        out = _ext.fused_conv2d_cuda(*args)
    elif x.device.type == "cpu":
        out = _eager_cpu(*args, into_residual=into_residual)
    else:
        out = _eager_generic(*args)
    # (Backends that cannot write into the residual return a new tensor; copying it over the residual
    # would cost a pass over the output for nothing: callers use the returned tensor.)
    return out.contiguous(memory_format=memory_format_of(x))


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
                                                "or torch.inference_mode() for fused kernels)"))
        return fused_conv2d_ref(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu)
    # torch.compile traces the registered op (and plans buffers itself: no writing into the residual).
    if torch.compiler.is_compiling():
        return _fused_conv2d_op(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested)
    # Eager calls the implementation directly, skipping the custom op's Python-side dispatch, which
    # adds to every conv's host time (batch-1 inference on a GPU is host-bound). Inference tensors may
    # only be written in place inside inference mode.
    into = (_into_residual and residual is not None
            and (torch.is_inference_mode_enabled() or not residual.is_inference()))
    return _run(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu, requested, into_residual=into)
