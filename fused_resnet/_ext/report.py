"""The build report of the sm90 kernels: registers, spills, shared memory and HGMMA per kernel."""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from .. import _sm90_configs
from .loader import _cuda_home


def cuobjdump() -> Optional[str]:
    """cuobjdump from the CUDA toolkit, else the copy bundled with triton."""
    home = _cuda_home()
    cands = [os.path.join(home, "bin", "cuobjdump")] if home else []
    spec = importlib.util.find_spec("triton")
    if spec and spec.submodule_search_locations:
        cands.append(os.path.join(list(spec.submodule_search_locations)[0], "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in cands if os.path.isfile(c) and os.access(c, os.X_OK)), None)


def sm90_kernel_resources(build_dir: Optional[str] = None) -> list:
    """Per sm90 config (from its object file in the JIT build folder): the sm_90a kernel's registers,
    spill/local bytes, HGMMA instruction count, and dynamic shared memory (from the built library's
    registry, read with ctypes: no GPU needed). Needs a completed ``build()``."""
    import ctypes
    import re
    import subprocess

    from torch.utils import cpp_extension

    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA toolkit or triton)")
    build_dir = build_dir or cpp_extension._get_build_directory("fused_resnet_cuda", verbose=False)
    path = os.path.join(build_dir, "fused_resnet_cuda.so")
    torch.ops.load_library(path)  # resolves its torch/CUDA dependencies; then the same handle for ctypes
    lib = ctypes.CDLL(path)
    info = lib.fused_resnet_sm90_info
    info.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)] + [ctypes.POINTER(ctypes.c_int)] * 3
    smem = {}
    i = 0
    while True:
        name, kind, dt, sm = ctypes.c_char_p(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if info(i, ctypes.byref(name), ctypes.byref(kind), ctypes.byref(dt), ctypes.byref(sm)) != 0:
            break
        smem[name.value.decode()] = sm.value
        i += 1
    rows = []
    for cfg in _sm90_configs.CONFIGS:
        obj = os.path.join(build_dir, f"{cfg.name}.cuda.o")
        res = subprocess.run([tool, "-res-usage", "-arch", "sm_90a", obj], capture_output=True, text=True,
                             check=True).stdout
        kernels = [m for m in re.finditer(r"Function (\S*device_kernel\S*):\s*\n\s*(REG:.*)", res)]
        if len(kernels) != 1:
            raise RuntimeError(f"{obj}: expected one sm_90a CUTLASS kernel, found {len(kernels)}")
        fields = dict(kv.split(":") for kv in kernels[0].group(2).split())
        sass = subprocess.run([tool, "-sass", "-arch", "sm_90a", obj], capture_output=True, text=True,
                              check=True).stdout
        rows.append({"name": cfg.name, "registers": int(fields["REG"]), "stack": int(fields["STACK"]),
                     "local": int(fields["LOCAL"]), "shared_static": int(fields["SHARED"]),
                     "shared_dynamic": smem.get(cfg.name, -1), "hgmma": sass.count("HGMMA")})
    return rows


def sm90_report(build_dir: Optional[str] = None) -> str:
    """One line per sm90 kernel (what `make ext` prints)."""
    return "\n".join(f"sm90 {r['name']:<36} {r['registers']:4d} registers, {r['stack'] + r['local']} bytes "
                     f"stack/local (spills), {r['shared_dynamic'] / 1024:.0f} KiB shared, {r['hgmma']} HGMMA"
                     for r in sm90_kernel_resources(build_dir))

