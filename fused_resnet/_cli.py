"""Argument types and checks shared by the command line's subcommands.

The rule (README, "Command line"): a bad argument, file or environment value is one line on stderr
and exit status 2, found before any model is built where possible; exit status 1 is only ever a
numerical FAIL. argparse types raise ArgumentTypeError (argparse turns it into exit 2); checks that
need several arguments raise UsageError, which ``__main__.main`` prints as one line.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


class UsageError(Exception):
    """A bad argument, file or environment value: one line on stderr, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text is what --help is for)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_int_list(text: str) -> list:
    """A comma list of positive integers, e.g. "1,8,32"."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return [positive_int(p) for p in parts]


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def device_arg(text: str) -> str:
    """cpu, cuda or cuda:N, and it must exist here."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}: cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported: cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"--device {text}: no CUDA GPU is visible to torch here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def check_environment() -> None:
    """FUSED_RESNET_* values this package reads at call time, checked before any work."""
    from . import _selector

    try:
        _selector.requested_backend()
    except ValueError as e:
        raise UsageError(f"FUSED_RESNET_BACKEND: {e}") from None
    prefer = os.environ.get("FUSED_RESNET_PREFER", "")
    if prefer not in ("", "cuda", "triton"):
        raise UsageError(f"FUSED_RESNET_PREFER={prefer!r}: expected cuda, triton or empty")
    table = os.environ.get("FUSED_RESNET_TABLE", "")
    if table:
        from . import tuning

        try:
            tuning.read_meta(table)
        except (OSError, ValueError) as e:
            raise UsageError(f"FUSED_RESNET_TABLE={table!r}: {str(e).splitlines()[0]}") from None


def check_backend_for_device(backend, device: str) -> None:
    """An explicitly requested GPU backend cannot run CPU tensors: say so before building a model."""
    if backend in ("triton", "cuda") and not device.startswith("cuda"):
        raise UsageError(f"--backend {backend} runs on CUDA tensors only, and the device is {device}")


def fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
