"""Building and loading the extension: a prebuilt library if it loads, else the JIT build (ninja),
else "not available" with the reason (``status()``)."""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import threading
from typing import Optional

import torch

from .. import _env, _sources

CSRC = _sources.CSRC
SOURCES = _sources.source_files()
CUDA_FLAGS = _sources.cuda_flags()


def cutlass_include() -> Optional[str]:
    """The CUTLASS include folder shipped by the nvidia-cutlass wheel, or $CUTLASS_INCLUDE."""
    env = os.environ.get("CUTLASS_INCLUDE")
    if env and os.path.isdir(env):
        return env
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    inc = os.path.join(list(spec.submodule_search_locations)[0], "source", "include")
    return inc if os.path.isfile(os.path.join(inc, "cutlass", "cutlass.h")) else None


def _cuda_home() -> Optional[str]:
    """CUDA_HOME, else /usr/local/cuda. Torch's own guess follows `which nvcc`, which can be a wrapper
    script outside the toolkit (then the headers are not found), so the toolkit folder is preferred."""
    from torch.utils import cpp_extension

    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    home = home or cpp_extension.CUDA_HOME
    if home:
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home  # computed once at its import; keep it in step
    return home


def toolchain_problem() -> Optional[str]:
    """None if this machine can build the extension, else why not."""
    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    home = _cuda_home()
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return "nvcc not found (set CUDA_HOME)"
    if cutlass_include() is None:
        return "CUTLASS headers not found (pip install nvidia-cutlass, or set CUTLASS_INCLUDE)"
    if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
        return "ninja not found (pip install ninja)"
    return None


_lock = threading.Lock()
_state: dict = {}


def build(verbose: bool = False) -> str:
    """Build (or reuse the cached build of) the extension and load it; returns the library path.
    Raises RuntimeError with the reason when it cannot be built."""
    why = toolchain_problem()
    if why:
        raise RuntimeError(f"cannot build the fused_resnet CUDA extension: {why}")
    from torch.utils import cpp_extension

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")  # no GPU query when building without one
    if importlib.util.find_spec("ninja") is not None:  # the pip wheel's ninja binary onto PATH
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    cpp_extension.load(
        name="fused_resnet_cuda", sources=[os.path.join(CSRC, s) for s in SOURCES],
        extra_include_paths=_sources.include_dirs(cutlass_include()), extra_cuda_cflags=CUDA_FLAGS,
        extra_cflags=["-O3"], is_python_module=False, verbose=verbose)
    build_dir = cpp_extension._get_build_directory("fused_resnet_cuda", verbose=False)
    return os.path.join(build_dir, "fused_resnet_cuda.so")


def _load() -> tuple[bool, str]:
    """The prebuilt library if there is one and it loads, else the JIT build. A prebuilt library made
    for another torch (e.g. torch upgraded after installing a wheel) fails to load (undefined
    symbols): that is reported with the JIT result, never raised."""
    import sys

    stale = ""
    prebuilt = glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_C*.so"))
    if prebuilt:
        try:
            torch.ops.load_library(prebuilt[0])
            return True, "cuda: CUTLASS extension (prebuilt)"
        except (OSError, RuntimeError) as e:
            first = (str(e).splitlines() or [""])[0][:160]
            stale = f"; the prebuilt {os.path.basename(prebuilt[0])} does not load with torch {torch.__version__}: {first}"
            print(f"fused_resnet{stale[1:]}", file=sys.stderr, flush=True)
    if _env.get("FUSED_RESNET_JIT", "1") == "0":
        return False, f"CUDA extension not built (FUSED_RESNET_JIT=0 disables the JIT build){stale}"
    print("fused_resnet: building the CUDA extension (first use; cached afterwards) ...", file=sys.stderr, flush=True)
    try:
        build()
    except Exception as e:  # reported through status(), never raised from auto
        return False, f"CUDA extension unavailable: {str(e).splitlines()[0][:200]}{stale}"
    return True, f"cuda: CUTLASS extension (JIT-built){stale}"


def status() -> tuple[bool, str]:
    """(usable, why / why not) for the "cuda" backend; loads or builds on the first call (only when
    torch sees a CUDA GPU)."""
    with _lock:
        if "status" not in _state:
            _state["status"] = _load() if torch.cuda.is_available() else (False, "no CUDA GPU visible to torch")
        return _state["status"]

