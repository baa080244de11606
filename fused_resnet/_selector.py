"""The one place that decides which kernel family runs a fused op.

Given the op's tensors and the requested backend, ``select_conv`` / ``select_elementwise`` return a
``Choice``: the backend ("eager", "triton" or "cuda"), a human-readable reason, and for convs the
tactic, i.e. the exact kernel sequence that runs (see TACTICS below; ``ops.fused_conv2d.run_tactic``
runs one). Every per-call guard (device, dtype, layout, alignment, groups, size) lives here and
nowhere else (``tactic_guard``), so explain() reports the same reason the dispatch used.

With "auto", a conv on a CUDA tensor goes to FUSED_RESNET_PREFER ("cuda"/"triton") when set and both
GPU kernels run; else to the tactic the per-GPU table (fused_resnet/tuning.py, written by
``python -m fused_resnet tune``) measured for this shape, where that tactic can run here; else to the
heuristic: CUTLASS where it runs (tile as csrc/fused_conv2d.cuh picks it), else Triton, else eager.

The requested backend comes from, in order: the op's ``backend=`` argument, the innermost
``use_backend(...)`` context, the ``FUSED_RESNET_BACKEND`` environment variable, else "auto".
"auto" falls back silently (the reason says why); an explicitly requested backend that cannot run
raises ``BackendUnavailableError``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Iterator, NamedTuple, Optional

import torch

from . import _env

BACKENDS = ("auto", "eager", "triton", "cuda")
_REQUESTED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fused_resnet_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


class Choice(NamedTuple):
    backend: str  # "eager" | "triton" | "cuda"
    reason: str
    tactic: str = ""  # the kernel(s) that run, e.g. "eager:cudnn_fused", "cuda:sm80_large" ("" for add_relu)


# --- tactics ----------------------------------------------------------------------------------------
# A tactic names the exact kernels one fused_conv2d call runs; its backend is the part before ":".
EAGER_CPU = "eager:cpu"  # oneDNN fused conv(+sum) then relu_, or conv2d + in-place epilogue (CPU)
CUDNN_POINTWISE = "eager:cudnn+pointwise"  # cuDNN conv with bias, then in-place torch add_ / relu_
CUDNN_EPILOGUE = "eager:cudnn+epilogue"  # cuDNN conv, then our one-pass bias+residual+ReLU kernel (_ext)
CUDNN_FUSED = "eager:cudnn_fused"  # torch.cudnn_convolution_relu / _add_relu (relu=False: conv+bias, add_)
TRITON = "triton"
CUDA_SM80_LARGE, CUDA_SM80_SMALL = "cuda:sm80_large", "cuda:sm80_small"  # CUTLASS 2.x, 128x128 / small tile
CUDA_SM80_TILES = {CUDA_SM80_LARGE: 1, CUDA_SM80_SMALL: 2}  # csrc/fused_conv2d.h ConvTile
CUDA_SM90_PREFIX = "cuda:sm90_"  # + a config name of the generated table (_ext.sm90_configs())
TACTICS_CUDA_TENSOR = (CUDNN_POINTWISE, CUDNN_EPILOGUE, CUDNN_FUSED, TRITON, CUDA_SM80_LARGE, CUDA_SM80_SMALL)


def backend_of(tactic: str) -> str:
    return tactic.split(":", 1)[0]


def conv_tactics(x: torch.Tensor) -> tuple[str, ...]:
    """Every tactic that exists for a conv on x's device (whether each can run a given call is
    ``tactic_guard``'s answer). CUDA tensors: the cuDNN-based eager tactics, Triton, the CUTLASS sm80
    tiles and whatever sm90 configs the extension offers."""
    if x.device.type != "cuda":
        return (EAGER_CPU,)
    from . import _ext

    return TACTICS_CUDA_TENSOR + tuple(_ext.sm90_tactics())


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fused_resnet backend {name!r}; expected one of {BACKENDS}")
    return name


def requested_backend(arg: Optional[str] = None) -> str:
    """Resolve the requested backend name (argument > use_backend > env var > "auto")."""
    if arg is not None:
        return _check_name(arg)
    return _ambient_backend()


# torch.compile cannot trace ContextVar.get (torch 2.11); the choice is read once at trace time and
# baked into the compiled graph (compile inside the use_backend() block you mean to use).
@torch.compiler.assume_constant_result
def _ambient_backend() -> str:
    ctx = _REQUESTED.get()
    if ctx is not None:
        return ctx
    return _env_backend(os.environ.get("FUSED_RESNET_BACKEND"))


@functools.lru_cache(maxsize=8)
def _env_backend(value: Optional[str]) -> str:
    """FUSED_RESNET_BACKEND's value checked once per distinct value (read on every fused call)."""
    return _check_name(value or "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run fused ops inside it with backend ``name`` ("auto", "eager", "triton", "cuda")."""
    token = _REQUESTED.set(_check_name(name))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def _triton_status() -> tuple[bool, str]:
    return _env.triton_status()


def _cuda_ext_status() -> tuple[bool, str]:
    from . import _ext

    return _ext.status()


def backend_status() -> dict[str, tuple[bool, str]]:
    """{backend: (usable here, why / why not)} for every backend."""
    return {
        "eager": (True, "PyTorch ops (oneDNN on CPU, cuDNN on GPU)"),
        "triton": _triton_status(),
        "cuda": _cuda_ext_status(),
    }


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable in this process (always includes "eager")."""
    return tuple(name for name, (ok, _) in backend_status().items() if ok)


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CUDA_DTYPES = (torch.float16, torch.bfloat16)


def _triton_guard(x: torch.Tensor) -> Optional[str]:
    """None if the Triton conv can run these tensors, else why not."""
    ok, why = _triton_status()
    if not ok:
        return why
    if x.device.type != "cuda" and not (_env.triton_interpreting() and x.device.type == "cpu"):
        return f"{x.device.type.upper()} tensor"
    if x.dtype not in _TRITON_DTYPES:
        return f"dtype {x.dtype} not supported by the triton kernel"
    return None


def _cuda_guard(x: torch.Tensor, weight: torch.Tensor, groups: int, scale=None) -> Optional[str]:
    if x.device.type != "cuda":
        return f"{x.device.type.upper()} tensor"
    ok, why = _cuda_ext_status()
    if not ok:
        return why
    if scale is not None:
        return "separate per-channel scale not supported by the CUTLASS kernels (fold it into the weight)"
    if x.dtype not in _CUDA_DTYPES:
        return f"dtype {x.dtype} not supported by the CUTLASS kernels (fp16/bf16 only)"
    if groups != 1:
        return "grouped conv not supported by the CUTLASS kernels"
    if x.shape[1] % 8 or weight.shape[0] % 8:
        return "channels not a multiple of 8 (CUTLASS alignment)"
    return None


def sm80_tile_tactic(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> str:
    """The CUTLASS sm80 tile the kernel's own auto rule picks (csrc/fused_conv2d.cuh use_large_tile:
    enough 128x128 tiles for ~2 waves of a 132-SM H100), named so explain() shows it."""
    from .ops.fused_conv2d import out_size

    n, _, h, w = x.shape
    k, _, r, s_ = weight.shape
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s_, stride[1], padding[1], dilation[1])
    tiles = (n * p * q + 127) // 128 * ((k + 127) // 128)
    return CUDA_SM80_LARGE if tiles >= 264 else CUDA_SM80_SMALL


def _pair2(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def tactic_guard(tactic: str, x: torch.Tensor, weight: torch.Tensor, groups: int = 1, scale=None, *,
                 stride=1, padding=0, dilation=1, relu: bool = True, residual: bool = False) -> Optional[str]:
    """None if ``tactic`` can run this fused_conv2d call here, else why not."""
    stride, padding, dilation = _pair2(stride), _pair2(padding), _pair2(dilation)
    if tactic == EAGER_CPU:
        return None if x.device.type != "cuda" else "CUDA tensor (the cuDNN tactics run CUDA tensors)"
    if tactic in (CUDNN_POINTWISE, CUDNN_EPILOGUE, CUDNN_FUSED):
        if x.device.type != "cuda":
            return f"{x.device.type.upper()} tensor (cuDNN runs CUDA tensors)"
        if not _env.cudnn_available():
            return "cuDNN not available"
        if tactic == CUDNN_POINTWISE:
            return None
        if scale is not None:
            return "separate per-channel scale (fold it into the weight)"
        if tactic == CUDNN_FUSED:
            return None
        ok, why = _cuda_ext_status()
        if not ok:
            return why
        if x.dtype not in _TRITON_DTYPES:
            return f"dtype {x.dtype} not supported by the epilogue kernel"
        if not (x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)):
            return "the epilogue kernel takes channels_last (NHWC) tensors"
        return None
    if tactic == TRITON:
        return _triton_guard(x)
    if tactic in CUDA_SM80_TILES:
        return _cuda_guard(x, weight, groups, scale)
    if tactic.startswith(CUDA_SM90_PREFIX):
        why = _cuda_guard(x, weight, groups, scale)
        if why is not None:
            return why
        from . import _ext

        return _ext.sm90_guard(tactic, x, weight, stride, padding, dilation, groups)
    return f"unknown tactic {tactic!r}"


def default_tactic(x: torch.Tensor, weight: torch.Tensor, groups: int = 1, scale=None, *, stride=1, padding=0,
                   dilation=1, relu: bool = True, residual: bool = False) -> str:
    """What auto runs with no tuned table and no FUSED_RESNET_PREFER (the tuner's "default choice")."""
    return select_conv(x, weight, groups, "auto", scale, stride, padding=padding, dilation=dilation, relu=relu,
                       residual=residual, heuristic_only=True).tactic


def _precision_note(backend: str, x: torch.Tensor) -> str:
    if x.dtype != torch.float32 or backend != "triton":
        return backend
    if x.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "triton (fp32 as TF32: torch.backends.cudnn.allow_tf32 is on)"
    return "triton (exact fp32)"


def select_conv(x: torch.Tensor, weight: torch.Tensor, groups: int, requested: str, scale=None,
                stride=1, *, padding=0, dilation=1, relu: bool = True, residual: bool = False,
                heuristic_only: bool = False) -> Choice:
    """Pick the backend and tactic for one fused_conv2d call (``residual``: whether one is added;
    ``heuristic_only``: ignore the tuned table and FUSED_RESNET_PREFER).

    Explicit backends: "eager" runs eager:cpu / eager:cudnn+pointwise; "triton" runs triton; "cuda"
    runs the tabled CUTLASS tactic for this shape if any, else the sm80 tile the kernel's rule picks.
    """
    stride, padding, dilation = _pair2(stride), _pair2(padding), _pair2(dilation)
    on_gpu = x.device.type == "cuda"
    if requested == "eager":
        return Choice("eager", "eager: requested", CUDNN_POINTWISE if on_gpu else EAGER_CPU)
    entry = None
    if on_gpu and not heuristic_only:
        from . import tuning

        entry = tuning.lookup(x, weight, groups, stride, padding, dilation, relu, residual)
    conv = dict(stride=stride, padding=padding, dilation=dilation, relu=relu, residual=residual)
    if requested in ("triton", "cuda"):
        why = _triton_guard(x) if requested == "triton" else _cuda_guard(x, weight, groups, scale)
        if why is not None:
            raise BackendUnavailableError(f"fused_resnet backend {requested!r} was requested but cannot run: {why}")
        tactic = TRITON
        if requested == "cuda":
            tactic = sm80_tile_tactic(x, weight, stride, padding, dilation)
            tabled = entry.tactic if entry is not None else None
            if tabled and backend_of(tabled) == "cuda" and tactic_guard(tabled, x, weight, groups, scale, **conv) is None:
                tactic = tabled
        return Choice(requested, _precision_note(requested, x), tactic)
    # auto: GPU kernels only for GPU tensors; the interpreter is never picked automatically.
    if not on_gpu:
        return Choice("eager", f"eager: {x.device.type.upper()} tensor", EAGER_CPU)
    return _auto_choice(_cuda_guard(x, weight, groups, scale), _triton_guard(x),
                        "" if heuristic_only else os.environ.get("FUSED_RESNET_PREFER", ""), entry,
                        _precision_note("triton", x),
                        cuda_tactic=sm80_tile_tactic(x, weight, stride, padding, dilation),
                        guard=lambda t: tactic_guard(t, x, weight, groups, scale, **conv))


_OLD_TABLE_TACTIC = {"eager": CUDNN_POINTWISE, "triton": TRITON}  # format-1 tables name backends only


def _auto_choice(why_cuda: Optional[str], why_triton: Optional[str], prefer: str, tabled,
                 triton_note: str = "triton", *, cuda_tactic: str = CUDA_SM80_LARGE, guard=None) -> Choice:
    """auto on a CUDA tensor, given why each GPU kernel cannot run (None: it can), FUSED_RESNET_PREFER
    and the tuned table's entry for this shape on this GPU: None (not measured), a tactic or backend
    name, or a tuning.Entry; triton_note is the Triton choice's reason (its fp32 precision);
    cuda_tactic the CUTLASS tactic the heuristic runs; guard(tactic) says why a tactic cannot run
    (default: from why_cuda / why_triton; eager tactics always run).

    Order: FUSED_RESNET_PREFER (where both kernels run) > the table (any tactic that can run,
    eager ones included: cuDNN's conv or fused ops beat both fused kernels on some shapes, e.g. the
    3-channel stem on the H100) > CUTLASS > Triton > eager.
    """
    if why_cuda is None and why_triton is None and prefer in ("cuda", "triton"):
        return Choice(prefer, f"{prefer}: FUSED_RESNET_PREFER", cuda_tactic if prefer == "cuda" else TRITON)
    if guard is None:
        def guard(t):
            return {"cuda": why_cuda, "triton": why_triton}.get(backend_of(t))
    tactic, note = (tabled, "") if isinstance(tabled, str) or tabled is None else (tabled.tactic, tabled.note())
    unusable = ""
    if tactic is not None:
        tactic = {"cuda": cuda_tactic}.get(tactic, _OLD_TABLE_TACTIC.get(tactic, tactic))
        why_not = guard(tactic)
        if why_not is None:
            what = "default kept" if getattr(tabled, "kept_default", False) else "measured fastest for this shape"
            return Choice(backend_of(tactic), f"{tactic}: {what} (tuned table{note})", tactic)
        unusable = f" (tabled {tactic} cannot run: {why_not})"
    if why_cuda is None:
        # Untabled shapes: CUTLASS beat the Triton conv on all 46 ResNet-50 fp16 shapes measured on
        # an H200 (batch 32 and 256, benchmarks/results/h200-run2).
        return Choice("cuda", "cuda: cutlass" + (" (default where both run)" if why_triton is None else "") + unusable,
                      cuda_tactic)
    if why_triton is None:
        return Choice("triton", triton_note + unusable, TRITON)
    return Choice("eager", f"eager: {why_triton}" + unusable, CUDNN_POINTWISE)


def _elementwise_cuda_guard(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return f"{x.device.type.upper()} tensor"
    ok, why = _cuda_ext_status()
    if not ok:
        return why
    if x.dim() != 4:
        return "the CUDA elementwise kernels take 4D (NHWC) tensors"
    return None


def select_elementwise(x: torch.Tensor, requested: str) -> Choice:
    """Pick the backend for add_relu."""
    if requested == "eager":
        return Choice("eager", "eager: requested")
    if requested in ("triton", "cuda"):
        why = _triton_guard(x) if requested == "triton" else _elementwise_cuda_guard(x)
        if why is not None:
            raise BackendUnavailableError(f"fused_resnet backend {requested!r} was requested but cannot run: {why}")
        return Choice(requested, requested)
    if x.device.type != "cuda":
        return Choice("eager", f"eager: {x.device.type.upper()} tensor")
    if _triton_guard(x) is None:
        return Choice("triton", "triton")
    return Choice("eager", "eager: no GPU backend usable")
