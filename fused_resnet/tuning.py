"""Committed per-GPU tuning tables: which backend / tile config is fastest per conv shape."""
from __future__ import annotations

from typing import Optional


def preferred_backend(x, weight, groups) -> Optional[str]:
    """The measured-fastest backend for this conv on this GPU, or None if never measured."""
    return None
