"""Host-side (Python) cost per fused conv, measured without a GPU.

    python benchmarks/host_overhead.py [--model resnet50] [--batch 1] [--size 32] [--device meta|cpu]

Method. A converted model's forward on the ``meta`` device (default) runs every line of our Python
path: block logic, fold-cache checks, launch plans, backend selection, and the eager path's torch
calls, whose meta kernels only compute shapes. From it we subtract those same torch calls made
bare, with the real shapes: per conv F.conv2d with a bias, then the residual add and ReLU in place
where the block has them, plus the network's maxpool, avgpool and fc. Both are timed in one process,
interleaved, the minimum of ``--repeats`` forwards each (other load on the machine only adds time);
the difference divided by the number of convs is our host overhead per conv. ``--device cpu``
does the same with real arithmetic on a tiny input (noisier: oneDNN's time varies more than the
overhead). On a GPU the same Python runs before each kernel launch: it is the part of batch-1
latency without CUDA graphs that is ours. Compare versions by running both in alternation on the
same machine; absolute microseconds depend on the host.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
import torchvision

import fused_resnet


def _epilogue(name: str, last: str) -> str:
    if name.endswith("downsample.0"):
        return "none"
    return "add_relu" if name.endswith(last) and name.startswith("layer") else "relu"


def measure(model_name: str = "resnet50", batch: int = 1, repeats: int = 200, size: int = 32,
            device: str = "cpu") -> dict:
    torch.manual_seed(0)
    tv = getattr(torchvision.models, model_name)().eval()
    calls = []  # (conv module, input, epilogue) of every conv of one reference forward, in order
    last = "conv3" if any(isinstance(m, torchvision.models.resnet.Bottleneck) for m in tv.modules()) else "conv2"
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: calls.append((m, i[0], _epilogue(name, last))))
             for name, m in tv.named_modules() if isinstance(m, torch.nn.Conv2d)]
    others = []  # (module, input) of the stem's maxpool, the avgpool and the fc: ours runs them too
    hooks += [m.register_forward_hook(lambda m, i, o: others.append((m, i[0])))
              for m in (tv.maxpool, tv.avgpool, tv.fc)]
    x = torch.randn(batch, 3, size, size).to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        tv.to(device).to(memory_format=torch.channels_last)(x)
    for h in hooks:
        h.remove()
    model = fused_resnet.convert(getattr(torchvision.models, model_name)(), cpu_graph=False).eval().to(device)
    biases = {c: torch.zeros(c.out_channels, device=device) for c, _, _ in calls}

    def bare():
        # What the kernels themselves cost: each conv with its bias, residual add and ReLU as plain
        # torch ops (the ops the fused eager path runs on these devices), no block logic around them.
        for c, xi, epi in calls:
            out = F.conv2d(xi, c.weight, biases[c], c.stride, c.padding, c.dilation, c.groups)
            if epi == "add_relu":
                out.add_(out).relu_()
            elif epi == "relu":
                out.relu_()
        for m, xi in others:
            m(xi.flatten(1) if isinstance(m, torch.nn.Linear) else xi)

    fused_t, bare_t = [], []
    with torch.inference_mode():
        for _ in range(5):
            model(x), bare()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            bare()
            t2 = time.perf_counter()
            fused_t.append(t1 - t0)
            bare_t.append(t2 - t1)
    # Minimum over interleaved repeats: the least-disturbed run of each (other load only adds time).
    f, b = min(fused_t) * 1e6, min(bare_t) * 1e6
    n = len(calls)
    return {"model": model_name, "batch": batch, "size": size, "device": device, "convs": n, "fused_forward_us": f, "bare_convs_us": b,
            "overhead_per_conv_us": (f - b) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=32, help="input height and width")
    ap.add_argument("--device", default="meta", choices=["cpu", "meta"])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the host path is single-threaded; keep oneDNN from adding thread wake-ups
    r = measure(args.model, args.batch, args.repeats, args.size, args.device)
    print(f"{r['model']} batch {r['batch']} {r['size']}x{r['size']} on {r['device']}: fused forward {r['fused_forward_us']:.0f} us, "
          f"{r['convs']} bare convs {r['bare_convs_us']:.0f} us -> "
          f"host overhead {r['overhead_per_conv_us']:.1f} us per conv", flush=True)


if __name__ == "__main__":
    main()
