"""Roofline numbers for the benchmark rows: a model's FLOPs and minimum bytes (from its own conv
shapes), the card's measured copy bandwidth and its peaks."""
from __future__ import annotations

import torch

from ..profiling import conv_shapes
from ..timing import time_interleaved


def roofline(model_name: str, batch: int, elem: int, image_size: int = 224) -> dict:
    shapes = conv_shapes(model_name, batch, image_size)
    return {"gflop": sum(s.flops for s in shapes) / 1e9,
            "mb_fused": sum(s.bytes(elem, True) for s in shapes) / 1e6,
            "mb_unfused": sum(s.bytes(elem, False) for s in shapes) / 1e6,
            "mb_act_fused": sum(s.bytes(elem, True, weights=False) for s in shapes) / 1e6,
            "mb_act_unfused": sum(s.bytes(elem, False, weights=False) for s in shapes) / 1e6,
            "mb_weights": sum(s.weight_bytes(elem) for s in shapes) / 1e6}


def measure_copy_gbps(device: str) -> float:
    """The card's device-to-device copy bandwidth in GB/s (bytes read + bytes written), measured now."""
    n = 1 << 28  # 512 MiB of fp16 each way: far beyond L2
    a = torch.randn(n, device=device, dtype=torch.float16)
    b = torch.empty_like(a)
    (t_copy,) = time_interleaved([lambda: b.copy_(a)], torch.device(device), warmup=3, runs=20)
    del a, b
    return 2 * n * 2 / t_copy.median_s / 1e9


def measure_peaks(device: str) -> dict:
    """The card's copy bandwidth (GB/s, read+write) and fp16 matmul rate (TFLOP/s), measured now."""
    if not device.startswith("cuda"):
        return {}
    gbps = measure_copy_gbps(device)
    m = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    (t_mm,) = time_interleaved([lambda: m @ m], torch.device(device), warmup=3, runs=20)
    return {"peak_gbps": gbps, "peak_tflops": 2 * 8192 ** 3 / t_mm.median_s / 1e12}

