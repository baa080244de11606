"""One fused Bottleneck (fp16; Triton, then CUTLASS where built) and add_relu, small, then every
Hopper (sm90) kernel config once on a small conv it accepts (on an sm_90 GPU): the target of
`compute-sanitizer --tool memcheck` in gpu_suite.sh. Exits non-zero on a numerical mismatch."""
import argparse
import copy
import sys

import torch
import torchvision.models.resnet as tvr

import fused_resnet
from fused_resnet.testing import compare, randomize_bn

argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
torch.manual_seed(0)
ds = torch.nn.Sequential(tvr.conv1x1(64, 256, 2), torch.nn.BatchNorm2d(256))
tv = randomize_bn(tvr.Bottleneck(64, 64, 2, ds)).eval().cuda().half()
fused = fused_resnet.convert(copy.deepcopy(tv), backend="triton")
x = torch.randn(3, 64, 15, 15, device="cuda", dtype=torch.float16)  # odd sizes: masked tiles
with torch.no_grad():
    ref = copy.deepcopy(tv).double()(x.double())
    cmp = compare(fused(x), tv(x), ref)
    y = fused_resnet.ops.add_relu(x, x, backend="triton")
torch.cuda.synchronize()
print("memcheck block (triton):", cmp, "| add_relu ok:", bool(torch.equal(y, torch.relu(x + x))))
if not cmp.ok:
    sys.exit(1)

# The CUTLASS path, when the extension is available here.
if fused_resnet._selector.backend_status()["cuda"][0]:
    import os

    os.environ["FUSED_RESNET_PREFER"] = "cuda"
    fused_c = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        cmp_c = compare(fused_c(x.to(torch.float16).contiguous(memory_format=torch.channels_last)), tv(x), ref)
        y = fused_resnet.ops.add_relu(x, x, backend="cuda")
    torch.cuda.synchronize()
    print("memcheck block (cuda):", cmp_c, "| add_relu ok:", bool(torch.equal(y, torch.relu(x + x))))
    if not cmp_c.ok:
        sys.exit(1)

    # Every sm90 config once: odd spatial size (partial TMA tiles), a residual, ReLU on.
    from fused_resnet import _ext
    from fused_resnet.ops.fused_conv2d import fused_conv2d_ref

    if torch.cuda.get_device_capability() == (9, 0):
        bad = 0
        for i, cfg in enumerate(_ext.sm90_configs()):
            dt = torch.float16 if cfg.dtype == "f16" else torch.bfloat16
            k, pad = (1, 0) if cfg.kind == "gemm" else (3, 1)
            xs = torch.randn(2, 64, 13, 13, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
            w = torch.randn(128, 64, k, k, device="cuda", dtype=dt) * 0.05
            b = torch.randn(128, device="cuda")
            r = torch.randn(2, 128, 13, 13, device="cuda", dtype=dt).contiguous(memory_format=torch.channels_last)
            out = _ext.fused_conv2d_sm90(xs, w, b, 1, pad, 1, r, True, config=i)
            args = (xs, w, b, None, [1, 1], [pad, pad], [1, 1], 1, r, True)
            cmp_s = compare(out, fused_conv2d_ref(*args), fused_conv2d_ref(*args, upcast=True))
            torch.cuda.synchronize()
            print(f"memcheck sm90 {cfg.name}:", cmp_s)
            bad += not cmp_s.ok
        sys.exit(1 if bad else 0)
