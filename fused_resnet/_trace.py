"""Records which backend ran each conv while fused_resnet.explain() traces one forward.

Plain module globals (not thread-safe, read cheaply and traceable by torch.compile): explain()
is a diagnostic that runs one forward at a time. When no trace is active every hook is a no-op.
"""
from __future__ import annotations

import contextlib
from typing import Optional

_records: Optional[list] = None
_modules: list[str] = []  # names of the modules currently running (innermost last)
_conv: str = ""  # attribute name of the conv a fused block is running
_fallback: Optional[str] = None  # why the running block took torchvision's forward
own_hooks: set = set()  # ids of the hooks explain() registers (they must not count as a user's hooks)


def active() -> bool:
    return _records is not None


@contextlib.contextmanager
def recording():
    global _records
    _records = []
    try:
        yield _records
    finally:
        _records = None
        _modules.clear()
        own_hooks.clear()


def user_hooks(hook_dicts) -> bool:
    """Does any of these hook dicts hold a hook that is not explain()'s own?"""
    for d in hook_dicts:
        for k in d:
            if k not in own_hooks:
                return True
    return False


def current_name(suffix: str = "") -> str:
    base = _modules[-1] if _modules else ""
    return f"{base}.{suffix}" if base and suffix else (base or suffix)


def set_conv(name: str) -> None:
    global _conv
    if _records is not None:
        _conv = name


@contextlib.contextmanager
def fallback(reason: str):
    """Marks the convs run inside as torchvision's eager forward for ``reason``."""
    global _fallback
    if _records is None:
        yield
        return
    saved, _fallback = _fallback, reason
    try:
        yield
    finally:
        _fallback = saved


def fallback_reason() -> Optional[str]:
    return _fallback


def describe(x, weight, stride, dilation, groups) -> str:
    cout, _, kh, kw = weight.shape
    extra = f" s{stride[0]}" + (f" d{dilation[0]}" if dilation[0] != 1 else "") + (f" g{groups}" if groups != 1 else "")
    return f"{kh}x{kw} {x.shape[1]}->{cout}{extra} on {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"


def add(name: str, desc: str, backend: str, reason: str, tactic: str = "", fused: bool = True) -> None:
    if _records is not None:
        _records.append((name, desc, backend, reason, tactic or backend, fused))


def record(x, weight, stride, padding, dilation, groups, choice) -> None:
    if _records is not None:
        add(current_name(_conv), describe(x, weight, stride, dilation, groups), choice.backend, choice.reason,
            choice.tactic)
