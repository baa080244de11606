"""The optional C++/CUDA extension (csrc/): CUTLASS fused convs and vectorized elementwise kernels.

Never fails at import. The op schemas are defined here, with fake implementations, so they trace
under torch.compile even where the extension is not built; csrc/fused_resnet_api.cpp registers the
CUDA implementations when its library is loaded:

    fused_resnet::_conv2d_cutlass(x, w_krsc, bias_fp32, residual?, stride, padding, dilation, relu, tile)
    fused_resnet::_conv2d_sm90(x, w_krsc, bias_fp32, residual?, stride, padding, dilation, relu, config)
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
from torch._subclasses.fake_tensor import is_fake

from . import _env, _sm90_configs, _sources
from ._geometry import out_size

_LIB = torch.library.Library("fused_resnet", "FRAGMENT")
_LIB.define("_conv2d_cutlass(Tensor x, Tensor w, Tensor bias, Tensor? residual, int[] stride, int[] padding, "
            "int[] dilation, bool relu, int tile) -> Tensor")
_LIB.define("_bias_residual_act_cuda(Tensor x, Tensor? bias, Tensor? residual, bool relu) -> Tensor")
_LIB.define("_add_relu_cuda(Tensor x, Tensor y) -> Tensor")

_LIB.define("_conv2d_sm90(Tensor x, Tensor w, Tensor bias, Tensor? residual, int[] stride, int[] padding, "
            "int[] dilation, bool relu, int config) -> Tensor")

CSRC = _sources.CSRC
SOURCES = _sources.sources()
CUDA_FLAGS = _sources.cuda_flags()


def _fake_conv_out(x, w, stride, padding, dilation):
    """The channels_last output both CUTLASS conv ops return, for tracing."""
    n, _, h, wd = x.shape
    k, _, r, s = w.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(wd, s, stride[1], padding[1], dilation[1])
    return torch.empty((n, k, p, q), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


@torch.library.register_fake("fused_resnet::_conv2d_cutlass")
def _(x, w, bias, residual, stride, padding, dilation, relu, tile):
    return _fake_conv_out(x, w, stride, padding, dilation)


@torch.library.register_fake("fused_resnet::_conv2d_sm90")
def _(x, w, bias, residual, stride, padding, dilation, relu, config):
    return _fake_conv_out(x, w, stride, padding, dilation)


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
    prebuilt = glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C*.so"))
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


def pack_krsc(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, R, S) -> channels_last, i.e. KRSC in memory, as the CUTLASS kernels read it."""
    return weight.contiguous(memory_format=torch.channels_last)


def cutlass_launch(x, weight, bias, stride, padding, dilation, relu, tile: int):
    """run(x, residual) -> out for the CUTLASS conv, with the packed (KRSC) weight and the fp32 bias
    prepared once (the selector's "cuda" backend; a separate scale is never passed here)."""
    from ._packing import packed

    cl = torch.channels_last
    w = packed(weight, "cutlass_krsc", pack_krsc)
    b = bias.float().contiguous() if bias is not None else torch.zeros(weight.shape[0], device=x.device)
    stride, padding, dilation = list(stride), list(padding), list(dilation)
    op = torch.ops.fused_resnet._conv2d_cutlass.default

    def run(x, residual):
        res = residual.contiguous(memory_format=cl) if residual is not None else None
        return op(x.contiguous(memory_format=cl), w, b, res, stride, padding, dilation, relu, tile)
    return run


# --- Hopper (sm_90a) CUTLASS 3.x kernels: csrc/sm90_kernels.cuh, one generated TU per config ------

_SM90_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16"}


def sm90_configs() -> tuple:
    """The sm90 kernel configs built into the extension, in config-index order (generated table
    fused_resnet/_sm90_configs.py: name, kind conv|gemm, dtype f16|bf16, tile, cluster, schedule)."""
    return _sm90_configs.CONFIGS


def sm90_config_index(name: str) -> int:
    """Index of the config called ``name`` (raises KeyError when there is none)."""
    for i, c in enumerate(_sm90_configs.CONFIGS):
        if c.name == name:
            return i
    raise KeyError(f"no sm90 config {name!r}; known: {[c.name for c in _sm90_configs.CONFIGS]}")


def _pair(v) -> tuple:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(e) for e in v)


def _is_pointwise(r, s, stride, padding) -> bool:
    """A 1x1, stride-1, unpadded conv: a plain GEMM over NHWC pixels (dilation is moot for 1x1)."""
    return r == 1 and s == 1 and _pair(stride) == (1, 1) and _pair(padding) == (0, 0)


def sm90_problem(x, weight, stride=1, padding=0, dilation=1, groups=1, *, check_device: bool = True) -> Optional[str]:
    """Why no sm90 kernel can run this conv, or None when one can (config choice aside: a gemm config
    also needs a pointwise conv, see ``sm90_config_accepts``). x: [N, C, H, W], weight: [K, C, R, S].
    ``check_device=False`` skips the device checks (GPU capability, sm_90a code in the library)."""
    if x.dim() != 4 or weight.dim() != 4:
        return "sm90: 4D input and weight only"
    if x.dtype not in _SM90_DTYPES or weight.dtype != x.dtype:
        return f"sm90: fp16/bf16 only (input {x.dtype}, weight {weight.dtype})"
    if groups != 1 or weight.shape[1] != x.shape[1]:
        return "sm90: grouped convs are not supported"
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    if k % 8:
        return f"sm90: output channels must be a multiple of 8 for TMA (got {k})"
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    why = sm90_im2col_problem((sh, sw), (ph, pw), (dh, dw), (r, s))
    if why:
        return why
    p, q = out_size(h, r, sh, ph, dh), out_size(w, s, sw, pw, dw)
    if min(n, p, q) <= 0:
        return "sm90: empty input or output"
    if n * max(h * w * c, p * q * k) >= 2 ** 31:
        return "sm90: tensor too large (int32 indexing)"
    if check_device:
        if x.device.type != "cuda":
            return "sm90: not a CUDA tensor"
        if _env.device_capability(x.device) != (9, 0):
            return f"sm90: needs an sm_90 GPU (H100/H200), this is sm_{''.join(map(str, _env.device_capability(x.device)))}"
    return None


# TMA im2col limits (cuTensorMapEncodeIm2col, rank-4 tensors): traversal (element) strides 1..8, the
# box corners (-padding, padding - dilation*(kernel-1)) each within [-128, 127]. CUTLASS's can_implement does not
# check them, and under -DNDEBUG a failed descriptor encode is silent: the kernel would run with a
# garbage descriptor. csrc/fused_resnet_api.cpp refuses the same.
SM90_MAX_STRIDE = 8
_CORNER = range(-128, 128)


def sm90_im2col_problem(stride, padding, dilation, kernel) -> Optional[str]:
    """Why the sm90 kernels' TMA im2col descriptor cannot encode this geometry, or None."""
    for st, pd, dl, k in zip(stride, padding, dilation, kernel):
        if not 1 <= st <= SM90_MAX_STRIDE:
            return f"sm90: stride {st} outside TMA im2col's 1..{SM90_MAX_STRIDE}"
        if -pd not in _CORNER or pd - dl * (k - 1) not in _CORNER:
            return f"sm90: padding {pd} / dilation {dl} outside TMA im2col's corner range"
    return None


def sm90_config_accepts(config: int, x, weight, stride=1, padding=0) -> bool:
    """Whether sm90 config ``config`` can run this conv (dtype and, for gemm configs, pointwise)."""
    cfg = _sm90_configs.CONFIGS[config]
    if _SM90_DTYPES.get(x.dtype) != cfg.dtype:
        return False
    return cfg.kind == "conv" or _is_pointwise(weight.shape[2], weight.shape[3], stride, padding)


def default_sm90_config(n, c, h, w, k, r, s, stride=1, padding=0, dilation=1, dtype=torch.float16,
                        sm_count: int = 132) -> int:
    """Heuristic sm90 config index (used where the tactic profiler has tabled nothing): pointwise
    convs -> the cooperative GEMM, 128x256 when K >= 256 and its tiles fill every SM at least once,
    else 128x128;
    other convs -> the implicit-GEMM conv, 128x128 likewise, else 64x128 (batch-1 layer3/4)."""
    dt = _SM90_DTYPES[dtype]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    m = n * out_size(h, r, sh, ph, dh) * out_size(w, s, sw, pw, dw)

    def tiles(tm, tn):
        return -(-m // tm) * -(-k // tn)

    if _is_pointwise(r, s, stride, padding):
        name = (f"gemm_{dt}_coop_128x256x64_c1x1" if k >= 256 and tiles(128, 256) >= sm_count
                else f"gemm_{dt}_coop_128x128x64_c2x1")
    else:
        name = (f"conv_{dt}_ws_128x128x64_c1x1" if tiles(128, 128) >= sm_count
                else f"conv_{dt}_ws_64x128x64_c1x1")
    return sm90_config_index(name)


def fused_conv2d_sm90(x, weight, bias, stride=1, padding=0, dilation=1, residual=None, relu=True,
                      config=None) -> torch.Tensor:
    """out = act(conv2d(x, weight) + bias[k] (+ residual)) on a Hopper sm90 kernel.

    x: [N, C, H, W] fp16/bf16 (any memory format; run as channels_last; C not a multiple of 8, e.g.
    the 3-channel stem, is zero-padded to one: a copy of x), weight: [K, C, R, S] same dtype (packed
    KRSC once per stable weight), bias: [K] (any float dtype, used as fp32) or None,
    residual: [N, K, P, Q] or None. config: index or name from ``sm90_configs()``, None for
    ``default_sm90_config``. Returns channels_last. Raises RuntimeError (from the op) when the config
    cannot take the problem or the device is not sm_90; use ``sm90_problem`` first to avoid that."""
    return sm90_launch(x, weight, bias, stride, padding, dilation, relu, config)(x, residual)


def _sm90_op():
    return torch.ops.fused_resnet._conv2d_sm90.default


def sm90_launch(x, weight, bias, stride=1, padding=0, dilation=1, relu=True, config=None):
    """run(x, residual) -> out for one sm90 kernel config, everything that depends only on the call's
    signature prepared once, as cutlass_launch does: the config index, the packed 16-byte aligned
    KRSC weight (channels zero-padded to a multiple of 8), the fp32 bias, the geometry lists. A plan
    replays ``run``; per call it only lays out x and the residual (see fused_conv2d_sm90)."""
    from ._packing import packed

    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    if config is None:
        config = default_sm90_config(n, c, h, w, k, r, s, stride, padding, dilation, x.dtype)
    elif isinstance(config, str):
        config = sm90_config_index(config)
    pad = -c % 8
    if pad:  # e.g. the 3-channel stem: zero channels up to a multiple of 8 (TMA rows of 16 bytes)
        wk = packed(weight, "cutlass_krsc_c8", lambda t: pack_krsc(torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad))))
    else:
        wk = packed(weight, "cutlass_krsc", pack_krsc)
    wk = _aligned16(wk)
    b = _aligned16(bias.float().contiguous() if bias is not None
                   else torch.zeros(k, device=x.device, dtype=torch.float32))
    geometry = [list(_pair(stride)), list(_pair(padding)), list(_pair(dilation))]
    relu, config = bool(relu), int(config)
    op, cl = _sm90_op(), torch.channels_last

    def run(x, residual):
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        res = _aligned16(residual.contiguous(memory_format=cl)) if residual is not None else None
        return op(_aligned16(x.contiguous(memory_format=cl)), wk, b, res, *geometry, relu, config)
    return run


def _aligned16(t: torch.Tensor) -> torch.Tensor:
    """TMA needs 16-byte aligned base addresses; a view at an odd offset is copied (rare). Fake and
    meta tensors (tracing) have no address."""
    if type(t) is torch.Tensor:  # the common case, checked first (is_fake costs microseconds)
        if t.data_ptr() % 16 == 0:  # meta: 0
            return t
    elif t.device.type == "meta" or is_fake(t) or t.data_ptr() % 16 == 0:  # Parameter, subclasses
        return t
    return t.clone(memory_format=torch.preserve_format)


# --- build report: registers, spills, shared memory and HGMMA per sm90 kernel ------------------------

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
