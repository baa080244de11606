"""GPU correctness (skipped without a CUDA GPU): every conv class per backend, the elementwise kernels,
CUDA graphs, then every builder converted in every dtype and memory format at batch 1 and 64, against
torchvision on the same card and a float64 reference (computed on the GPU). Run by
benchmarks/gpu_suite.sh."""
import copy

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet.ops import add_relu, fused_conv2d
from fused_resnet.ops.fused_conv2d import fused_conv2d_ref
from fused_resnet.testing import compare, damp_residuals, fit_input, randomize_bn

pytestmark = pytest.mark.gpu
CL = torch.channels_last
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

_models = {}


def _model(name):
    if name not in _models:
        torch.manual_seed(0)
        _models[name] = randomize_bn(getattr(torchvision.models, name)()).eval().cuda()
    return _models[name]


def test_auto_uses_gpu_kernels_on_cuda():
    m = fused_resnet.convert(copy.deepcopy(_model("resnet50")).half())
    rows = fused_resnet.explain(m, torch.randn(2, 3, 64, 64, device="cuda", dtype=torch.float16)).rows
    assert len(rows) == 53 and all(r.backend in ("triton", "cuda") for r in rows), {r.reason for r in rows}


CASES = [  # real ResNet-50 / ResNeXt / segmentation conv shapes at batch 8
    (8, 64, 56, 56, 256, 1, 1, 0, 1, 1), (8, 256, 56, 56, 128, 1, 2, 0, 1, 1), (8, 64, 56, 56, 64, 3, 1, 1, 1, 1),
    (8, 128, 56, 56, 128, 3, 2, 1, 1, 1), (8, 512, 28, 28, 512, 3, 1, 2, 2, 1), (8, 512, 28, 28, 512, 3, 1, 4, 4, 1),
    (8, 128, 56, 56, 128, 3, 1, 1, 1, 32), (8, 3, 224, 224, 64, 7, 2, 3, 1, 1), (1, 2048, 7, 7, 512, 1, 1, 0, 1, 1),
    (3, 40, 13, 13, 24, 3, 1, 1, 1, 1),
]


def _check_conv_case(case, dtype, residual, backend):
    """One conv on ``backend`` against the float64 reference, ARCHITECTURE.md's tolerance rule."""
    n, cin, h, w, cout, k, s, p, d, g = case
    dt = DTYPES[dtype]
    x = torch.randn(n, cin, h, w, device="cuda").contiguous(memory_format=CL)
    wt = torch.randn(cout, cin // g, k, k, device="cuda") / (cin // g * k * k) ** 0.5
    b = torch.randn(cout, device="cuda")
    oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = torch.randn(n, cout, oh, ow, device="cuda").contiguous(memory_format=CL) if residual else None
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    ref = fused_conv2d_ref(x, wt, b, residual=res, upcast=True, **kw)
    rd = res.to(dt) if res is not None else None
    with torch.no_grad():
        out = fused_conv2d(x.to(dt), wt.to(dt), b, residual=rd, backend=backend, **kw)
        eager = fused_conv2d_ref(x.to(dt), wt.to(dt), b, residual=rd, **kw)
    cmp = compare(out, eager, ref)
    assert cmp.ok, f"{backend}: {cmp}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1]}-{c[4]}-k{c[5]}s{c[6]}d{c[8]}g{c[9]}")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("residual", [False, True])
def test_conv_classes_on_gpu(case, dtype, residual, monkeypatch):
    from fused_resnet.triton import fused_conv2d as mod

    real = mod._new_output
    monkeypatch.setattr(mod, "_new_output", lambda shape, like: real(shape, like).fill_(float("nan")))
    _check_conv_case(case, dtype, residual, "triton")


def test_add_relu_on_gpu():
    for dt in DTYPES.values():
        x = torch.randn(7, 64, 13, 13, device="cuda", dtype=dt).contiguous(memory_format=CL)
        y = torch.randn_like(x)
        torch.testing.assert_close(add_relu(x, y, backend="triton"), torch.relu(x + y), rtol=0, atol=0)


def test_cuda_graph_capture():
    m = fused_resnet.convert(copy.deepcopy(_model("resnet50")).half())
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = m(x)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            m(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = m(x)
        g.replay()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --- the CUDA (CUTLASS) backend -------------------------------------------------------------------

def _need_cuda_backend():
    ok, why = fused_resnet._selector.backend_status()["cuda"]
    if not ok:
        pytest.fail(f"CUDA extension unavailable on a GPU machine: {why}")


@pytest.mark.parametrize("case", [c for c in CASES if c[9] == 1 and c[1] % 8 == 0 and c[4] % 8 == 0],
                         ids=lambda c: f"{c[1]}-{c[4]}-k{c[5]}s{c[6]}d{c[8]}")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("residual", [False, True])
def test_cuda_backend_conv_classes(case, dtype, residual):
    _need_cuda_backend()
    _check_conv_case(case, dtype, residual, "cuda")


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_backend_resnet50(dtype, monkeypatch):
    _need_cuda_backend()
    monkeypatch.setenv("FUSED_RESNET_PREFER", "cuda")
    dt = DTYPES[dtype]
    tv = copy.deepcopy(_model("resnet50")).to(dt)
    fused = fused_resnet.convert(copy.deepcopy(tv))
    x = torch.randn(8, 3, 224, 224, device="cuda")
    with torch.no_grad():
        ref = copy.deepcopy(_model("resnet50")).double()(x.double())
        cmp = compare(fused(x.to(dt)), tv(x.to(dt)), ref)
    assert cmp.ok, str(cmp)
    rows = fused_resnet.explain(fused, x.to(dt)).rows
    assert sum(r.backend == "cuda" for r in rows) == 52 and rows[0].backend == "triton"  # stem: 3 channels


def test_cuda_elementwise():
    _need_cuda_backend()
    for dt in DTYPES.values():
        x = torch.randn(7, 64, 13, 13, device="cuda", dtype=dt).contiguous(memory_format=CL)
        y = torch.randn_like(x)
        torch.testing.assert_close(add_relu(x, y, backend="cuda"), torch.relu(x + y), rtol=0, atol=0)
        b = torch.randn(64, device="cuda")
        got = torch.ops.fused_resnet._bias_residual_act_cuda(x, b, y, True)
        want = torch.relu(x.float() + b.view(1, -1, 1, 1) + y.float()).to(dt)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        odd = torch.randn(3, 5, 7, 9, device="cuda", dtype=dt).contiguous(memory_format=CL)  # scalar path
        torch.testing.assert_close(add_relu(odd, odd, backend="cuda"), torch.relu(odd + odd), rtol=0, atol=0)


# --- tactics: cuDNN's paths in the eager backend; the tune command; the op bench ------------------

TACTIC_CASES = [CASES[0], CASES[2], CASES[6], CASES[7]]  # 1x1 64->256, 3x3 64->64, grouped 3x3, the stem


@pytest.mark.parametrize("tactic", fused_resnet.tactics.all_names())
@pytest.mark.parametrize("case", TACTIC_CASES, ids=lambda c: f"{c[1]}-{c[4]}-k{c[5]}s{c[6]}g{c[9]}")
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("epi", ["relu", "res_relu", "res", "none"])
def test_every_tactic_on_gpu(tactic, case, dtype, epi):
    """Every registered tactic, prepared as a plan prepares it, against the float64 reference
    (ARCHITECTURE.md's rule), with NaN in the input and in the residual: NaN must come out where
    torch.relu keeps it (cuDNN's fused ReLU included; this test is the only check of that). A
    tactic that cannot run the case here is skipped with its own reason."""
    from fused_resnet import _selector, tactics
    from fused_resnet.ops.fused_conv2d import memory_format_of

    n, cin, h, w, cout, k, s, p, d, g = case
    relu, residual = epi in ("relu", "res_relu"), epi.startswith("res")
    dt = DTYPES[dtype]
    x = torch.randn(n, cin, h, w, device="cuda").contiguous(memory_format=CL)
    x[0, :, 0, 0] = float("nan")
    wt = torch.randn(cout, cin // g, k, k, device="cuda") / (cin // g * k * k) ** 0.5
    b = torch.randn(cout, device="cuda")
    oh, ow = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    res = None
    if residual:
        res = torch.randn(n, cout, oh, ow, device="cuda").contiguous(memory_format=CL)
        res[n - 1, 0, oh // 2, ow // 2] = float("nan")
    kw = dict(stride=s, padding=p, dilation=d, groups=g)
    xd, wd, rd = x.to(dt), wt.to(dt), res.to(dt) if res is not None else None
    why = _selector.tactic_guard(tactic, xd, wd, g, stride=s, padding=p, dilation=d, relu=relu, residual=residual)
    if why is not None:
        pytest.skip(why)
    ref = fused_conv2d_ref(x, wt, b, residual=res, relu=relu, upcast=True, **kw)
    with torch.no_grad():
        out = tactics.run(tactic, xd, wd, b, None, [s, s], [p, p], [d, d], g, rd, relu)
        out = out.contiguous(memory_format=memory_format_of(xd))
        eager = fused_conv2d_ref(xd, wd, b, residual=rd, relu=relu, **kw)
    assert out.isnan().any()
    assert torch.equal(out.isnan(), ref.isnan().to(out.device)), f"{tactic}: NaN not where torch.relu keeps it"
    cmp = compare(out, eager, ref)
    assert cmp.ok, f"{tactic}: {cmp}"


def test_tune_writes_a_table_that_auto_follows(tmp_path, monkeypatch):
    """`tune` on two small shapes writes a format-2 table; with it as the table, auto runs its picks."""
    from fused_resnet import _selector, tuning
    from fused_resnet.__main__ import main
    from fused_resnet.profiling import distinct_shapes, op_inputs

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
    monkeypatch.delenv("FUSED_RESNET_PREFER", raising=False)
    path = tmp_path / "backend_test.json"
    rc = main(["tune", "--model", "resnet18", "--batch", "2", "--image-size", "64", "--dtype", "fp16",
               "--limit", "2", "--runs", "5", "--out", str(path)])
    assert rc == 0 and path.exists()
    table = tuning.read_table(str(path))
    assert len(table) == 2 and tuning.read_meta(str(path))["env"]["cudnn_benchmark"] is True
    monkeypatch.setenv("FUSED_RESNET_TABLE", str(path))
    tuning.clear_cache()
    try:
        for s in distinct_shapes("resnet18", 2, 64)[:2]:
            inp = op_inputs(s, torch.float16, "cuda")
            e = table[inp.key]
            assert e.tactic in e.times_ms and len(e.times_ms) >= 3, e  # cuDNN tactics, triton, CUTLASS...
            c = _selector.select_conv(inp.x, inp.w, s.groups, "auto", None, **inp.conv_kwargs())
            assert c.tactic == e.tactic and "tuned table" in c.reason, (c, e)
            with torch.no_grad():
                out = fused_conv2d(inp.x, inp.w, inp.bias, stride=s.stride, padding=s.padding, groups=s.groups,
                                   residual=inp.res, relu=s.relu)
                ref = fused_conv2d_ref(inp.x, inp.w, inp.bias, stride=s.stride, padding=s.padding,
                                       groups=s.groups, residual=inp.res, relu=s.relu, upcast=True)
                eager = fused_conv2d_ref(inp.x, inp.w, inp.bias, stride=s.stride, padding=s.padding,
                                         groups=s.groups, residual=inp.res, relu=s.relu)
            assert compare(out, eager, ref).ok
    finally:
        tuning.clear_cache()


def test_op_bench_reports_auto_and_every_tactic():
    from fused_resnet.bench import op_bound_summary, run_op_bench

    rows = run_op_bench("resnet18", 1, "fp16", "cuda", ["conv_alone", "conv_bn_relu", "fused_resnet", "tactics"],
                        runs=3, image_size=64, progress=False)
    provs = {r.provider for r in rows}
    assert {"fused_resnet", "eager:cudnn_fused", "eager:cudnn+pointwise", "triton"} <= provs, provs
    auto = [r for r in rows if r.provider == "fused_resnet"]
    assert all(r.tactic and r.copy_gbps > 100 and r.cudnn_benchmark and r.out_bytes > 0 for r in auto)
    met, total, _ = op_bound_summary(rows)
    assert total == len(auto) and 0 <= met <= total

# --- Hopper sm90 kernels (fused_resnet::_conv2d_sm90): every generated config on every conv class it
# accepts, against the float64 reference with ARCHITECTURE.md's rule; NaN, -0 and refusals. sm_90 GPUs only. ---

SM90_CASES = [  # (n, c, h, w, k, r, stride, padding, dilation)
    (64, 64, 56, 56, 256, 1, 1, 0, 1),  # resnet50 layer1 expand, batch 64 (gemm-eligible)
    (1, 2048, 7, 7, 512, 1, 1, 0, 1),  # layer4 reduce, batch 1: M = 49 pixels
    (3, 40, 13, 15, 24, 1, 1, 0, 1),  # odd sizes, 1x1
    (64, 64, 56, 56, 64, 3, 1, 1, 1),  # layer1 3x3, batch 64
    (1, 128, 57, 55, 128, 3, 2, 1, 1),  # strided 3x3, odd spatial
    (8, 256, 56, 56, 512, 1, 2, 0, 1),  # strided 1x1 downsample (conv kind only)
    (2, 512, 28, 28, 512, 3, 1, 2, 2),  # dilated 3x3 (segmentation backbones)
    (1, 64, 9, 11, 72, 3, 1, 1, 1),  # odd everything, K = 72 (not a multiple of a tile)
    (2, 3, 224, 224, 64, 7, 2, 3, 1),  # the stem: C = 3 zero-padded to 8 by the launcher
]


def _need_sm90():
    _need_cuda_backend()
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("sm90 kernels need an sm_90 GPU (H100/H200)")


def _sm90_check(cfg_index, case, residual, relu, nan=False):
    from fused_resnet import _ext

    cfg = _ext.sm90_configs()[cfg_index]
    dt = torch.float16 if cfg.dtype == "f16" else torch.bfloat16
    n, c, h, w, k, r, s, p, d = case
    g = torch.Generator(device="cuda").manual_seed(hash(case) % 2**31)
    x = torch.randn(n, c, h, w, device="cuda", generator=g).contiguous(memory_format=CL)
    if nan:
        x[0, 0, h // 2, w // 2] = float("nan")
    wt = torch.randn(k, c, r, r, device="cuda", generator=g) / (c * r * r) ** 0.5
    b = torch.randn(k, device="cuda", generator=g)
    oh, ow = (h + 2 * p - d * (r - 1) - 1) // s + 1, (w + 2 * p - d * (r - 1) - 1) // s + 1
    res = torch.randn(n, k, oh, ow, device="cuda", generator=g).contiguous(memory_format=CL) if residual else None
    kw = dict(stride=s, padding=p, dilation=d, relu=relu)
    ref = fused_conv2d_ref(x, wt, b, residual=res, upcast=True, **kw)
    rd = res.to(dt) if res is not None else None
    with torch.no_grad():
        out = _ext.fused_conv2d_sm90(x.to(dt), wt.to(dt), b, s, p, d, residual=rd, relu=relu, config=cfg_index)
        eager = fused_conv2d_ref(x.to(dt), wt.to(dt), b, residual=rd, **kw)
    assert out.is_contiguous(memory_format=CL)
    if nan:  # directly, not only through the error rule
        assert torch.equal(out.isnan(), ref.isnan()), f"{cfg.name} {case}: NaN not where the reference has it"
    cmp = compare(out, eager, ref)
    assert cmp.ok, f"{cfg.name} {case} residual={residual} relu={relu}: {cmp}"
    if relu and not nan:  # negatives become +0.0, never -0.0 (torch.relu's result)
        assert not torch.signbit(out[out == 0]).any(), cfg.name
    return out


def _sm90_accepting(case):
    from fused_resnet import _ext

    n, c, h, w, k, r, s, p, d = case
    x = torch.empty(0, c, 1, 1, device="meta")
    wt = torch.empty(k, c, r, r, device="meta")
    return [i for i, cfg in enumerate(_ext.sm90_configs())
            if _ext.sm90_config_accepts(i, x.to(torch.float16 if cfg.dtype == "f16" else torch.bfloat16),
                                        wt.to(torch.float16 if cfg.dtype == "f16" else torch.bfloat16), s, p)]


@pytest.mark.parametrize("case", SM90_CASES, ids=lambda c: "x".join(map(str, c)))
def test_sm90_every_config_every_class(case):
    _need_sm90()
    configs = _sm90_accepting(case)
    assert configs
    for i in configs:
        for residual in (False, True):
            for relu in (False, True):
                _sm90_check(i, case, residual, relu)


def test_sm90_nan_propagates():
    """A NaN input reaches every output pixel whose window covers it, through relu too."""
    _need_sm90()
    for case in ((2, 64, 12, 12, 64, 1, 1, 0, 1), (2, 64, 12, 12, 64, 3, 1, 1, 1)):
        for i in _sm90_accepting(case):
            for relu in (False, True):
                out = _sm90_check(i, case, residual=True, relu=relu, nan=True)
                assert out.isnan().any()


def test_sm90_random_geometry():
    """Seeded random problems within the supported set, each on the default and a random config."""
    _need_sm90()
    from fused_resnet import _ext

    rng = torch.Generator().manual_seed(1234)

    def pick(seq):
        return seq[int(torch.randint(len(seq), (1,), generator=rng))]

    for _ in range(24):
        r = pick([1, 1, 3, 5])
        s, p, d = pick([1, 2]), pick([0, 1, 2]), pick([1, 1, 2])
        case = (pick([1, 2, 5, 16]), 8 * pick([1, 3, 8, 33]), pick([7, 14, 23]), pick([7, 14, 31]),
                8 * pick([1, 5, 16, 40]), r, s, p if r > 1 else pick([0, 0, 1]), d)
        n, c, h, w, k = case[:5]
        if min(h, w) + 2 * case[7] < d * (r - 1) + 1:
            continue
        dt = pick([torch.float16, torch.bfloat16])
        default = _ext.default_sm90_config(n, c, h, w, k, r, r, s, case[7], d, dt)
        others = [i for i in _sm90_accepting(case) if _ext.sm90_configs()[i].dtype == _ext.sm90_configs()[default].dtype]
        for i in {default, pick(others)}:
            _sm90_check(i, case, residual=bool(pick([0, 1])), relu=bool(pick([0, 1])))


def test_sm90_refusals_are_clear():
    _need_sm90()
    from fused_resnet import _ext

    x = torch.randn(2, 64, 8, 8, device="cuda", dtype=torch.float16).contiguous(memory_format=CL)
    w3 = torch.randn(64, 64, 3, 3, device="cuda", dtype=torch.float16).contiguous(memory_format=CL)
    b = torch.zeros(64, device="cuda")
    gemm = _ext.sm90_config_index("gemm_f16_coop_128x128x64_c2x1")
    with pytest.raises(RuntimeError, match="1x1"):
        torch.ops.fused_resnet._conv2d_sm90(x, w3, b, None, [1, 1], [1, 1], [1, 1], True, gemm)
    with pytest.raises(RuntimeError, match="bfloat16"):
        torch.ops.fused_resnet._conv2d_sm90(x, w3, b, None, [1, 1], [1, 1], [1, 1], True,
                                            _ext.sm90_config_index("conv_bf16_ws_128x128x64_c1x1"))
    buf = torch.randn(x.numel() + 1, device="cuda", dtype=torch.float16)[1:]  # 2-byte offset
    xm = buf.view(2, 8, 8, 64).permute(0, 3, 1, 2)
    with pytest.raises(RuntimeError, match="16-byte"):
        torch.ops.fused_resnet._conv2d_sm90(xm, w3, b, None, [1, 1], [1, 1], [1, 1], True, 0)
    with pytest.raises(RuntimeError, match="out of range"):
        torch.ops.fused_resnet._conv2d_sm90(x, w3, b, None, [1, 1], [1, 1], [1, 1], True, 999)


# --- whole models (slowest last: a time-limited run still reports the kernel tests) ----------------

# batch 1 at full resolution; batch 64 at 96x96 (every layer still runs, at a fraction of the time).
# One float64 reference per (model, batch); every dtype and memory format is checked against it.
@pytest.mark.parametrize("batch, size", [(1, 224), (64, 96)], ids=["b1", "b64"])
@pytest.mark.parametrize("name", fused_resnet.models.NAMES)
def test_builder_on_gpu(name, batch, size):
    """Every dtype and layout against one float64 reference. The residual branches are damped
    (``damp_residuals``): undamped random resnet101/152 overflow fp16 from their BN biases at any
    input scale, and the eager fp16 result then has no error to compare against (first GPU run);
    ``fit_input`` scales the input if a dtype still needs it."""
    tv = damp_residuals(copy.deepcopy(_model(name)))
    tv64 = copy.deepcopy(tv).double()
    x64 = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float64)
    failures = []
    for dtype, dt in DTYPES.items():
        x, scale, ref = fit_input(tv64, x64, dt)
        tv_dt = copy.deepcopy(tv).to(dt)
        fused = fused_resnet.convert(copy.deepcopy(tv_dt))
        for fmt in ("nchw", "channels_last"):
            xf = x.to(dt).contiguous(memory_format=CL if fmt == "channels_last" else torch.contiguous_format)
            with torch.no_grad():
                cmp = compare(fused(xf), tv_dt(xf), ref)
            print(f"{name} b{batch} {dtype} {fmt} (input x{scale:g}): {cmp}")
            if not cmp.ok:
                failures.append(f"{dtype} {fmt}: {cmp}")
        del tv_dt, fused
    assert not failures, f"{name} b{batch}: " + "; ".join(failures)


def test_torch_compile_on_gpu():
    tv = copy.deepcopy(_model("resnet18")).half()
    compiled = torch.compile(fused_resnet.convert(copy.deepcopy(tv)), fullgraph=True)
    x = torch.randn(4, 3, 64, 64, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        ref = copy.deepcopy(tv).double()(x.double())
        cmp = compare(compiled(x), tv(x), ref)
    assert cmp.ok, str(cmp)


def test_cuda_graphs_of_several_models_in_one_process():
    """The `bench --cuda-graphs` scenario that faulted on the H200 (illegal memory access): several
    models captured one after another in one process, each replayed, checked against eager."""
    from fused_resnet.bench.model import _graphed

    tv = copy.deepcopy(_model("resnet50")).half()
    x = torch.randn(1, 3, 224, 224, device="cuda", dtype=torch.float16)
    models = {"torchvision": tv,
              "torchvision_cl": copy.deepcopy(tv).to(memory_format=CL),
              "fused_triton": fused_resnet.convert(copy.deepcopy(tv), backend="triton"),
              "fused_auto": fused_resnet.convert(copy.deepcopy(tv))}
    replays = {}
    for name, m in models.items():
        with torch.no_grad():
            expected = m(x)
        replays[name] = (_graphed(m, x.clone()), expected)
        torch.cuda.synchronize()
    for name, (replay, expected) in replays.items():
        out = replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, expected, rtol=0, atol=0, msg=name)


# --- fused_resnet.optimize: owned CUDA graphs --------------------------------------------------------

def _optimize_case(builder, seed):
    torch.manual_seed(seed)
    tv = randomize_bn(getattr(torchvision.models, builder)()).eval().cuda().half()
    x = torch.randn(1, 3, 96, 96, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        expected = fused_resnet.convert(copy.deepcopy(tv))(x).clone()
    return tv, x, expected


def test_optimize_several_models_survive_dropped_references():
    import gc

    cases = [_optimize_case(b, i) for i, b in enumerate(["resnet18", "resnet50", "resnext50_32x4d", "resnet34"])]
    opts = []
    for tv, x, _ in cases[:3]:
        opts.append(fused_resnet.optimize(tv, x))  # takes the model; no other reference is kept below
    del tv
    cases = [(None, x, e) for _, x, e in cases]  # drop every reference to the models but the optimizers' 
    gc.collect()
    torch.cuda.empty_cache()
    tv4 = _optimize_case("resnet34", 3)[0]
    opts.append(fused_resnet.optimize(tv4, cases[3][1]))
    del tv4
    gc.collect()
    for _ in range(3):  # replay every graph, round robin, after all captures
        for opt, (_, x, expected) in zip(opts, cases):
            out = opt(x)
            torch.cuda.synchronize()
            assert torch.equal(out, expected)
    assert all(o.captures == 1 for o in opts)
    del opts[1]  # deleting one leaves the others correct
    gc.collect()
    torch.cuda.empty_cache()
    for opt, (_, x, expected) in zip(opts, [cases[0], cases[2], cases[3]]):
        assert torch.equal(opt(x), expected)


def test_optimize_recaptures_after_weight_edits_and_maps_shapes_to_graphs():
    tv, x, expected = _optimize_case("resnet18", 0)
    opt = fused_resnet.optimize(tv, x)
    assert torch.equal(opt(x), expected) and opt.captures == 1
    with torch.no_grad():
        opt.model.layer1[0].conv1.weight.mul_(0.5)  # edited after capture
        ref = copy.deepcopy(opt.model)
    with torch.inference_mode():
        want = ref(x)
    assert torch.equal(opt(x), want) and opt.captures == 2  # detected, captured again
    x2 = torch.randn(2, 3, 96, 96, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        want2 = ref(x2)
    assert torch.equal(opt(x2), want2) and opt.graph_shapes() == [(1, 3, 96, 96), (2, 3, 96, 96)]
    out = opt(x)
    assert opt(x).data_ptr() == out.data_ptr()  # the static output is reused (documented)
    opt.copy_output = True
    assert opt(x).data_ptr() != out.data_ptr()
