"""Run every Hopper (sm90) config once against the float64 reference; print "ok NAME" or "FAIL NAME".

    python benchmarks/sm90_health.py            (an sm_90 GPU; CUDA_LAUNCH_BLOCKING=1 recommended)

The GPU suite reads the output: a config not printed as ok (it failed, or a fault ended the process
before it ran) is excluded from tune and the op bench through FUSED_RESNET_SM90_EXCLUDE. One problem
per config kind (a padded 3x3 conv with residual + ReLU, a 1x1 GEMM with residual + ReLU), with a
NaN in the input: its mask must come out where the reference has it.
"""
from __future__ import annotations

import sys

import torch


def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    from fused_resnet import _ext
    from fused_resnet.ops.fused_conv2d import fused_conv2d_ref
    from fused_resnet.testing import compare

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        print("sm90 health: needs an sm_90 GPU (H100/H200)")
        return 2
    ok, status = _ext.status()
    if not ok:
        print(f"sm90 health: the CUDA extension is not available: {status}")
        return 2
    cl = torch.channels_last
    for i, cfg in enumerate(_ext.sm90_configs()):
        dt = torch.float16 if cfg.dtype == "f16" else torch.bfloat16
        k = 3 if cfg.kind == "conv" else 1
        pad = 1 if k == 3 else 0
        g = torch.Generator(device="cuda").manual_seed(i)
        x = torch.randn(2, 64, 14, 14, device="cuda", generator=g).contiguous(memory_format=cl)
        x[0, 0, 7, 7] = float("nan")
        w = torch.randn(128, 64, k, k, device="cuda", generator=g) / (64 * k * k) ** 0.5
        b = torch.randn(128, device="cuda", generator=g)
        res = torch.randn(2, 128, 14, 14, device="cuda", generator=g).contiguous(memory_format=cl)
        try:
            out = _ext.fused_conv2d_sm90(x.to(dt), w.to(dt), b, 1, pad, 1, residual=res.to(dt), relu=True, config=i)
            torch.cuda.synchronize()
            ref = fused_conv2d_ref(x, w, b, padding=pad, residual=res, relu=True, upcast=True)
            eager = fused_conv2d_ref(x.to(dt), w.to(dt), b, padding=pad, residual=res.to(dt), relu=True)
            cmp = compare(out, eager, ref)
            nan_ok = torch.equal(out.isnan(), ref.isnan())
        except Exception as e:  # a refusal or a fault: this config is not ok
            print(f"FAIL {cfg.name}: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}", flush=True)
            continue
        verdict = "ok" if cmp.ok and nan_ok else "FAIL"
        print(f"{verdict} {cfg.name}: {cmp}{'' if nan_ok else ', NaN mask differs'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
