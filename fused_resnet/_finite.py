"""Finite bounds: when oneDNN's ReLU post-op may stand in for torch.relu on the CPU.

torch.relu keeps NaN; oneDNN's ReLU post-op (and every other post-op torch can reach) maps NaN to 0
(benchmarks/relu_postop_nan.py). On everything else (+-Inf, +-0.0, negatives, denormals) the two agree
bit for bit. So the post-op is exact exactly when the conv's output holds no NaN, and that can be
proven before the conv runs: with a finite input x, finite folded weights W and bias b, every partial
sum of ``conv(x) + b (+ residual)`` is bounded by

    bound(out) = bound(x) * gain(W) + max|b| (+ bound(residual)),   gain(W) = max over output
    channels of sum |W[o, :, :, :]| (the conv's infinity norm),

and when that bound is far below the float32 maximum (``LIMIT``: a factor 4 below, much more than the
(1 + n*eps) rounding of an n-term fp32 sum) no sum overflows, so no Inf and no NaN can arise. ReLU does
not raise a bound, so the bound of each output feeds the next conv.

Bounds travel on the activations themselves: an attribute ``KEY`` holding (forward token, bound),
read and written inline by the guarded launch (tactics/eager.py: ``EagerCPU``, per conv on the hot
path); inference tensors have no version counter to check. The post-op is used only inside
an eager forward of a fused module, and a bound is believed only inside the top-level forward that
recorded it (``STATE.token``: a tensor kept from another call, or written through numpy/``.data``
since, is measured again). Inside that forward only the package's own launches write
an activation in place (over a residual): the guarded launch records the new bound, the others drop
the old one (the exact path of tactics/eager.py, the Triton launch). What modules that are not fused
return (hooked ones, others: ``_donation.observed``; downsamples and anti-alias layers that do not
fold) has its bound dropped (``forget``). A tensor with no believable bound, or whose propagated bound
got too loose, is measured (``measure``: one read pass, max |x|; NaN and Inf measure as
unbounded). Measured on a random-init ResNet-50 at batch 8: the stem's input is measured, then one
more tensor per forward (benchmarks/NOTES.md, "Finite bounds").

Where the proof does not hold (a NaN or Inf input, a bound that would overflow) the conv runs as
before: no post-op, then torch's NaN-keeping relu_.
"""
from __future__ import annotations

import itertools
import threading

import torch

LIMIT = torch.finfo(torch.float32).max / 4  # (float32: the dtype the guarded post-op runs in)
ENABLED = True  # the guarded post-op may be used (tests and the A/B benchmark turn it off)
KEY = "_fused_resnet_bound"
# The token of the top-level eager forward running on this thread (fused modules' _run_planned sets
# it from TOKENS and restores the outer one when it ends); 0 outside every forward, where the guarded
# post-op is not used at all (a compiled graph calling the op, a bare op call: buffers there may be
# written with no version bump).
TOKENS = itertools.count(1)
STATE = threading.local()


def token() -> int:
    return getattr(STATE, "token", 0)


def forget(t):
    """``t`` came out of code that is not ours: no bound recorded on it is believed. Returns t.
    (Nothing under torch.compile: no bounds there, and torch 2.11's dynamo cannot read a tensor's
    ``__dict__``.)"""
    if not torch.compiler.is_compiling() and isinstance(t, torch.Tensor) and KEY in t.__dict__:
        del t.__dict__[KEY]
    return t


def measure(t: torch.Tensor) -> float:
    """max |t| (inf when t holds NaN or Inf): one read pass, ``aminmax`` over the tensor's memory as
    one flat run (channels_last as NHWC). On a channels_last tensor ``aminmax`` itself is ~20x slower
    and ``abs().amax()`` writes a temporary (benchmarks/NOTES.md, "Thread pools that spin", this round's changes)."""
    if not t.numel():
        return 0.0
    if t.is_contiguous():
        flat = t.reshape(-1)
    elif t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        flat = t.permute(0, 2, 3, 1).reshape(-1)  # (a view: same memory, in its order)
    else:
        m = float(t.abs().amax())
        return m if m == m else float("inf")
    lo, hi = torch.aminmax(flat)  # (NaN anywhere makes both NaN)
    lo, hi = float(lo), float(hi)
    return max(-lo, hi) if lo == lo and hi == hi else float("inf")
