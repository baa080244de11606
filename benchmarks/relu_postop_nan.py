"""Which oneDNN post-ops reachable from torch reproduce torch.relu bit for bit (CPU)?

Runs a depthwise identity 1x1 conv (weights 1, no bias: its output is its input, except that -0.0
comes out +0.0, since oneDNN's sums start at +0) through ``torch.ops.mkldnn._convolution_pointwise``
with each unary post-op that could act as a ReLU, and through the binary (sum) form with and
without a ReLU, on NaN (both signs), +-Inf, +-0.0, negatives, tiny and huge values; compares the
result bit for bit with torch.relu (or relu(x + other)) of the conv's own output. A post-op may
replace the project's separate NaN-exact ReLU pass only if it prints "bit-exact".

    python benchmarks/relu_postop_nan.py
"""
import torch

C = 16
PAD, STRIDE, DIL = [0, 0], [1, 1], [1, 1]


def bits(t):
    return t.contiguous().view(torch.int32)


def report(name, out, ref, x):
    same = bits(out) == bits(ref)
    if bool(same.all()):
        print(f"{name:40s} bit-exact")
        return
    idx = (~same.flatten()).nonzero().flatten()
    nan_lost = int((ref.isnan() & ~out.isnan()).sum())
    ex = [(x.flatten()[i].item(), out.flatten()[i].item(), ref.flatten()[i].item()) for i in idx[:2].tolist()]
    print(f"{name:40s} DIFF {idx.numel()}/{same.numel()} (NaN lost: {nan_lost}); (x, got, torch.relu): {ex}")


def main():
    op = torch.ops.mkldnn._convolution_pointwise
    base = [float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.5, 2.0, -1e-30, 1e-30, -3e38, 3e38, -1e-3]
    vals = torch.tensor(base * (C * 64 // len(base) + 1))[:C * 64]
    x = vals.reshape(1, 8, 8, C).permute(0, 3, 1, 2)  # channels_last view
    x.permute(0, 2, 3, 1).view(-1)[[5, 77, 200, 300]] = -float("nan")  # NaN with the sign bit set
    w = torch.ones(C, 1, 1, 1)
    wp = torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(memory_format=torch.channels_last), PAD, STRIDE,
                                                      DIL, C, list(x.shape))
    plain = op(x, wp, None, PAD, STRIDE, DIL, C, "none", [], "")
    ref = torch.relu(plain)
    print(f"torch {torch.__version__}; identity conv: its output differs from its input only in "
          f"{int((bits(plain) != bits(x)).sum())} elements (-0.0 -> +0.0)")
    for attr, sc in [("relu", []), ("leaky_relu", [0.0]), ("leaky_relu", [-0.0]), ("leaky_relu", [1e-45]),
                     ("hardtanh", [0.0, float("inf")]), ("hardtanh", [-0.0, float("inf")]),
                     ("hardtanh", [0.0, 3.4028234e38])]:
        try:
            report(f"unary {attr} {sc}", op(x, wp, None, PAD, STRIDE, DIL, C, attr, sc, ""), ref, x)
        except RuntimeError as e:
            print(f"unary {attr} {sc}: not supported ({str(e).splitlines()[0][:80]})")
    other = torch.randn_like(x).contiguous(memory_format=torch.channels_last)
    other.permute(0, 2, 3, 1).view(-1)[:8] = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"),
                                                           1.0, -1.0, 0.5])
    binary = torch.ops.mkldnn._convolution_pointwise.binary
    inplace = torch.ops.mkldnn._convolution_pointwise_.binary
    report("binary add, no relu", binary(x, other, wp, None, PAD, STRIDE, DIL, C, "add", None, None, [], ""),
           plain + other, x)
    report("binary add + relu", binary(x, other, wp, None, PAD, STRIDE, DIL, C, "add", None, "relu", [], ""),
           torch.relu(plain + other), x)
    report("in-place sum, no relu", inplace(other.clone(), x, wp, None, PAD, STRIDE, DIL, C, "add", None, None, [], ""),
           plain + other, x)
    report("in-place sum + relu", inplace(other.clone(), x, wp, None, PAD, STRIDE, DIL, C, "add", None, "relu", [], ""),
           torch.relu(plain + other), x)


if __name__ == "__main__":
    main()
