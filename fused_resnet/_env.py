"""The machine and the environment, in one leaf module (imports only torch and the standard library).

Every ``FUSED_RESNET_*`` variable the package reads is named here, with what it does; the GPU's
identity (name, file-name tag, compute capability, SM count); whether Triton and cuDNN can run in
this process (the CUDA extension answers for itself: ``_ext.status()``); interpreter detection. Backends, the tactic registry and the tables import this
module, never the dispatcher. Tests fake a machine by replacing these functions.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re

import torch

# name -> what it does (``python -m fused_resnet info`` lists them; _sources.py and setup.py, which run
# without torch, read theirs directly)
VARIABLES = {
    "FUSED_RESNET_BACKEND": "auto | eager | triton | cuda: the backend when neither backend= nor use_backend() says",
    "FUSED_RESNET_PREFER": "cuda | triton: under auto, run this GPU kernel where both run (overrides the table)",
    "FUSED_RESNET_TABLE": "path of a tactic table to use for every GPU (try a table before committing it)",
    "FUSED_RESNET_AUTOTUNE": "1: autotune the Triton conv's tile per shape on first use (tune sets it)",
    "FUSED_RESNET_SM90_EXCLUDE": "comma list of sm90 configs taken out of the tactics (failed their check)",
    "FUSED_RESNET_SM90": "0: build the CUDA extension without the Hopper (sm90) kernels",
    "FUSED_RESNET_JIT": "0: never JIT-build the CUDA extension (use a prebuilt library or report why not)",
    "FUSED_RESNET_CPU_GRAPH": "0: optimize() runs CPU inputs through the converted model, never the oneDNN CPU graph",
    "FUSED_RESNET_CPU_GRAPH_TUNE": "timing rounds per conv shape when a CPU graph is built, for oneDNN's kernels and "
                                   "the Winograd and phase-split convs (default 3; 0: oneDNN's first implementation "
                                   "everywhere, no Winograd)",
    "FUSED_RESNET_GIT_SHA": "the commit recorded in benchmark and tuning results (else git is asked)",
    "FUSED_RESNET_AOT_DEBUG": "1: keep the Triton ahead-of-time compiler's intermediate files",
    # Read by scripts that do not import the package (listed here so the list is whole):
    "FUSED_RESNET_BUILD_CUDA": "1: setup.py builds the CUDA extension ahead of time (fused_resnet/_C*.so)",
    "FUSED_RESNET_BENCH_DEVICE": "cuda: benchmarks/ (pytest-benchmark) runs on the GPU",
}


def get(name: str, default: str = "") -> str:
    """The value of one of VARIABLES (a typo in a name is a bug, not a silent default)."""
    if name not in VARIABLES:
        raise KeyError(f"unknown fused_resnet environment variable {name!r}")
    return os.environ.get(name, default)


def sm90_excluded() -> frozenset:
    """Config names FUSED_RESNET_SM90_EXCLUDE takes out of the sm90 tactics."""
    return frozenset(n.strip() for n in get("FUSED_RESNET_SM90_EXCLUDE").split(",") if n.strip())


def triton_interpreting() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter (tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# --- the GPU ----------------------------------------------------------------------------------------

def _index(device=None) -> int:
    index = torch.device(device).index if device is not None else None
    return torch.cuda.current_device() if index is None else index


@functools.lru_cache(maxsize=None)
def _properties(index: int):
    return torch.cuda.get_device_properties(index)


def device_capability(device=None) -> tuple:
    """(major, minor) compute capability of a CUDA device (default: the current one)."""
    p = _properties(_index(device))
    return (p.major, p.minor)


def sm_count(device=None) -> int:
    """Streaming multiprocessors of a CUDA device (tile heuristics size their waves with it)."""
    return _properties(_index(device)).multi_processor_count


def device_name(device=None) -> str:
    return _properties(_index(device)).name


def tag_of(name: str) -> str:
    """File-name form of a GPU name ("NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def device_tag(device=None) -> str:
    """The current GPU's tag (names its tactic and Triton tables), "cpu" without a GPU."""
    return tag_of(device_name(device)) if torch.cuda.is_available() else "cpu"


# --- which backends can run here ---------------------------------------------------------------------

def cudnn_available() -> bool:
    return torch.backends.cudnn.is_available()


@functools.lru_cache(maxsize=None)
def _triton_status() -> tuple:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if triton_interpreting():
        return True, "triton interpreter (TRITON_INTERPRET=1): runs on CPU tensors"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to torch"
    major, _ = device_capability()
    if major < 8:
        return False, f"GPU compute capability {major}.x < 8.0 (needs sm_80+)"
    return True, "triton on " + device_name()


def triton_status() -> tuple:
    """(usable, why / why not) for the Triton kernels in this process."""
    return _triton_status()
