"""The CUDA extension's sources and nvcc flags, shared by the JIT build (fused_resnet/_ext/loader.py) and the
ahead-of-time build (setup.py, which loads this file by path: plain Python, no torch import).

Two cubins: sm_80 (the CUTLASS 2.x kernels; runs on Ampere, Ada and Hopper) and sm_90a (Hopper's
arch-specific features: TMA and WGMMA for the CUTLASS 3.x kernels of csrc/sm90/). The sm90 kernels
compile to empty stubs in the sm_80 pass (CUTLASS guards their bodies with __CUDA_ARCH_FEAT_SM90_ALL)
and csrc/conv2d_sm90.cu refuses to launch them without an sm_90a cubin for the device.
"""
import glob
import hashlib
import os
import runpy

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")

BASE_SOURCES = ["fused_resnet_api.cpp", "fused_conv2d_f16.cu", "fused_conv2d_bf16.cu", "add_relu.cu",
                "conv2d_sm90.cu"]

CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-DNDEBUG", "-Xptxas=-v",
              "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]


def sm90_sources() -> list:
    """csrc/-relative sources of the generated sm90 kernels (fused_resnet/_sm90_configs.py)."""
    return list(runpy.run_path(os.path.join(HERE, "_sm90_configs.py"))["SOURCES"])


def sm90_enabled() -> bool:
    """FUSED_RESNET_SM90=0 leaves the sm90 kernel TUs out (minutes less on a small machine; used by
    the AOT build test): the library still builds, loads and registers _conv2d_sm90, which then
    refuses every config."""
    return os.environ.get("FUSED_RESNET_SM90", "1") != "0"


def source_files() -> list:
    """Every csrc/-relative source of the extension, in build order."""
    sm90 = sm90_sources()
    return BASE_SOURCES + (sm90 if sm90_enabled() else [s for s in sm90 if s.endswith("sm90_registry.cu")])


def cuda_flags() -> list:
    return CUDA_FLAGS + ([] if sm90_enabled() else ["-DFUSED_RESNET_NO_SM90_KERNELS"])


def include_dirs(cutlass_include: str) -> list:
    """csrc/ and CUTLASS's include folders (the 3.x conv collectives include cutlass/util/*.hpp, which
    the wheel ships under tools/util/include)."""
    util = os.path.join(os.path.dirname(cutlass_include), "tools", "util", "include")
    return [CSRC, cutlass_include] + ([util] if os.path.isdir(util) else [])


CPU_GRAPH_FILES = {"cpu_graph.cpp", "cpu_winograd.h"}  # built by fused_resnet/_cpu_graph.py, not here


def digest() -> str:
    """sha256 over every file the library is built from (csrc/**, this file's flags and lists): a
    library built ahead (benchmarks/prebuild_extension.py) records it, and is used only by a tree
    whose digest is the same, so a library built from older kernels never runs under newer code."""
    h = hashlib.sha256(repr((source_files(), cuda_flags())).encode())
    built = set(source_files())
    for path in sorted(glob.glob(os.path.join(CSRC, "**", "*"), recursive=True)):
        rel = os.path.relpath(path, CSRC)
        # Every header, and the translation units this library compiles: csrc/cpu_graph.cpp and its
        # header cpu_winograd.h are the CPU graph's own extension (fused_resnet/_cpu_graph.py), and an
        # edit to them must not orphan a prebuilt CUDA library.
        if rel in CPU_GRAPH_FILES:
            continue
        if path.endswith((".cuh", ".h", ".hpp")) or rel in built:
            h.update(rel.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()
