"""One fused Bottleneck (fp16; Triton, then CUTLASS where built) and add_relu, small: the target of
`compute-sanitizer --tool memcheck` in gpu_suite.sh. Exits non-zero on a numerical mismatch."""
import copy
import sys

import torch
import torchvision.models.resnet as tvr

import fused_resnet
from fused_resnet.testing import compare, randomize_bn

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
    sys.exit(0 if cmp_c.ok else 1)
