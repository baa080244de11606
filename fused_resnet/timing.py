"""Timing helpers shared by ``python -m fused_resnet demo/bench`` and benchmarks/.

GPU: CUDA events around each call after warm-up, median of many runs (ARCHITECTURE.md, "Benchmark protocol").
CPU: wall clock around whole forwards, median. Providers are timed interleaved (round-robin), so
a slow spell on a shared machine hits every provider alike instead of skewing one ratio. Runtimes
with thread pools of their own (ONNX Runtime, OpenVINO, torch's OpenMP) keep their threads spinning
for tens of milliseconds after a call, and those threads take the cores from whatever runs next
(ResNet-50 batch 1 on 2 cores: 70 ms right after an ONNX Runtime call, 35.8 ms after one call of its
own; benchmarks/NOTES.md, "Thread pools that spin"). So the model bench gives each timed CPU sample
one untimed call of the same provider before it (``settle``).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass
class Timing:
    median_s: float
    spread_s: float  # interquartile range
    runs: int
    samples: tuple = ()  # seconds per sample, in the order taken (round i of an interleaved run)


def paired_ratio(base: Timing, t: Timing) -> tuple:
    """(median, interquartile range) of base/t over the rounds of one interleaved run.

    Each round times every provider back to back, so round i's samples share the machine's state
    (clock, neighbours' load); the per-round ratio cancels a slow spell that the ratio of medians
    would keep. (0.0, 0.0) when the two were not timed in the same rounds."""
    if not base.samples or len(base.samples) != len(t.samples):
        return 0.0, 0.0
    ratios = [b / x for b, x in zip(base.samples, t.samples)]
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return statistics.median(ratios), q[2] - q[0]


def _once(fn: Callable[[], object], device: torch.device, inner: int = 1) -> float:
    """Seconds per call of fn, over ``inner`` back-to-back calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def time_blocks(fns: Sequence[Callable[[], object]], device: torch.device, *, warmup: int = 2, runs: int = 10,
                rounds: int = 3, settle: int = 2) -> list[Timing]:
    """Median time per call of each fn, measured in blocks: in each of ``rounds`` rounds every fn runs
    ``settle`` untimed calls and then ceil(runs / rounds) timed ones back to back, the fns' order
    rotated by one each round (drift spreads evenly). Sample k of two fns comes from the same round,
    so ratios pair by index as for ``time_interleaved``.

    Why: on a CPU, a runtime timed right after another one pays for it. ONNX Runtime's spinning
    thread pool and each runtime's ~100 MB working set (about a small machine's share of the L3)
    slowed the next runtime's batch-1 forward by 4-12% in interleaved rounds, unevenly between
    runtimes (benchmarks/NOTES.md, "The CPU graph"); a served model runs alone, as each fn does here."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    per = -(-runs // rounds)
    samples: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for j in range(len(fns)):
            i = (j + r) % len(fns)
            for _ in range(settle):
                fns[i]()
            for _ in range(per):
                samples[i].append(_once(fns[i], device, 1))
    out = []
    for s in samples:
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        out.append(Timing(statistics.median(s), q[2] - q[0], len(s), tuple(s)))
    return out


def time_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, *, warmup: int = 2,
                     runs: int = 10, min_time_s: float = 0.0, inner: int = 1, settle: int = 0) -> list[Timing]:
    """Median time per call of each fn, measured round-robin: fn0, fn1, ..., fn0, fn1, ...
    Each sample times ``inner`` back-to-back calls (1: the latency of one synchronous call), after
    ``settle`` untimed calls of the same fn (the previous fn's threads go quiet meanwhile)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples: list[list[float]] = [[] for _ in fns]
    t_start = time.perf_counter()
    while len(samples[0]) < runs or time.perf_counter() - t_start < min_time_s:
        for i, fn in enumerate(fns):
            for _ in range(settle):
                fn()
            samples[i].append(_once(fn, device, inner))
    out = []
    for s in samples:
        q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0]] * 3
        out.append(Timing(statistics.median(s), q[2] - q[0], len(s), tuple(s)))
    return out
