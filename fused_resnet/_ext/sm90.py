"""The Hopper (sm_90a) CUTLASS 3.x kernels: csrc/sm90_kernels.cuh, one generated TU per config: the
configs, what each can run, the default choice, the launch."""
from __future__ import annotations

from typing import Optional

import torch
from torch._subclasses.fake_tensor import is_fake

from .. import _env, _sm90_configs
from .._geometry import out_size, pair_tuple
from .sm80 import pack_krsc

_SM90_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16"}


def sm90_configs() -> tuple:
    """The sm90 kernel configs built into the extension, in config-index order (generated table
    fused_resnet/_sm90_configs.py: name, kind conv|gemm, dtype f16|bf16, tile, cluster, schedule)."""
    return _sm90_configs.CONFIGS


def sm90_config_index(name: str) -> int:
    """Index of the config called ``name`` (raises KeyError when there is none)."""
    for i, c in enumerate(_sm90_configs.CONFIGS):
        if c.name == name:
            return i
    raise KeyError(f"no sm90 config {name!r}; known: {[c.name for c in _sm90_configs.CONFIGS]}")


def _is_pointwise(r, s, stride, padding) -> bool:
    """A 1x1, stride-1, unpadded conv: a plain GEMM over NHWC pixels (dilation is moot for 1x1)."""
    return r == 1 and s == 1 and pair_tuple(stride) == (1, 1) and pair_tuple(padding) == (0, 0)


def sm90_problem(x, weight, stride=1, padding=0, dilation=1, groups=1, *, check_device: bool = True) -> Optional[str]:
    """Why no sm90 kernel can run this conv, or None when one can (config choice aside: a gemm config
    also needs a pointwise conv, see ``sm90_config_accepts``). x: [N, C, H, W], weight: [K, C, R, S].
    ``check_device=False`` skips the device checks (GPU capability, sm_90a code in the library)."""
    if x.dim() != 4 or weight.dim() != 4:
        return "sm90: 4D input and weight only"
    if x.dtype not in _SM90_DTYPES or weight.dtype != x.dtype:
        return f"sm90: fp16/bf16 only (input {x.dtype}, weight {weight.dtype})"
    if groups != 1 or weight.shape[1] != x.shape[1]:
        return "sm90: grouped convs are not supported"
    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    if k % 8:
        return f"sm90: output channels must be a multiple of 8 for TMA (got {k})"
    (sh, sw), (ph, pw), (dh, dw) = pair_tuple(stride), pair_tuple(padding), pair_tuple(dilation)
    why = sm90_im2col_problem((sh, sw), (ph, pw), (dh, dw), (r, s))
    if why:
        return why
    p, q = out_size(h, r, sh, ph, dh), out_size(w, s, sw, pw, dw)
    if min(n, p, q) <= 0:
        return "sm90: empty input or output"
    if n * max(h * w * c, p * q * k) >= 2 ** 31:
        return "sm90: tensor too large (int32 indexing)"
    if check_device:
        if x.device.type != "cuda":
            return "sm90: not a CUDA tensor"
        if _env.device_capability(x.device) != (9, 0):
            return f"sm90: needs an sm_90 GPU (H100/H200), this is sm_{''.join(map(str, _env.device_capability(x.device)))}"
    return None


# TMA im2col limits (cuTensorMapEncodeIm2col, rank-4 tensors): traversal (element) strides 1..8, the
# box corners (-padding, padding - dilation*(kernel-1)) each within [-128, 127]. CUTLASS's can_implement does not
# check them, and under -DNDEBUG a failed descriptor encode is silent: the kernel would run with a
# garbage descriptor. csrc/fused_resnet_api.cpp refuses the same.
SM90_MAX_STRIDE = 8
_CORNER = range(-128, 128)


def sm90_im2col_problem(stride, padding, dilation, kernel) -> Optional[str]:
    """Why the sm90 kernels' TMA im2col descriptor cannot encode this geometry, or None."""
    for st, pd, dl, k in zip(stride, padding, dilation, kernel):
        if not 1 <= st <= SM90_MAX_STRIDE:
            return f"sm90: stride {st} outside TMA im2col's 1..{SM90_MAX_STRIDE}"
        if -pd not in _CORNER or pd - dl * (k - 1) not in _CORNER:
            return f"sm90: padding {pd} / dilation {dl} outside TMA im2col's corner range"
    return None


def sm90_config_accepts(config: int, x, weight, stride=1, padding=0) -> bool:
    """Whether sm90 config ``config`` can run this conv (dtype and, for gemm configs, pointwise)."""
    cfg = _sm90_configs.CONFIGS[config]
    if _SM90_DTYPES.get(x.dtype) != cfg.dtype:
        return False
    return cfg.kind == "conv" or _is_pointwise(weight.shape[2], weight.shape[3], stride, padding)


def default_sm90_config(n, c, h, w, k, r, s, stride=1, padding=0, dilation=1, dtype=torch.float16,
                        sm_count: int = 132) -> int:
    """Heuristic sm90 config index (used where the tactic profiler has tabled nothing): pointwise
    convs -> the cooperative GEMM, 128x256 when K >= 256 and its tiles fill every SM at least once,
    else 128x128;
    other convs -> the implicit-GEMM conv, 128x128 likewise, else 64x128 (batch-1 layer3/4)."""
    dt = _SM90_DTYPES[dtype]
    (sh, sw), (ph, pw), (dh, dw) = pair_tuple(stride), pair_tuple(padding), pair_tuple(dilation)
    m = n * out_size(h, r, sh, ph, dh) * out_size(w, s, sw, pw, dw)

    def tiles(tm, tn):
        return -(-m // tm) * -(-k // tn)

    if _is_pointwise(r, s, stride, padding):
        name = (f"gemm_{dt}_coop_128x256x64_c1x1" if k >= 256 and tiles(128, 256) >= sm_count
                else f"gemm_{dt}_coop_128x128x64_c2x1")
    else:
        name = (f"conv_{dt}_ws_128x128x64_c1x1" if tiles(128, 128) >= sm_count
                else f"conv_{dt}_ws_64x128x64_c1x1")
    return sm90_config_index(name)


def fused_conv2d_sm90(x, weight, bias, stride=1, padding=0, dilation=1, residual=None, relu=True,
                      config=None) -> torch.Tensor:
    """out = act(conv2d(x, weight) + bias[k] (+ residual)) on a Hopper sm90 kernel.

    x: [N, C, H, W] fp16/bf16 (any memory format; run as channels_last; C not a multiple of 8, e.g.
    the 3-channel stem, is zero-padded to one: a copy of x), weight: [K, C, R, S] same dtype (packed
    KRSC once per stable weight), bias: [K] (any float dtype, used as fp32) or None,
    residual: [N, K, P, Q] or None. config: index or name from ``sm90_configs()``, None for
    ``default_sm90_config``. Returns channels_last. Raises RuntimeError (from the op) when the config
    cannot take the problem or the device is not sm_90; use ``sm90_problem`` first to avoid that."""
    return sm90_launch(x, weight, bias, stride, padding, dilation, relu, config)(x, residual)


def _sm90_op():
    return torch.ops.fused_resnet._conv2d_sm90.default


def sm90_launch(x, weight, bias, stride=1, padding=0, dilation=1, relu=True, config=None):
    """run(x, residual) -> out for one sm90 kernel config, everything that depends only on the call's
    signature prepared once, as cutlass_launch does: the config index, the packed 16-byte aligned
    KRSC weight (channels zero-padded to a multiple of 8), the fp32 bias, the geometry lists. A plan
    replays ``run``; per call it only lays out x and the residual (see fused_conv2d_sm90)."""
    from .._packing import packed

    n, c, h, w = x.shape
    k, _, r, s = weight.shape
    if config is None:
        config = default_sm90_config(n, c, h, w, k, r, s, stride, padding, dilation, x.dtype)
    elif isinstance(config, str):
        config = sm90_config_index(config)
    pad = -c % 8
    if pad:  # e.g. the 3-channel stem: zero channels up to a multiple of 8 (TMA rows of 16 bytes)
        wk = packed(weight, "cutlass_krsc_c8", lambda t: pack_krsc(torch.nn.functional.pad(t, (0, 0, 0, 0, 0, pad))))
    else:
        wk = packed(weight, "cutlass_krsc", pack_krsc)
    wk = _aligned16(wk)
    b = _aligned16(bias.float().contiguous() if bias is not None
                   else torch.zeros(k, device=x.device, dtype=torch.float32))
    geometry = [list(pair_tuple(stride)), list(pair_tuple(padding)), list(pair_tuple(dilation))]
    relu, config = bool(relu), int(config)
    op, cl = _sm90_op(), torch.channels_last

    def run(x, residual):
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        res = _aligned16(residual.contiguous(memory_format=cl)) if residual is not None else None
        return op(_aligned16(x.contiguous(memory_format=cl)), wk, b, res, *geometry, relu, config)
    return run


def _aligned16(t: torch.Tensor) -> torch.Tensor:
    """TMA needs 16-byte aligned base addresses; a view at an odd offset is copied (rare). Fake and
    meta tensors (tracing) have no address."""
    if type(t) is torch.Tensor:  # the common case, checked first (is_fake costs microseconds)
        if t.data_ptr() % 16 == 0:  # meta: 0
            return t
    elif t.device.type == "meta" or is_fake(t) or t.data_ptr() % 16 == 0:  # Parameter, subclasses
        return t
    return t.clone(memory_format=torch.preserve_format)


