"""Pure-Python install by default (torch is not a build requirement).

FUSED_RESNET_BUILD_CUDA=1 builds the CUDA extension (csrc/) ahead of time into fused_resnet/_C*.so;
use `FUSED_RESNET_BUILD_CUDA=1 pip install --no-build-isolation -e .` so the installed torch and the
nvidia-cutlass headers are visible. Without it, the extension is JIT-built on first GPU use when a
CUDA toolchain is present (fused_resnet/_ext/loader.py).
"""
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("FUSED_RESNET_BUILD_CUDA") == "1":
    import importlib.util
    import runpy

    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    here = os.path.dirname(os.path.abspath(__file__))
    # One source list and flag set for both builds; loaded by path so nothing imports the package.
    srcs = runpy.run_path(os.path.join(here, "fused_resnet", "_sources.py"))
    spec = importlib.util.find_spec("cutlass_library")
    cutlass = os.environ.get("CUTLASS_INCLUDE") or os.path.join(
        list(spec.submodule_search_locations)[0], "source", "include")
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    ext_modules = [CUDAExtension(
        "fused_resnet._C",
        sources=[os.path.join("csrc", s) for s in srcs["source_files"]()],
        include_dirs=srcs["include_dirs"](cutlass),
        extra_compile_args={"cxx": ["-O3"], "nvcc": srcs["cuda_flags"]()},
    )]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
