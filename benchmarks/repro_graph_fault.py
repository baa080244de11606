"""Torch-only attempt at the CUDA-graph fault that graph_check.py reproduces (GPU only; imports torch
and torchvision, not fused_resnet). On the H100 (h100-run2) this two-model sequence did NOT fault,
while graph_check.py's three-model sequence with plain torchvision/TorchScript graphs did: the next
step is to grow this script toward graph_check's order until it faults without fused_resnet.

    python benchmarks/repro_graph_fault.py [--own-stream]

resnet50 fp16 batch 1, channels_last: capture eager torchvision in CUDA graph A, replay it; build a
TorchScript (script + freeze + optimize_for_inference) copy and replay A again; capture the TorchScript
model in graph B, replay B, replay A again. Each step is printed, then synchronized, so an illegal
memory access names the step that exposed it. --own-stream captures each graph on its own stream
instead of torch.cuda.graph's shared default capture stream.
"""
import argparse
import copy
import sys

import torch
import torchvision


def graphed(fn, x, stream=None):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=stream), torch.no_grad():
        out = fn(x)
    return g, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--own-stream", action="store_true")
    args = ap.parse_args()
    stream = (lambda: torch.cuda.Stream()) if args.own_stream else (lambda: None)

    def step(msg, fn):
        print(msg, "...", end=" ", flush=True)
        r = fn()
        torch.cuda.synchronize()
        print("ok", flush=True)
        return r

    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval().cuda().half()
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    ga, out_a = step("capture A (eager torchvision, channels_last)", lambda: graphed(cl, x, stream()))
    step("replay A", ga.replay)

    def build_ts():
        m = copy.deepcopy(tv).to(memory_format=torch.channels_last)
        with torch.no_grad():
            ts = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(m)))
            ts(x)
        return ts

    ts = step("build TorchScript model", build_ts)
    step("replay A", ga.replay)
    gb, out_b = step("capture B (TorchScript)", lambda: graphed(ts, x, stream()))
    step("replay B", gb.replay)
    step("replay A", ga.replay)
    step("replay B", gb.replay)
    with torch.no_grad():
        ref = cl(x)
    print("A matches eager:", torch.equal(out_a, ref), "| max |A-B|:", (out_a - out_b).abs().max().item(), flush=True)
    print("repro: no fault", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
