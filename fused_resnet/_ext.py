"""The optional C++/CUDA extension (csrc/): CUTLASS fused convs and vectorized elementwise kernels.

Never fails at import. The op schemas are defined here, with fake implementations, so they trace
under torch.compile even where the extension is not built; csrc/fused_resnet_api.cpp registers the
CUDA implementations when its library is loaded:

    fused_resnet::_conv2d_cutlass(x, w_krsc, bias_fp32, residual?, stride, padding, dilation, relu, tile)
    fused_resnet::_bias_residual_act_cuda(x, bias?, residual?, relu)
    fused_resnet::_add_relu_cuda(x, y)

Loading, on first GPU use (``status()``): a library built ahead of time by setup.py
(FUSED_RESNET_BUILD_CUDA=1), else a JIT build with ninja (torch.utils.cpp_extension.load, cached in
TORCH_EXTENSIONS_DIR) when nvcc and the CUTLASS headers (PyPI nvidia-cutlass) are present and
FUSED_RESNET_JIT != 0, else "not available" with the reason (shown by ``info`` and explain()).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import threading
from typing import Optional

import torch

from ._geometry import out_size

_LIB = torch.library.Library("fused_resnet", "FRAGMENT")
_LIB.define("_conv2d_cutlass(Tensor x, Tensor w, Tensor bias, Tensor? residual, int[] stride, int[] padding, "
            "int[] dilation, bool relu, int tile) -> Tensor")
_LIB.define("_bias_residual_act_cuda(Tensor x, Tensor? bias, Tensor? residual, bool relu) -> Tensor")
_LIB.define("_add_relu_cuda(Tensor x, Tensor y) -> Tensor")

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
SOURCES = ["fused_resnet_api.cpp", "fused_conv2d_f16.cu", "fused_conv2d_bf16.cu", "add_relu.cu"]
CUDA_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-DNDEBUG", "-Xptxas=-v",
              "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]


@torch.library.register_fake("fused_resnet::_conv2d_cutlass")
def _(x, w, bias, residual, stride, padding, dilation, relu, tile):
    n, _, h, wd = x.shape
    k, _, r, s = w.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(wd, s, stride[1], padding[1], dilation[1])
    return torch.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.register_fake("fused_resnet::_bias_residual_act_cuda")
def _(x, bias, residual, relu):
    return torch.empty_like(x)


@torch.library.register_fake("fused_resnet::_add_relu_cuda")
def _(x, y):
    return torch.empty_like(x)


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
        extra_include_paths=[CSRC, cutlass_include()], extra_cuda_cflags=CUDA_FLAGS,
        extra_cflags=["-O3"], is_python_module=False, verbose=verbose)
    build_dir = cpp_extension._get_build_directory("fused_resnet_cuda", verbose=False)
    return os.path.join(build_dir, "fused_resnet_cuda.so")


def _load() -> tuple[bool, str]:
    prebuilt = glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C*.so"))
    if prebuilt:
        torch.ops.load_library(prebuilt[0])
        return True, "cuda: CUTLASS extension (prebuilt)"
    if os.environ.get("FUSED_RESNET_JIT", "1") == "0":
        return False, "CUDA extension not built (FUSED_RESNET_JIT=0 disables the JIT build)"
    import sys

    print("fused_resnet: building the CUDA extension (first use; cached afterwards) ...", file=sys.stderr, flush=True)
    try:
        build()
    except Exception as e:  # reported through status(), never raised from auto
        return False, f"CUDA extension unavailable: {str(e).splitlines()[0][:200]}"
    return True, "cuda: CUTLASS extension (JIT-built)"


def status() -> tuple[bool, str]:
    """(usable, why / why not) for the "cuda" backend; loads or builds on the first call."""
    with _lock:
        if "status" not in _state:
            _state["status"] = _load()
        return _state["status"]


def loaded() -> bool:
    return bool(_state.get("status", (False,))[0])


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, R, S) -> channels_last, i.e. KRSC in memory, as the CUTLASS kernels read it."""
    return weight.contiguous(memory_format=torch.channels_last)


def cutlass_launch(x, weight, bias, stride, padding, dilation, relu, tile: int = 0):
    """run(x, residual) -> out for the CUTLASS conv, with the packed (KRSC) weight and the fp32 bias
    prepared once (the selector's "cuda" backend; a separate scale is never passed here)."""
    from ._packing import packed

    cl = torch.channels_last
    w = packed(weight, "cutlass_krsc", pack_weight)
    b = bias.float().contiguous() if bias is not None else torch.zeros(weight.shape[0], device=x.device)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    op = torch.ops.fused_resnet._conv2d_cutlass.default

    def run(x, residual):
        res = residual.contiguous(memory_format=cl) if residual is not None else None
        return op(x.contiguous(memory_format=cl), w, b, res, stride, padding, dilation, relu, tile)
    return run


def fused_conv2d_cuda(x, weight, bias, scale, stride, padding, dilation, groups, residual, relu,
                      tile: int = 0) -> torch.Tensor:
    """One CUTLASS fused conv call (scale must be None: folded into the weight)."""
    if scale is not None:
        raise RuntimeError("the CUTLASS conv takes no separate scale (fold it into the weight)")
    return cutlass_launch(x, weight, bias, stride, padding, dilation, relu, tile)(x, residual)


# --- adapter: the Hopper (sm90) CUTLASS 3.x configs of branch sm90 ----------------------------------
# The one place that knows that branch's API, looked up by name so this file works before the merge
# (no sm90 tactics) and after it (one tactic "cuda:sm90_<config>" per config):
#   sm90_configs() -> list of config names, e.g. "sm90_conv_f16_128x128", "sm90_gemm_coop_f16_128x256"
#   sm90_problem(x, weight, stride, padding, dilation, groups) -> None if the sm90 kernels take the
#       problem, else why not
#   fused_conv2d_sm90(x, weight, bias, stride, padding, dilation, residual, relu, config) -> Tensor
# Assumed here, to re-check at the merge: configs named "*_f16_*" / "*_bf16_*" run that dtype only,
# "*gemm*" configs run 1x1 stride-1 unpadded convs only; the launcher takes what fused_conv2d_cuda
# passes the sm80 kernels (channels_last x/residual, KRSC weight, fp32 bias).

def _sm90_api(name: str):
    return globals().get(name)


_sm90_seen: dict = {}  # sm90_configs function -> its {tactic: config} (asked once: the guard runs per call)


def sm90_tactics() -> dict[str, str]:
    """{tactic: config} for every sm90 config this build offers ({} before the sm90 merge)."""
    configs = _sm90_api("sm90_configs")
    if configs is None:
        return {}
    if configs in _sm90_seen:
        return _sm90_seen[configs]
    try:
        names = list(configs())
    except Exception:  # a build without the sm90 kernels: no candidates, never an error in auto
        return {}
    found = {"cuda:" + (c if c.startswith("sm90_") else "sm90_" + c): c for c in names}
    if found:  # an empty answer may come before the library is loaded: ask again next time
        _sm90_seen[configs] = found
    return found


def sm90_guard(tactic: str, x, weight, stride, padding, dilation, groups) -> Optional[str]:
    """None if the sm90 tactic can run this conv (the general CUTLASS guard already passed), else why not."""
    config = sm90_tactics().get(tactic)
    if config is None:
        return f"{tactic}: no such sm90 config in this build"
    if torch.cuda.get_device_capability(x.device) != (9, 0):
        return "sm90 kernels need an sm_90 (Hopper) GPU"
    want = {"f16": torch.float16, "bf16": torch.bfloat16}
    for tag, dt in want.items():
        if f"_{tag}_" in config + "_" and x.dtype != dt:
            return f"config {config} runs {tag} only"
    if "gemm" in config and not (weight.shape[2] == weight.shape[3] == 1 and tuple(stride) == (1, 1)
                                 and tuple(padding) == (0, 0)):
        return f"config {config} (GEMM) runs 1x1 stride-1 unpadded convs only"
    problem = _sm90_api("sm90_problem")
    if problem is None:
        return "sm90_problem missing from the extension"
    return problem(x, weight, list(stride), list(padding), list(dilation), groups)


def fused_conv2d_sm90_tactic(tactic: str, x, weight, bias, stride, padding, dilation, residual, relu) -> torch.Tensor:
    """Run one sm90 tactic (guarded by sm90_guard)."""
    from ._packing import packed

    cl = torch.channels_last
    w = packed(weight, "cutlass_krsc", pack_weight)
    b = bias.float().contiguous() if bias is not None else torch.zeros(weight.shape[0], device=x.device)
    res = residual.contiguous(memory_format=cl) if residual is not None else None
    return _sm90_api("fused_conv2d_sm90")(x.contiguous(memory_format=cl), w, b, list(stride), list(padding),
                                          list(dilation), res, relu, sm90_tactics()[tactic])
