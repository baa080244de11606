"""Ahead-of-time compiles of the Triton kernels for sm_80 / sm_90, without a GPU.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))`` runs the real GPU compiler
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin), so it catches what the interpreter lets through
(dot tiles under 16, unsupported dtype combinations, shared-memory overflow). Triton's bundled
cuobjdump then reports registers and spills from the cubin.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from .. import _env

_DTYPE = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}


@dataclass
class AotResult:
    name: str
    arch: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    mma: str  # "wgmma" | "mma" | "fma": what the PTX uses for the dot


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, spill bytes) from cuobjdump -res-usage of a cubin."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    regs = int(m.group(1)) if (m := re.search(r"REG:(\d+)", out)) else -1
    if _env.get("FUSED_RESNET_AOT_DEBUG"):
        print(out)
    # STACK is the per-thread stack frame: with no calls in a Triton kernel it is register spills.
    spill = sum(int(v) for v in re.findall(r"(?:STACK|LOCAL):(\d+)", out))
    return regs, spill


def compile_conv(cfg, dtype: str = "fp16", arch: int = 90, kh: int = 3, kw: int = 3, has_res: bool = True,
                 relu: bool = True, has_scale: bool = False) -> AotResult:
    """Compile _fused_conv2d_kernel for one tile config and report its resources."""
    from .fused_conv2d import _fused_conv2d_kernel

    t = _DTYPE[dtype]
    ptr = f"*{t}"
    sig = {"x_ptr": ptr, "w_ptr": ptr, "bias_ptr": "*fp32", "scale_ptr": "*fp32", "res_ptr": ptr, "out_ptr": ptr}
    for name in ("N", "H", "W", "C_IN", "OH", "OW", "C_OUT", "CIN_G", "COUT_G",
                 "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W", "DIL_H", "DIL_W"):
        sig[name] = "i32"
    constexprs = {"KH": kh, "KW": kw, "HAS_BIAS": True, "HAS_SCALE": has_scale, "HAS_RES": has_res, "RELU": relu,
                  "FLAT_K": cfg.flat_k, "UPCAST": False, "INPUT_PRECISION": "tf32" if dtype == "fp32" else "ieee",
                  "ROUND_TF32": dtype == "fp32",
                  "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}
    for k in constexprs:
        sig[k] = "constexpr"
    # What the JIT specializes at run time for real ResNet tensors: 16-byte aligned pointers and
    # channel counts divisible by 16 (the stem's 3 input channels excepted).
    aligned = ["x_ptr", "w_ptr", "bias_ptr", "scale_ptr", "res_ptr", "out_ptr", "C_OUT", "COUT_G"]
    if not cfg.flat_k:
        aligned += ["C_IN", "CIN_G"]
    src = ASTSource(fn=_fused_conv2d_kernel, signature=sig, constexprs=_keyed(_fused_conv2d_kernel, constexprs),
                    attrs=_divisible(_fused_conv2d_kernel, aligned))
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    ptx = ck.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "fma"
    regs, spill = _resources(ck.asm["cubin"])
    return AotResult(f"conv{kh}x{kw}_{dtype}_{cfg.block_m}x{cfg.block_n}x{cfg.block_k}_w{cfg.num_warps}"
                     f"s{cfg.num_stages}{'_flat' if cfg.flat_k else ''}", arch, regs, spill,
                     ck.metadata.shared, mma)


def compile_add_relu(dtype: str = "fp16", arch: int = 90, block: int = 4096, num_warps: int = 8) -> AotResult:
    from .add_relu import _add_relu_kernel

    t = _DTYPE[dtype]
    sig = {"x_ptr": f"*{t}", "y_ptr": f"*{t}", "out_ptr": f"*{t}", "numel": "i32", "BLOCK": "constexpr"}
    cx = {"BLOCK": block}
    src = ASTSource(fn=_add_relu_kernel, signature=sig, constexprs=_keyed(_add_relu_kernel, cx),
                    attrs=_divisible(_add_relu_kernel, ["x_ptr", "y_ptr", "out_ptr", "numel"]))
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    regs, spill = _resources(ck.asm["cubin"])
    vec = "v4" if re.search(r"ld\.global(\.\w+)*\.v4", ck.asm["ptx"]) else "scalar"
    return AotResult(f"add_relu_{dtype}_{block}", arch, regs, spill, ck.metadata.shared, vec)


def _divisible(fn, names: list) -> dict:
    return {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k in names}


def _keyed(fn, values: dict) -> dict:
    # ASTSource keys constexprs by argument-index paths, (i,), on triton 3.6 through 3.8.
    names = fn.arg_names
    return {(names.index(k),): v for k, v in values.items()}
