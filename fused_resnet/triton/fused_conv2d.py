"""Triton implicit-GEMM conv2d with the fused epilogue: act(conv(x, w) * scale + bias + residual).

GEMM view (per conv group g):   out[m, co] = sum_k A[m, k] * B[k, co]
    m  = (n, oh, ow)            M = N * OH * OW  output pixels
    co = output channel         COUT_G per group
    k  = (kh, kw, ci)           K = KH * KW * CIN_G
    A[m, k] = x[n, oh*s - p + kh*d, ow*s - p + kw*d, g*CIN_G + ci]   (NHWC, zero outside the image)
    B[k, co] = packed weight    [G, K, COUT_G], packed once per folded weight (a cache)

Two ways to walk K (a constexpr switch, one kernel):
  * per tap (default): for each (kh, kw) the A tile is BLOCK_K contiguous channels of one input
    pixel, so loads are 16-byte vectors along C. Used whenever CIN_G >= 16.
  * flattened (FLAT_K): k is decoded into (kh, kw, ci) per element. Used for the 7x7 stem (3 input
    channels) and narrow ResNeXt groups, where a per-tap tile would be mostly padding: the stem's
    147-long K fills 5 chunks of 32 instead of 49 chunks of 16 (3 useful).

Epilogue in fp32: scale (optional), bias, residual (NHWC, output's shape), ReLU (NaN-preserving),
one store in the output dtype. Accumulation is fp32; fp32 inputs use TF32 tensor cores (operands
rounded to nearest, as cuDNN does) when torch.backends.cudnn.allow_tf32 allows it (PyTorch's own
conv setting), exact fp32 FMA otherwise.

Runs on CUDA tensors (sm_80+), or on CPU tensors under TRITON_INTERPRET=1 (tests), where bf16/fp16
dot operands are upcast to fp32 (the interpreter's low-precision dot is unreliable).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _env, _packing
from .._geometry import out_size
from . import configs


@triton.jit
def _round_to_tf32(v):
    """Round fp32 to the nearest tf32 value (10 mantissa bits), ties away from zero.

    A "tf32" tl.dot hands raw fp32 bits to the tensor cores, which ignore the low 13 mantissa bits:
    truncation, biased toward zero. Over ResNet-50's 53 convs that bias grew to 40x cuDNN's error
    (H200 run: 1.8e-2 vs 4.5e-4 of max|ref|); cuDNN rounds to nearest (cvt.rna.tf32.f32), and so do we.
    Canonical NaN (torch's) keeps its quiet bit and stays NaN.
    """
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x1000) & -8192
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _operand(v, UPCAST: tl.constexpr, ROUND_TF32: tl.constexpr):
    """A dot operand as the tensor cores should see it (see UPCAST / ROUND_TF32 below)."""
    if UPCAST:
        v = v.to(tl.float32)
    if ROUND_TF32:
        v = _round_to_tf32(v)
    return v


# Sizes, strides and paddings are not specialized: one compiled kernel serves every batch size and
# layer of a config (compiles cost seconds each); channel counts stay specialized (divisibility by
# 16 is what lets loads vectorize).
@triton.jit(do_not_specialize=["N", "H", "W", "OH", "OW", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W"])
def _fused_conv2d_kernel(
    x_ptr,  # input, NHWC contiguous: [N, H, W, C_IN]
    w_ptr,  # packed weight: [G, K, COUT_G], K = KH*KW*CIN_G ordered (kh, kw, ci)
    bias_ptr,  # [C_OUT] fp32 (or dummy when not HAS_BIAS)
    scale_ptr,  # [C_OUT] fp32 (or dummy when not HAS_SCALE)
    res_ptr,  # residual, NHWC contiguous [N, OH, OW, C_OUT] (or dummy when not HAS_RES)
    out_ptr,  # output, NHWC contiguous [N, OH, OW, C_OUT]; may alias res_ptr (read before write)
    N, H, W, C_IN, OH, OW, C_OUT,  # sizes
    CIN_G, COUT_G,  # channels per group
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
    FLAT_K: tl.constexpr,  # walk K flattened (small CIN_G) instead of per (kh, kw) tap
    UPCAST: tl.constexpr,  # cast dot operands to fp32 (interpreter)
    INPUT_PRECISION: tl.constexpr,  # "tf32" or "ieee" for fp32 operands
    ROUND_TF32: tl.constexpr,  # round fp32 operands to tf32 (nearest) before a "tf32" dot
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    M = N * OH * OW
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(COUT_G, BLOCK_N)
    # Grouped ordering: GROUP_M row-tiles share each weight column-tile while it is in L2.
    num_in_group = GROUP_M * num_pid_n
    first_m = (pid // num_in_group) * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_size
    pid_n = (pid % num_in_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < COUT_G
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    nb = (offs_m // (OW * OH)).to(tl.int64)  # int64: N*H*W*C can exceed 2**31
    ih0 = oh * STRIDE_H - PAD_H
    iw0 = ow * STRIDE_W - PAD_W
    K = KH * KW * CIN_G
    w_base = w_ptr + g.to(tl.int64) * K * COUT_G
    c_base = g * CIN_G

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            ci = offs_k % CIN_G
            kw = (offs_k // CIN_G) % KW
            kh = offs_k // (CIN_G * KW)
            ih = ih0[:, None] + kh[None, :] * DIL_H
            iw = iw0[:, None] + kw[None, :] * DIL_W
            a_mask = (m_mask[:, None] & (offs_k < K)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            a_off = ((nb[:, None] * H + ih) * W + iw) * C_IN + c_base + ci[None, :]
            a = tl.load(x_ptr + a_off, mask=a_mask, other=0.0)
            b = tl.load(w_base + offs_k[:, None] * COUT_G + offs_n[None, :],
                        mask=(offs_k < K)[:, None] & n_mask[None, :], other=0.0)
            acc = tl.dot(_operand(a, UPCAST, ROUND_TF32), _operand(b, UPCAST, ROUND_TF32), acc,
                         input_precision=INPUT_PRECISION)
    else:
        # One flat loop over (tap, channel block) rather than nested tap/channel loops: the software
        # pipeliner then overlaps loads across taps too (a nested loop drains it at every tap).
        num_c = tl.cdiv(CIN_G, BLOCK_K)
        for it in range(0, KH * KW * num_c):
            tap = it // num_c
            c0 = (it - tap * num_c) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            ih = ih0 + kh * DIL_H
            iw = iw0 + kw * DIL_W
            pix_ok = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            pix = ((nb * H + ih) * W + iw) * C_IN + c_base
            offs_c = c0 + tl.arange(0, BLOCK_K)
            c_ok = offs_c < CIN_G
            a = tl.load(x_ptr + pix[:, None] + offs_c[None, :], mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
            k = tap * CIN_G + offs_c
            b = tl.load(w_base + k[:, None] * COUT_G + offs_n[None, :], mask=c_ok[:, None] & n_mask[None, :],
                        other=0.0)
            acc = tl.dot(_operand(a, UPCAST, ROUND_TF32), _operand(b, UPCAST, ROUND_TF32), acc,
                         input_precision=INPUT_PRECISION)

    # Epilogue: per-channel affine (folded BN), residual, ReLU, one store.
    co = g * COUT_G + offs_n
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + co, mask=n_mask, other=1.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + co, mask=n_mask, other=0.0)[None, :]
    out_off = offs_m.to(tl.int64)[:, None] * C_OUT + co[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        acc = acc + tl.load(res_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # keeps NaN, like torch.relu (max() would drop it)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


def pack_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(Cout, CIN_G, KH, KW) -> contiguous [G, KH*KW*CIN_G, COUT_G], K ordered (kh, kw, ci)."""
    cout, cin_g, kh, kw = weight.shape
    w = weight.reshape(groups, cout // groups, cin_g, kh, kw).permute(0, 3, 4, 2, 1)
    return w.reshape(groups, kh * kw * cin_g, cout // groups).contiguous()


def _new_output(shape, like: torch.Tensor) -> torch.Tensor:
    """Output buffer (NHWC). A function of its own so tests can poison it."""
    # Allocated channels_last directly: empty(...).contiguous(channels_last) would add a copy kernel
    # over the whole output per conv (benchmarks/NOTES.md: the early H200 runs paid it).
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def fused_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        scale: Optional[torch.Tensor], stride, padding, dilation, groups: int,
                        residual: Optional[torch.Tensor], relu: bool, into_residual: bool = False) -> torch.Tensor:
    """Launch the kernel. Returns a channels_last tensor (``residual`` itself when into_residual)."""
    cl = torch.channels_last
    n, c_in, h, w = x.shape
    c_out, cin_g, kh, kw = weight.shape
    oh = out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = out_size(w, kw, stride[1], padding[1], dilation[1])
    cout_g = c_out // groups
    x = x.contiguous(memory_format=cl)
    if residual is not None:
        if into_residual and not residual.is_contiguous(memory_format=cl):
            into_residual = False
        residual = residual.contiguous(memory_format=cl)
    out = residual if into_residual else _new_output((n, c_out, oh, ow), x)
    if out.numel() == 0:
        return out
    wp = _packing.packed(weight, ("triton", groups), lambda t: pack_weight(t, groups))
    interp = _env.triton_interpreting()
    f32 = lambda t: t.to(torch.float32).contiguous() if t is not None else None  # noqa: E731
    bias_f, scale_f = f32(bias), f32(scale)
    tf32 = x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interp

    def launch(cfg: configs.Config, dst: torch.Tensor) -> None:
        dummy = dst  # never read: the HAS_* constexprs compile the access away
        grid = (triton.cdiv(n * oh * ow, cfg.block_m) * triton.cdiv(cout_g, cfg.block_n), groups)
        _fused_conv2d_kernel[grid](
            x, wp, bias_f if bias_f is not None else dummy, scale_f if scale_f is not None else dummy,
            residual if residual is not None else dummy, dst,
            n, h, w, c_in, oh, ow, c_out, cin_g, cout_g,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            KH=kh, KW=kw, HAS_BIAS=bias_f is not None, HAS_SCALE=scale_f is not None,
            HAS_RES=residual is not None, RELU=relu, FLAT_K=cfg.flat_k,
            UPCAST=interp and x.dtype != torch.float32, INPUT_PRECISION="tf32" if tf32 else "ieee",
            ROUND_TF32=tf32,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )

    def tune(cands: list, key: str) -> configs.Config:
        # Times real launches into a scratch buffer (never into the residual being read).
        scratch = _new_output((n, c_out, oh, ow), x)
        best, best_ms = None, float("inf")
        print(f"fused_resnet: autotuning triton conv {key} over {len(cands)} configs ...", end="", flush=True)
        for cfg in cands:
            try:
                ms = triton.testing.do_bench(lambda: launch(cfg, scratch), warmup=5, rep=20, return_mode="median")
            except Exception:  # a config the compiler rejects (e.g. out of shared memory) is skipped
                continue
            if ms < best_ms:
                best, best_ms = cfg, ms
        print(f" {best_ms * 1e3:.1f} us with {best}", flush=True)
        if best is None:
            raise RuntimeError(f"no triton config compiled for {key}")
        return best

    launch(configs.get(n * oh * ow, cout_g, cin_g, kh * kw, x.dtype, interp, tune), out)
    return out
