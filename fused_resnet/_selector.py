"""Which tactic runs a fused op: an ordering over the tactic registry (fused_resnet.tactics).

Given the op's tensors and the requested backend, ``select_conv`` / ``select_elementwise`` return a
``Choice``: the backend ("eager", "triton" or "cuda"), a human-readable reason, and for convs the
tactic, i.e. the exact kernel sequence that runs. Whether a tactic can run a call is the tactic's
own answer (``Tactic.why_not``), so explain(), the tuner and the dispatch report the same reason.

With "auto", a conv on a CUDA tensor goes to FUSED_RESNET_PREFER ("cuda"/"triton") when set and both
GPU kernels run; else to the tactic the per-GPU table (fused_resnet/tuning.py, written by
``python -m fused_resnet tune``) measured for this shape, where that tactic can run here; else to the
heuristic: CUTLASS where it runs (the sm80 tile for the shape), else Triton, else eager.

The requested backend comes from, in order: the op's ``backend=`` argument, the innermost
``use_backend(...)`` context, the ``FUSED_RESNET_BACKEND`` environment variable, else "auto".
"auto" falls back silently (the reason says why); an explicitly requested backend that cannot run
raises ``BackendUnavailableError``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, NamedTuple, Optional

import torch

from . import _env, _ext, tactics, tuning
from ._geometry import pair_tuple
from .tactics import Problem

BACKENDS = ("auto", "eager", "triton", "cuda")
_REQUESTED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("fused_resnet_backend", default=None)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this call."""


class Choice(NamedTuple):
    backend: str  # "eager" | "triton" | "cuda"
    reason: str
    tactic: str = ""  # the kernel(s) that run, e.g. "eager:cudnn_fused", "cuda:sm80_large" ("" for add_relu)


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
    return _env_backend(_env.get("FUSED_RESNET_BACKEND") or None)


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


def backend_status() -> dict[str, tuple[bool, str]]:
    """{backend: (usable here, why / why not)} for every backend."""
    return {
        "eager": (True, "PyTorch ops (oneDNN on CPU, cuDNN on GPU)"),
        "triton": _env.triton_status(),
        "cuda": _ext.status(),
    }


def available_backends() -> tuple[str, ...]:
    """Names of the backends usable in this process (always includes "eager")."""
    return tuple(name for name, (ok, _) in backend_status().items() if ok)


def problem(x: torch.Tensor, weight: torch.Tensor, groups: int = 1, scale=None, *, stride=1, padding=0, dilation=1,
            relu: bool = True, residual: bool = False, into_residual: bool = False) -> Problem:
    """The tactics' view of one fused_conv2d call."""
    return Problem(x, weight, pair_tuple(stride), pair_tuple(padding), pair_tuple(dilation), groups, scale is not None,
                   bool(residual), bool(relu), into_residual)


def tactic_guard(tactic: str, x: torch.Tensor, weight: torch.Tensor, groups: int = 1, scale=None, *,
                 stride=1, padding=0, dilation=1, relu: bool = True, residual: bool = False) -> Optional[str]:
    """None if ``tactic`` can run this fused_conv2d call here, else why not."""
    return tactics.why_not(tactic, problem(x, weight, groups, scale, stride=stride, padding=padding,
                                           dilation=dilation, relu=relu, residual=residual))


def default_tactic(x: torch.Tensor, weight: torch.Tensor, groups: int = 1, scale=None, *, stride=1, padding=0,
                   dilation=1, relu: bool = True, residual: bool = False) -> str:
    """What auto runs with no tuned table and no FUSED_RESNET_PREFER (the tuner's "default choice")."""
    return choose(problem(x, weight, groups, scale, stride=stride, padding=padding, dilation=dilation, relu=relu,
                          residual=residual), "auto", heuristic_only=True).tactic


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
    ``heuristic_only``: ignore the tuned table and FUSED_RESNET_PREFER). See ``choose``."""
    return choose(problem(x, weight, groups, scale, stride=stride, padding=padding, dilation=dilation, relu=relu,
                          residual=residual), requested, heuristic_only)


def _first(reasons: list) -> Optional[str]:
    return reasons[0] if reasons else None


def choose(p: Problem, requested: str, heuristic_only: bool = False) -> Choice:
    """The tactic for problem ``p`` with backend ``requested``: the registry's tactics in order.

    Explicit backends: "eager" runs eager:cpu / eager:cudnn+pointwise; "triton" runs triton; "cuda"
    runs the tabled CUTLASS tactic for this shape if it can run, else the sm80 tile for this shape.
    auto on a CUDA tensor: FUSED_RESNET_PREFER (where both GPU kernels run) > the table (any tactic
    that can run, eager ones included: cuDNN's conv or fused ops beat both fused kernels on some
    shapes, e.g. the 3-channel stem on the H100) > CUTLASS > Triton > eager. Other devices: eager.
    """
    x = p.x
    on_gpu = x.device.type == "cuda"
    if requested == "eager":
        return Choice("eager", "eager: requested", tactics.CUDNN_POINTWISE if on_gpu else tactics.EAGER_CPU)
    entry = tuning.lookup(p) if on_gpu and not heuristic_only else None
    if requested in ("triton", "cuda"):
        why = (tactics.why_not(tactics.TRITON, p) if requested == "triton"
               else _first(tactics.cutlass.cutlass_reasons(p)))
        if why is not None:
            raise BackendUnavailableError(f"fused_resnet backend {requested!r} was requested but cannot run: {why}")
        if requested == "triton":
            return Choice("triton", _precision_note("triton", x), tactics.TRITON)
        tabled = entry.tactic if entry is not None else None
        if tabled and tactics.backend_of(tabled) == "cuda" and tactics.why_not(tabled, p) is None:
            return Choice("cuda", "cuda", tabled)
        return Choice("cuda", "cuda", tactics.cutlass.sm80_tile(p))
    # auto: GPU kernels only for GPU tensors; the interpreter is never picked automatically.
    if not on_gpu:
        return Choice("eager", f"eager: {x.device.type.upper()} tensor", tactics.EAGER_CPU)
    why_cuda = _first(tactics.cutlass.cutlass_reasons(p))
    why_triton = tactics.why_not(tactics.TRITON, p)
    prefer = "" if heuristic_only else _env.get("FUSED_RESNET_PREFER")
    if why_cuda is None and why_triton is None and prefer in ("cuda", "triton"):
        return Choice(prefer, f"{prefer}: FUSED_RESNET_PREFER",
                      tactics.cutlass.sm80_tile(p) if prefer == "cuda" else tactics.TRITON)
    unusable = ""
    if entry is not None:
        why_not = tactics.why_not(entry.tactic, p)
        if why_not is None:
            what = "default kept" if entry.kept_default else "measured fastest for this shape"
            return Choice(tactics.backend_of(entry.tactic), f"{entry.tactic}: {what} (tuned table{entry.note()})",
                          entry.tactic)
        unusable = f" (tabled {entry.tactic} cannot run: {why_not})"
        # The next fastest measured tactic that can run (a table measured before a tactic learnt to
        # refuse a case keeps its other timings).
        for t in sorted(entry.times_ms, key=entry.times_ms.get):
            if t != entry.tactic and tactics.why_not(t, p) is None:
                return Choice(tactics.backend_of(t), f"{t}: the fastest tabled tactic that can run{unusable}", t)
    if why_cuda is None:
        # Untabled shapes: CUTLASS beat the Triton conv on all 46 ResNet-50 fp16 shapes measured on
        # an H200 (benchmarks/NOTES.md).
        return Choice("cuda", "cuda: cutlass" + (" (default where both run)" if why_triton is None else "") + unusable,
                      tactics.cutlass.sm80_tile(p))
    if why_triton is None and not _narrow_groups(p):
        return Choice("triton", _precision_note("triton", x) + unusable, tactics.TRITON)
    if why_triton is None:
        # The Triton conv runs one GEMM per group, its N tile at least 16 wide: ResNeXt-50 32x4d's
        # 4-32 channels per group left the tensor cores mostly idle (the model at 0.17x torch.compile
        # on an H200, benchmarks/NOTES.md "First run of the Hopper kernels"); cuDNN has grouped kernels.
        why_triton = (f"{p.weight.shape[0] // p.groups} output channels per group "
                      f"(Triton's GEMM per group idles below {NARROW_GROUP})")
    # cuDNN's conv then the extension's one-pass epilogue beat conv + add_ + relu_ on all 48 ResNet-50
    # shapes tuned on the H200 (median 0.74x the time); pointwise where the epilogue cannot run.
    for t in (tactics.CUDNN_EPILOGUE, tactics.CUDNN_POINTWISE):
        if tactics.why_not(t, p) is None:
            return Choice("eager", f"eager: {why_triton}" + unusable, t)
    return Choice("eager", f"eager: {why_triton}" + unusable, tactics.CUDNN_POINTWISE)


NARROW_GROUP = 64  # output channels per group below which a grouped conv goes to cuDNN, not Triton


def _narrow_groups(p: Problem) -> bool:
    return p.groups > 1 and p.weight.shape[0] // p.groups < NARROW_GROUP


def _elementwise_cuda_guard(x: torch.Tensor) -> Optional[str]:
    if x.device.type != "cuda":
        return f"{x.device.type.upper()} tensor"
    ok, why = _ext.status()
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
        why = _first(tactics.triton_conv.triton_reasons(x)) if requested == "triton" else _elementwise_cuda_guard(x)
        if why is not None:
            raise BackendUnavailableError(f"fused_resnet backend {requested!r} was requested but cannot run: {why}")
        return Choice(requested, requested)
    if x.device.type != "cuda":
        return Choice("eager", f"eager: {x.device.type.upper()} tensor")
    if _first(tactics.triton_conv.triton_reasons(x)) is None:
        return Choice("triton", "triton")
    return Choice("eager", "eager: no GPU backend usable")
