"""Spare buffers: a dead activation's memory reused inside one forward (CPU).

glibc serves a fresh allocation at least as large as its mmap threshold (which follows the largest
block recently freed, up to 32 MiB) with new pages, and every 4 KiB page then faults on its first
write. A ResNet-50 at batch 8 writes two fresh 25.7 MB activations per forward, the stem's output and
layer1's downsample output: alone in a process that is 14,080 minor faults per forward, ~10 ms of
~240 (benchmarks/NOTES.md, "Spare buffers"). The stem's output is dead once the max-pool has read it,
and in a Bottleneck ResNet with 64 stem channels layer1's downsample output has exactly its bytes.

So the forward *offers* a dead activation here (``_donation.run_stem_pool``: only a tensor nobody else
holds, by the same reference and storage counts as donation) and the next CPU conv whose fresh output
has exactly that many bytes *takes* it (tactics/eager.py: ``EagerCPU``): a new tensor over the same
storage, zeroed, and the conv summed into it in place (torch's oneDNN op writes into a given buffer
only by summing into it). ``conv + 0.0`` is the conv's value bit for bit (a conv never produces -0.0:
its sums start at +0), NaN and Inf included.

One spare at a time, per thread, dropped when the top-level forward ends (``_fused._run_planned``), so
no memory is kept between calls; under torch.compile nothing is offered.
"""
from __future__ import annotations

import threading

import torch


# Smaller activations are not offered: a fresh buffer from glibc's heap does not fault, and the spare
# then only adds its zeroing pass. Measured with ResNet-50 (benchmarks/NOTES.md, "Spare buffers"): the
# 3.2 MB stem output at batch 1 takes no faults fresh, and the spare cost 1.3% there; the 25.7 MB one
# at batch 8 takes 6,280.
MIN_BYTES = 16 << 20


class _State(threading.local):
    t = None  # the offered tensor, or None (read inline by the conv launch: host cost)


STATE = _State()


def offer(t: torch.Tensor) -> None:
    """``t`` is dead (the caller checked that nobody else holds it): its memory may back one later
    conv output of the same size in this forward."""
    if (t.nbytes >= MIN_BYTES and t.is_cpu and t.dim() == 4 and t.storage_offset() == 0 and t.is_contiguous(memory_format=torch.channels_last)
            and t.untyped_storage().nbytes() == t.nbytes):
        STATE.t = t


def take(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """The spare's memory as a zeroed channels_last tensor of ``shape`` (n, c, h, w) and ``dtype``; the
    caller checked that the spare has exactly its bytes. The spare is gone after this."""
    t, STATE.t = STATE.t, None
    n, c, h, w = shape
    out = torch.empty(0, dtype=dtype).set_(t.untyped_storage(), 0, shape, (c * h * w, 1, w * c, c))
    return out.zero_()


def drop() -> None:
    STATE.t = None
