"""The one place that decides which kernel family runs a fused op.

Given the op's tensors and the requested backend, ``select_conv`` / ``select_elementwise`` return a
``Choice``: the backend ("eager", "triton" or "cuda") and a human-readable reason. Every per-call
guard (device, dtype, layout, alignment, groups, size) lives here and nowhere else, so explain()
can report the same reason the dispatch used.

With "auto", a conv both GPU backends can run goes to FUSED_RESNET_PREFER ("cuda"/"triton") when
set, else to the one the committed per-GPU table (fused_resnet/tuning.py) measured faster, else to
cuda (faster on every shape measured so far); convs only one can run go to that one.

The requested backend comes from, in order: the op's ``backend=`` argument, the innermost
``use_backend(...)`` context, the ``FUSED_RESNET_BACKEND`` environment variable, else "auto".
"auto" falls back silently (the reason says why); an explicitly requested backend that cannot run
raises ``BackendUnavailableError``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from typing import Iterator, NamedTuple, Optional

import torch

BACKENDS = ("auto", "eager", "triton", "cuda")
_REQUESTED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fused_resnet_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


class Choice(NamedTuple):
    backend: str  # "eager" | "triton" | "cuda"
    reason: str


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
    return _check_name(os.environ.get("FUSED_RESNET_BACKEND", "auto") or "auto")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run fused ops inside it with backend ``name`` ("auto", "eager", "triton", "cuda")."""
    token = _REQUESTED.set(_check_name(name))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if triton_interpreting():
        return True, "triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"GPU compute capability {major}.x < 8.0 (needs sm_80+)"
    return True, "triton on " + torch.cuda.get_device_name()


@functools.lru_cache(maxsize=None)
def _cuda_ext_status() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
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
    if x.device.type != "cuda" and not (triton_interpreting() and x.device.type == "cpu"):
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


def _precision_note(backend: str, x: torch.Tensor) -> str:
    if x.dtype != torch.float32 or backend != "triton":
        return backend
    if x.device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "triton (fp32 as TF32: torch.backends.cudnn.allow_tf32 is on)"
    return "triton (exact fp32)"


def select_conv(x: torch.Tensor, weight: torch.Tensor, groups: int, requested: str, scale=None,
                stride: int = 1) -> Choice:
    """Pick the backend for one fused_conv2d call."""
    if requested == "eager":
        return Choice("eager", "eager: requested")
    if requested in ("triton", "cuda"):
        why = _triton_guard(x) if requested == "triton" else _cuda_guard(x, weight, groups, scale)
        if why is not None:
            raise BackendUnavailableError(f"fused_resnet backend {requested!r} was requested but cannot run: {why}")
        return Choice(requested, _precision_note(requested, x))
    # auto: GPU kernels only for GPU tensors; the interpreter is never picked automatically.
    if x.device.type != "cuda":
        return Choice("eager", f"eager: {x.device.type.upper()} tensor")
    from . import tuning

    return _auto_choice(_cuda_guard(x, weight, groups, scale), _triton_guard(x),
                        os.environ.get("FUSED_RESNET_PREFER", ""), tuning.preferred_backend(x, weight, groups, stride),
                        _precision_note("triton", x))


def _auto_choice(why_cuda: Optional[str], why_triton: Optional[str], prefer: str, tabled: Optional[str],
                 triton_note: str = "triton") -> Choice:
    """auto on a CUDA tensor, given why each GPU kernel cannot run (None: it can), FUSED_RESNET_PREFER
    and the tuned table's measured-fastest backend for this shape on this GPU (None: not measured);
    triton_note is the Triton choice's reason (its fp32 precision).

    Order: FUSED_RESNET_PREFER (where both kernels run) > the table (any backend that can run,
    "eager" included: cuDNN's conv plus pointwise passes beat both fused kernels on some shapes,
    e.g. the 3-channel stem on the H100) > CUTLASS > Triton > eager.
    """
    if why_cuda is None and why_triton is None and prefer in ("cuda", "triton"):
        return Choice(prefer, f"{prefer}: FUSED_RESNET_PREFER")
    if tabled == "eager" or (tabled == "cuda" and why_cuda is None) or (tabled == "triton" and why_triton is None):
        what = "cuDNN conv + pointwise" if tabled == "eager" else tabled
        return Choice(tabled, f"{tabled}: {what} measured fastest for this shape (tuned table)")
    if why_cuda is None:
        # Untabled shapes: CUTLASS beat the Triton conv on all 46 ResNet-50 fp16 shapes measured on
        # an H200 (batch 32 and 256, benchmarks/results/h200-run2).
        return Choice("cuda", "cuda: cutlass" + (" (default where both run)" if why_triton is None else ""))
    if why_triton is None:
        return Choice("triton", triton_note)
    return Choice("eager", f"eager: {why_triton}")


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
