"""Eager tactics: PyTorch's own kernels (oneDNN on CPU, cuDNN on GPU) with the epilogue around them.

  eager:cpu              oneDNN's fused conv+bias (+ in-place residual sum) primitive with pre-reordered
                         weights for channels_last fp32/bf16 inputs, with oneDNN's ReLU post-op where
                         _finite proves no NaN can reach it (fp32), else an in-place NaN-preserving
                         ReLU; conv2d + in-place epilogue otherwise (also any non-CUDA device: meta, ...)
  eager:cudnn+pointwise  cuDNN conv with bias, then in-place add_ / relu_
  eager:cudnn+epilogue   cuDNN conv alone, then the extension's one-pass bias+residual+ReLU kernel
  eager:cudnn_fused      cuDNN's fused conv+bias(+add); refused with a ReLU (cuDNN's fused ReLU drops NaN on
                         some engines)
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from .. import _env, _finite, _spare
from .._packing import packed
from ._base import CUDNN_EPILOGUE, CUDNN_FUSED, CUDNN_POINTWISE, EAGER_CPU, Problem, Tactic, register

_CL = torch.channels_last
_EPILOGUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=None)
def _mkldnn_pointwise():
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


@functools.lru_cache(maxsize=None)
def _mkldnn_dtypes() -> tuple:
    """Dtypes oneDNN's fused conv takes on this CPU: bf16 needs AVX-512 (BW/VL/DQ) or AVX-NE-CONVERT,
    else its weight reorder raises (seen on an AVX2-only CPU); those CPUs run bf16 through conv2d."""
    return (torch.float32, torch.bfloat16) if torch.ops.mkldnn._is_mkldnn_bf16_supported() else (torch.float32,)


# Below this many output elements oneDNN's conv with the ReLU post-op was slower than the conv and a
# separate relu_ (ResNet-50 on a 16x16 input: +290 us over 49 convs, vs 87 us of relu_ passes;
# benchmarks/NOTES.md, "Finite bounds"): small outputs keep the exact path.
POST_OP_MIN_NUMEL = 1 << 16
_INF = float("inf")


def generic_launch(p: Problem, weight, bias, scale) -> Callable:
    """run(x, residual): conv2d (with the bias when there is no separate scale), then the epilogue
    in place; the bias and scale are cast to x's dtype once, here."""
    dtype, relu = p.x.dtype, p.relu
    stride, padding, dilation, groups = p.stride, p.padding, p.dilation, p.groups
    shape = (1, -1, 1, 1)
    conv_bias = bias.to(dtype) if bias is not None and scale is None else None
    scale_v = scale.to(dtype).reshape(shape) if scale is not None else None
    bias_v = bias.to(dtype).reshape(shape) if bias is not None and scale is not None else None
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


class EagerCPU(Tactic):
    name = EAGER_CPU

    def not_supported_reasons(self, p: Problem) -> list:
        return ["CUDA tensor (the cuDNN tactics run CUDA tensors)"] if p.x.device.type == "cuda" else []

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        """oneDNN's fused conv with pre-reordered weights where it applies (channels_last fp32/bf16
        on the CPU, no separate scale), else conv2d + in-place epilogue."""
        x = p.x
        op = _mkldnn_pointwise() if x.device.type == "cpu" else None
        if op is None or scale is not None or x.dtype not in _mkldnn_dtypes() or not x.is_contiguous(memory_format=_CL):
            return generic_launch(p, weight, bias, scale)
        stride, padding, dilation, groups, relu = p.stride, p.padding, p.dilation, p.groups, p.relu
        b = bias.to(x.dtype) if bias is not None else None
        # Pre-reordered (blocked) weights skip oneDNN's per-call weight reorder, as inductor does.
        w = packed(weight, ("mkldnn", tuple(stride), tuple(padding), tuple(dilation), groups),
                   lambda t: torch.ops.mkldnn._reorder_convolution_weight(
                       t.contiguous(memory_format=_CL), padding, stride, dilation, groups, list(x.shape)))
        binary = torch.ops.mkldnn._convolution_pointwise_.binary
        into_residual = p.into_residual
        (n, _, h, wd), (cout, _, kh, kw) = x.shape, weight.shape  # output shape (_geometry.out_size, inline:
        out_shape = (n, cout, (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
                     (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1)  # cold-path call count)
        out_numel = out_shape[0] * out_shape[1] * out_shape[2] * out_shape[3]
        out_bytes, dtype, spare = out_numel * x.element_size(), x.dtype, _spare.STATE
        # float32: the post-op wherever _finite proves that no NaN can reach it (then it equals relu_).
        bounded = x.dtype == torch.float32
        gain = float(weight.abs().sum(dim=(1, 2, 3)).amax()) if bounded else 0.0  # (_finite.gain, inline)
        bias_max = float(b.abs().amax()) if bounded and b is not None and b.numel() else 0.0
        unary, post = ("relu", "relu") if relu else ("none", None)
        state, key, limit = _finite.STATE, _finite.KEY, _finite.LIMIT

        # The exact path. oneDNN's ReLU post-op maps NaN to 0 (torch.relu keeps NaN), so the ReLU is
        # torch's relu_, in place on the still-cache-warm output. In float32 it still passes the output's
        # bound on (read before a write over the residual; never measured here), so a later conv need
        # not measure it, and a residual written over gets its new bound or loses its old one.
        def run(x, residual):
            tok = getattr(state, "token", 0) if bounded else 0
            if tok:
                r = getattr(x, key, None)
                bound = r[1] * gain + bias_max if r is not None and r[0] == tok else _INF
                if residual is not None:
                    r = getattr(residual, key, None)
                    bound = bound + r[1] if r is not None and r[0] == tok else _INF
            if residual is None:
                if spare.t is not None and spare.t.nbytes == out_bytes:  # a dead activation's memory: _spare
                    out = binary(_spare.take(out_shape, dtype), x, w, b, padding, stride, dilation, groups,
                                 "add", None, None, [], "")
                else:
                    out = op(x, w, b, padding, stride, dilation, groups, "none", [], "")
            elif into_residual and residual.is_contiguous(memory_format=_CL):
                out = binary(residual, x, w, b, padding, stride, dilation, groups, "add", None, None, [], "")
            else:
                # oneDNN's out-of-place conv+add copies the residual into a fresh buffer first; measured
                # on a (8,64,56,56)->256 1x1 conv: 3.3 ms vs 2.3 ms for conv+bias then in-place add_.
                out = op(x, w, b, padding, stride, dilation, groups, "none", [], "").add_(residual)
            if relu:
                out.relu_()
            if tok:
                if bound <= limit:
                    setattr(out, key, (tok, bound))
                elif key in out.__dict__:
                    del out.__dict__[key]
            return out
        if not bounded or out_numel < POST_OP_MIN_NUMEL:
            return run

        def run_bounded(x, residual):
            # (inline, no package calls: this runs per conv on the hot path; _finite has the helpers)
            tok = getattr(state, "token", 0)
            if not tok or not _finite.ENABLED:  # outside a fused module's eager forward: no bounds
                return run(x, residual)
            r = getattr(x, key, None)
            bx = r[1] if r is not None and r[0] == tok else -1.0
            br, fresh = 0.0, True  # fresh: br was measured now, not propagated
            if residual is not None:
                r = getattr(residual, key, None)
                if r is not None and r[0] == tok:
                    br, fresh = r[1], False
                else:
                    br = _finite.measure(residual)
                    setattr(residual, key, (tok, br))
            bound = bx * gain + bias_max + br
            if bx < 0 or not bound <= limit:
                # a propagated bound may be loose: the values themselves may still pass (recorded, so
                # the other conv reading this tensor, e.g. as the residual, need not measure it again)
                bx = _finite.measure(x)
                setattr(x, key, (tok, bx))
                bound = bx * gain + bias_max + br
                if not fresh and not bound <= limit:
                    br = _finite.measure(residual)
                    setattr(residual, key, (tok, br))
                    bound = bx * gain + bias_max + br
            if not bound <= limit:  # (NaN-safe: a NaN bound fails too)
                return run(x, residual)  # (drops a bound the residual it writes over had)
            if residual is None:
                if spare.t is not None and spare.t.nbytes == out_bytes:  # (as in run)
                    out = binary(_spare.take(out_shape, dtype), x, w, b, padding, stride, dilation, groups,
                                 "add", None, post, [], "")
                else:
                    out = op(x, w, b, padding, stride, dilation, groups, unary, [], "")
            elif into_residual and residual.is_contiguous(memory_format=_CL):
                out = binary(residual, x, w, b, padding, stride, dilation, groups, "add", None, post, [], "")
            else:
                out = op(x, w, b, padding, stride, dilation, groups, "none", [], "").add_(residual)
                if relu:
                    out.relu_()
            setattr(out, key, (tok, bound))
            return out
        return run_bounded


class _Cudnn(Tactic):
    def not_supported_reasons(self, p: Problem) -> list:
        if p.x.device.type != "cuda":
            return [f"{p.x.device.type.upper()} tensor (cuDNN runs CUDA tensors)"]
        if not _env.cudnn_available():
            return ["cuDNN not available"]
        return self._limits(p)

    def _limits(self, p: Problem) -> list:
        return []


class CudnnPointwise(_Cudnn):
    name = CUDNN_POINTWISE

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        return generic_launch(p, weight, bias, scale)


class CudnnFused(_Cudnn):
    """cuDNN's conv with its bias fused, then the residual added in place. Its fused ReLU variants
    (torch.cudnn_convolution_relu / _add_relu, what TorchScript's optimize_for_inference uses) are
    not used:

    cuDNN's fused ReLU is not NaN-exact on every engine, so calls with a ReLU are refused. On an H200
    (cuDNN 9, torch 2.11) torch.cudnn_convolution_relu mapped NaN to 0 for an fp32 1x1 64->256 conv
    while the same op kept NaN on the other shapes and dtypes tested, so which engine cuDNN picks
    decides it: no shape or dtype rule makes it safe (benchmarks/NOTES.md, "First run of the Hopper
    kernels")."""

    name = CUDNN_FUSED

    def _limits(self, p: Problem) -> list:
        if p.scale:
            return ["separate per-channel scale (fold it into the weight)"]
        if p.relu:
            return ["cuDNN's fused ReLU maps NaN to 0 on some engines (torch.relu keeps NaN)"]
        return []

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        assert not p.relu, "eager:cudnn_fused refuses a ReLU (see _limits)"
        b = bias.to(p.x.dtype) if bias is not None else None
        stride, padding, dilation, groups = p.stride, p.padding, p.dilation, p.groups

        def run(x, residual):
            out = F.conv2d(x, weight, b, stride, padding, dilation, groups)
            return out.add_(residual) if residual is not None else out
        return run


class CudnnEpilogue(_Cudnn):
    """cuDNN's conv alone, then one pass of the extension's vectorized bias + residual + ReLU kernel."""

    name = CUDNN_EPILOGUE

    def _limits(self, p: Problem) -> list:
        from .. import _ext

        x, reasons = p.x, []
        if p.scale:
            return ["separate per-channel scale (fold it into the weight)"]
        ok, why = _ext.status()
        if not ok:
            return [why]
        if x.dtype not in _EPILOGUE_DTYPES:
            reasons.append(f"dtype {x.dtype} not supported by the epilogue kernel")
        if not (x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=_CL)):
            reasons.append("the epilogue kernel takes channels_last (NHWC) tensors")
        return reasons

    def prepare(self, p: Problem, weight, bias, scale) -> Callable:
        b = bias.float().contiguous() if bias is not None else None
        stride, padding, dilation, groups, relu = p.stride, p.padding, p.dilation, p.groups, p.relu
        op = torch.ops.fused_resnet._bias_residual_act_cuda

        def run(x, residual):
            out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
            res = residual.contiguous(memory_format=_CL) if residual is not None else None
            return op(out, b, res, relu)
        return run


for _tactic in (EagerCPU(), CudnnPointwise(), CudnnEpilogue(), CudnnFused()):
    register(_tactic)
