"""The CPU graph (fused_resnet/_cpu_graph.py, csrc/cpu_graph.cpp): oneDNN primitives run from C++ for a
whole torchvision ResNet, as fused_resnet.optimize runs it on CPU inputs. Its output against the
float64 reference, the exact fallback wherever the ReLU post-op cannot be proven exact, rebuilding
after weight edits, and every mode or model it must leave to the converted model."""
import copy
import pickle
import threading

import pytest
import torch
import torchvision

import fused_resnet
from fused_resnet import _cpu_graph
from fused_resnet.testing import compare, max_rel_error, reference_outputs

from helpers import random_model


@pytest.fixture(scope="module", autouse=True)
def _extension():
    ext, why = _cpu_graph.extension()
    if ext is None:
        pytest.skip(f"CPU graph unavailable here: {why}")


def _check(out, model, x):
    ref, eager = reference_outputs(model, x)
    c = compare(out, eager, ref)
    assert c.ok, str(c)


N, B = _cpu_graph.NHWC, _cpu_graph.BLOCKED


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2"])
@pytest.mark.parametrize("layouts", [(N, N, N, N), (B, B, B, B), (B, B, N, N), (N, B, N, B)])
def test_net_matches_the_reference(name, layouts):
    """Every stage in either layout, with a reorder where two stages differ."""
    model = random_model(getattr(torchvision.models, name))
    x = torch.randn(2, 3, 64, 64)
    net, why = _cpu_graph.build(model, x, layouts)
    assert net is not None, why
    with torch.inference_mode():
        _check(net.run(x), model, x)
        _check(net.run(x.contiguous(memory_format=torch.channels_last)), model, x)  # the other format
    assert 1 <= net.measured <= 20  # the input's pass, plus one per bound that got loose
    assert not any(impl.startswith("ref") for impl in net.net.implementations), net.net.implementations


def test_optimize_runs_the_net_and_steps_aside_exactly():
    """NaN or Inf in the input or the weights, or values near float32's range: the ReLU post-op cannot
    be proven exact, so the converted model runs (NaN where torchvision puts it)."""
    tv = random_model(torchvision.models.resnet18)
    x = torch.randn(2, 3, 48, 48)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        _check(opt(x), tv, x)
        assert opt.cpu_graph_runs == 1 and opt.cpu_graph_status == "oneDNN CPU graph"
        for value in (float("nan"), float("inf"), 3e38):
            bad = x.clone()
            bad[1, 2, 7, 9] = value
            out = opt(bad)
            assert opt.cpu_graph_runs == 1 and "cannot be proven" in opt.cpu_graph_status, value
            ref = tv(bad)
            assert max_rel_error(out, ref) <= 1e-5 or torch.equal(out.isnan(), ref.isnan()), value
            if value != value:
                assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
        opt.model.layer2[0].bn1.running_var[3] = float("nan")  # NaN in a folded weight
        tv.layer2[0].bn1.running_var[3] = float("nan")
        out = opt(x)
        assert opt.cpu_graph_runs == 1, opt.cpu_graph_status
        assert torch.equal(out.isnan(), tv(x).isnan())


def test_weight_edits_rebuild_the_nets():
    tv = random_model(torchvision.models.resnet50)
    x = torch.randn(1, 3, 64, 64)
    opt = fused_resnet.optimize(copy.deepcopy(tv), x)
    m = opt.model
    edits = [
        lambda t: t.layer3[1].conv2.weight.mul_(1.5),
        lambda t: t.layer1[0].downsample[1].running_mean.add_(0.25),
        lambda t: t.fc.bias.add_(1.0),
        lambda t: t.load_state_dict(random_model(torchvision.models.resnet50).state_dict()),
    ]
    with torch.no_grad():
        for i, edit in enumerate(edits):
            edit(m)
            edit(tv)
            runs = opt.cpu_graph_runs
            _check(opt(x), tv, x)
            assert opt.cpu_graph_runs == runs + 1, (i, opt.cpu_graph_status)
        x2 = torch.randn(3, 3, 32, 32)  # another shape: its own net
        _check(opt(x2), tv, x2)
        _check(opt(x), tv, x)
        assert len(opt.model._cpu_graphs.nets) == 2


def test_modes_hooks_and_other_models_run_the_converted_model():
    tv = random_model(torchvision.models.resnet18)
    x = torch.randn(2, 3, 32, 32)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        opt(x)
        runs = opt.cpu_graph_runs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = opt(x)
        assert out.dtype == torch.bfloat16 and "autocast" in opt.cpu_graph_status
        seen = []
        h = opt.model.layer3[1].conv1.register_forward_hook(lambda *a: seen.append(1))
        opt(x)
        h.remove()
        assert seen == [1]
        assert opt.cpu_graph_runs == runs
        opt(x)
        assert opt.cpu_graph_runs == runs + 1
    for builder, kwargs, reason in [(torchvision.models.resnext50_32x4d, {}, "grouped"),
                                    (torchvision.models.resnet50, {"replace_stride_with_dilation": [False, True, True]},
                                     "dilated")]:
        tv2 = random_model(builder, **kwargs)
        opt2 = fused_resnet.optimize(copy.deepcopy(tv2))
        with torch.no_grad():
            _check(opt2(x), tv2, x)
        assert opt2.cpu_graph_runs == 0 and reason in opt2.cpu_graph_status
    tv3 = random_model(torchvision.models.resnet18)
    opt3 = fused_resnet.optimize(copy.deepcopy(tv3))
    opt3.model.layer1[0].relu = torch.nn.GELU()  # not a ReLU any more: the net cannot express it
    tv3.layer1[0].relu = torch.nn.GELU()
    with torch.no_grad():
        _check(opt3(x), tv3, x)
    assert opt3.cpu_graph_runs == 0 and "relu" in opt3.cpu_graph_status


def test_threads_and_copies():
    tv = random_model(torchvision.models.resnet18)
    xs = [torch.randn(2, 3, 32, 32) for _ in range(4)]
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        expected = [tv(x) for x in xs]
        opt(xs[0])
    errors = []

    def work(i):
        with torch.no_grad():
            for _ in range(5):
                for x, e in zip(xs, expected):
                    if not max_rel_error(opt(x), e) <= 1e-5:
                        errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and opt.cpu_graph_runs == 1 + 3 * 5 * 4
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert clone.cpu_graph_runs == 0 and "_cpu_graphs" not in clone.model.__dict__
        with torch.no_grad():
            assert max_rel_error(clone(xs[1]), expected[1]) <= 1e-5
        assert clone.cpu_graph_runs == 1


def test_a_fused_optimizer_step_rebuilds_the_net():
    """Fused optimizer steps write parameters with no version bump: the step counter in the stamp
    must still rebuild the net (fine-tuning in eval mode, then serving the same module)."""
    tv = random_model(torchvision.models.resnet18)
    x = torch.randn(2, 3, 32, 32)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        before = opt(x)
    params = [p for p in opt.model.parameters() if p.requires_grad]
    try:
        adam = torch.optim.Adam(params, lr=1e-2, fused=True)
    except (RuntimeError, ValueError) as e:
        pytest.skip(f"no fused Adam on the CPU here: {e}")
    versions = [p._version for p in params]
    opt.model(x).square().mean().backward()  # (eval mode: frozen-BN fine-tuning)
    adam.step()
    assert [p._version for p in params] == versions  # the write PyTorch gives no signal for
    runs = opt.cpu_graph_runs
    with torch.no_grad():
        after = opt(x)
        tv.load_state_dict(opt.model.state_dict())
        _check(after, tv, x)
    assert opt.cpu_graph_runs == runs + 1 and not torch.equal(after, before)


def test_layout_follows_the_input_size():
    """Small inputs run NHWC, large maps oneDNN's blocked layout, as measured per vector width
    (benchmarks/NOTES.md, "The CPU graph" and "The CPU graph on AVX2"); through optimize() each gives
    the reference's output."""
    tv = random_model(torchvision.models.resnet18)
    x1, x2, x8 = (torch.randn(n, 3, 224, 224) for n in (1, 2, 8))
    assert _cpu_graph.choose_layouts(tv, x1, 16) == (N,) * 4
    assert _cpu_graph.choose_layouts(tv, x2, 16) == (B,) * 4
    assert _cpu_graph.choose_layouts(tv, x1, 8) == (N,) * 4
    assert _cpu_graph.choose_layouts(tv, x2, 8) == (B, N, N, N)
    assert _cpu_graph.choose_layouts(tv, x8, 8) == (B, B, N, N)
    # a stage with channels that do not fill whole blocks stays NHWC (widths 36, 72, 144, 288)
    narrow = random_model(torchvision.models.resnet50, width_per_group=36)
    assert _cpu_graph.choose_layouts(narrow, x8, 16) == (N, N, B, B)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    ext, _ = _cpu_graph.extension()
    for x in (x1, x2):
        with torch.no_grad():
            _check(opt(x), tv, x)
        net, _ = opt.model._cpu_graphs.nets[tuple(x.shape)]
        assert net.layouts == _cpu_graph.choose_layouts(tv, x, ext.vector_floats())


def test_a_layout_without_fast_kernels_falls_back_to_nhwc():
    """Blocks of the other vector width: oneDNN may have only its reference loops for them (16-channel
    blocks on an AVX2 CPU: the stem's, 4.7 s a forward). build() then makes the NHWC net rather than
    refusing, and a caller's explicit choice is refused rather than run slowly."""
    class OtherWidth:  # the extension, telling the builder the other block size
        def __init__(self, ext):
            self._ext = ext

        def __getattr__(self, name):
            return getattr(self._ext, name)

        def vector_floats(self):
            return 24 - self._ext.vector_floats()

    model = random_model(torchvision.models.resnet18)
    x = torch.randn(2, 3, 64, 64)
    ext, _ = _cpu_graph.extension()
    try:
        _cpu_graph.CpuGraph(OtherWidth(ext), model, x, (B,) * 4)
        slow = False
    except ValueError as e:
        assert "no optimized kernel" in str(e)
        slow = True
    real = _cpu_graph._state["ext"]
    _cpu_graph._state["ext"] = (OtherWidth(ext), None)
    try:
        with torch.no_grad():
            net, why = _cpu_graph.build(model, x, (B,) * 4)
            assert (net is None) == slow, why
            x = torch.randn(4, 3, 160, 160)
            net, why = _cpu_graph.build(model, x)
            assert net is not None, why
            assert net.layouts == ((N,) * 4 if slow else (B, N, N, N) if ext.vector_floats() == 16 else (B,) * 4)
            with torch.inference_mode():
                _check(net.run(x), model, x)
    finally:
        _cpu_graph._state["ext"] = real


def test_a_backbone_without_its_fc():
    """model.fc = nn.Identity() (the pooled features, as a backbone): the net returns them."""
    tv = random_model(torchvision.models.resnet50)
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        out = opt(x)
        assert out.shape == (2, 2048)
        _check(out, tv, x)
    assert opt.cpu_graph_runs == 1, opt.cpu_graph_status


def test_a_classifier_without_bias():
    """The classifier runs inside the net (oneDNN's inner product); without a bias it gets zeros."""
    tv = random_model(torchvision.models.resnet18)
    tv.fc = torch.nn.Linear(512, 7, bias=False)
    x = torch.randn(3, 3, 64, 64)
    net, why = _cpu_graph.build(tv, x)
    assert net is not None, why
    with torch.inference_mode():
        out = net.run(x)
        assert out.shape == (3, 7)
        _check(out, tv, x)


def test_implementations_are_timed_once_per_shape(monkeypatch):
    """FUSED_RESNET_CPU_GRAPH_TUNE: each conv shape's candidate implementations are timed once per
    process and the choice reused (the same kernels, so the same bits, for every net of that shape);
    0 keeps oneDNN's first choice; a malformed value is an error, not a silent default."""
    x = torch.randn(3, 3, 72, 72)  # a shape no other test builds, so nothing is cached yet
    layouts = (N,) * 4  # (NHWC: oneDNN offers brgconv and its direct jit kernels for each conv)
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH_TUNE", "0")
    first, _ = _cpu_graph.build(random_model(torchvision.models.resnet50), x, layouts)
    assert first.tune_log == []
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH_TUNE", "2")
    model = random_model(torchvision.models.resnet50)
    tuned, why = _cpu_graph.build(model, x, layouts)
    assert tuned is not None, why
    assert tuned.tune_log, "no conv shape had two implementations to time"
    for line in tuned.tune_log:  # "<shape>: impl ms impl ms ... -> chosen"
        shape, rest = line.split(": ", 1)
        times, chosen = rest.rsplit(" -> ", 1)
        assert chosen in times.split()[::2], line
    with torch.inference_mode():
        _check(tuned.run(x), model, x)
    again, _ = _cpu_graph.build(random_model(torchvision.models.resnet50), x, layouts)
    assert again.tune_log == [] and again.implementations == tuned.implementations
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH_TUNE", "fast")
    with pytest.raises(ValueError, match="FUSED_RESNET_CPU_GRAPH_TUNE"):
        _cpu_graph.build(model, torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("name,shape", [
    ("resnet18", (2, 3, 64, 64)),   # BasicBlock: the stride-2 3x3 conv is the block's first
    ("resnet50", (3, 3, 72, 72)),   # Bottleneck: its second; maps 18 -> 9, then odd: 9 -> 5, 5 -> 3
    ("resnet34", (2, 3, 97, 97)),   # odd maps at each stride-2 conv (25 -> 13, 13 -> 7, 7 -> 4)
    ("resnet50", (1, 3, 40, 40)),   # layer4's input 3x3: under 4x4, that conv stays direct
])
def test_stride2_convs_split_into_phases(name, shape):
    """Phases: a 3x3 stride-2 conv as four stride-1 convs over its input's even and odd rows and columns,
    added into one output. Forced wherever it fits (the timing keeps it only where it is faster), on
    even and odd map sizes, against the float64 reference; a NaN weight in a split conv stops the net
    before that conv. (No timing here: the timing test wants shapes nothing else has timed.)"""
    model = random_model(getattr(torchvision.models, name))
    x = torch.randn(*shape)
    ext, _ = _cpu_graph.extension()
    split = _cpu_graph.CpuGraph(ext, model, x, (N,) * 4, tune_rounds=0, phases=True)
    direct = _cpu_graph.CpuGraph(ext, model, x, (N,) * 4, tune_rounds=0, phases=False)
    h = (shape[2] - 1) // 2 + 1  # the stem
    h = (h - 1) // 2 + 1  # the max pool: layer2's input
    inputs = [h, (h - 1) // 2 + 1]  # of the stride-2 3x3 convs of layers 2, 3 and 4
    inputs.append((inputs[-1] - 1) // 2 + 1)
    split_impls = [impl for impl in split.implementations if impl.startswith("phases(")]
    assert len(split_impls) == sum(i >= 4 for i in inputs), (inputs, split.implementations)
    assert not any(impl.startswith("phases(") for impl in direct.implementations)
    with torch.inference_mode():
        _check(split.run(x), model, x)
        wide = torch.randn(shape[0], 3, shape[2], 2 * shape[3])[..., ::2]
        _check(split.run(wide), model, wide)
        bad = x.clone()
        bad[0, 1, 3, 4] = float("nan")
        assert split.run(bad) is None  # the input's bound fails: nothing runs
        conv = next(m for m in model.layer3.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)
                    and m.kernel_size == (3, 3))
        conv.weight[5, 2, 0, 1] = float("nan")  # a tap of the split conv's 2x2 part
        poisoned = _cpu_graph.CpuGraph(ext, model, x, (N,) * 4, tune_rounds=0, phases=True)
        assert poisoned.implementations == split.implementations
        assert poisoned.run(x) is None  # its bound (the folded weight's gain) fails before it runs


@pytest.mark.parametrize("name,shape,layouts", [
    ("resnet18", (2, 3, 64, 64), (N,) * 4),   # BasicBlock: the residual add in the second conv's output transform
    ("resnet50", (3, 3, 72, 72), (B, B, N, N)),  # blocked and NHWC stages; maps 18, 9 (odd: a half tile), 5, 3
    ("resnet34", (1, 3, 97, 97), (N, B, N, B)),  # odd maps: 25, 13, 7, 4; a reorder at each stage
    ("wide_resnet50_2", (2, 3, 40, 40), (B,) * 4),  # 128-1024 channels in the 3x3 convs: both GEMM splits
])
def test_stride1_3x3_convs_as_winograd(name, shape, layouts):
    """Wino: every 3x3 stride-1 conv as Winograd's F(2x2, 3x3), forced wherever it fits (the timing keeps
    it only where it is faster), NHWC and 8-channel blocks, even and odd maps, against the float64
    reference within the same bound as every other path. Its intermediate sums reach 36x the direct
    conv's bound, so an input that the direct net takes but that could overflow there is refused (the
    model runs it); a NaN input stops the net before it runs."""
    if _cpu_graph.extension()[0].vector_floats() != 8 and B in layouts:
        pytest.skip("8-channel blocks are the blocked layout on AVX2 CPUs only")
    model = random_model(getattr(torchvision.models, name))
    x = torch.randn(*shape)
    ext, _ = _cpu_graph.extension()
    wino = _cpu_graph.CpuGraph(ext, model, x, layouts, tune_rounds=0, winograd=True)
    direct = _cpu_graph.CpuGraph(ext, model, x, layouts, tune_rounds=0, winograd=False)
    # the 3x3 stride-1 convs: all of BasicBlock's but the stride-2 ones, Bottleneck's all but stride-2
    n3 = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
             and m.stride == (1, 1))
    assert sum(impl.startswith("winograd") for impl in wino.implementations) == n3, wino.implementations
    assert not any(impl.startswith("winograd") for impl in direct.implementations)
    with torch.inference_mode():
        _check(wino.run(x), model, x)
        wide = torch.randn(shape[0], 3, shape[2], 2 * shape[3])[..., ::2]
        _check(wino.run(wide), model, wide)
        bad = x.clone()
        bad[-1, 2, 5, 6] = float("nan")
        assert wino.run(bad) is None
        # inputs scaled up to where Winograd's sums could pass float32's range: there are scales the
        # direct net still takes (bound x 1) that the Winograd net refuses (bound x 36)
        scaled = [x * (10.0 ** e / x.abs().max()) for e in range(26, 39)]
        refused = [e for e, big in zip(range(26, 39), scaled) if direct.run(big) is not None and wino.run(big) is None]
        assert refused


@pytest.mark.parametrize("name,shape,layouts", [
    ("resnet34", (3, 3, 33, 33), (N,) * 4),   # odd sizes: 1x1 maps in layer4
    ("resnet34", (3, 3, 33, 33), (B,) * 4),
    ("resnet34", (3, 3, 33, 33), (B, N, B, N)),
    ("resnet101", (1, 3, 65, 65), (B,) * 4),
    ("resnet18", (2, 3, 7, 7), (N,) * 4),     # small inputs: 1x1 maps from layer1 on
    ("resnet18", (2, 3, 3, 3), (N,) * 4),
])
def test_odd_shapes_and_depths(name, shape, layouts):
    model = random_model(getattr(torchvision.models, name))
    x = torch.randn(*shape)
    net, why = _cpu_graph.build(model, x, layouts)
    assert net is not None, why
    with torch.inference_mode():
        _check(net.run(x), model, x)
        wide = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3])[..., ::2]  # strided, not contiguous
        _check(net.run(wide), model, wide)


def test_inputs_the_net_does_not_take_run_the_model():
    tv = random_model(torchvision.models.resnet18)
    opt = fused_resnet.optimize(copy.deepcopy(tv))
    with torch.no_grad():
        x = torch.randn(2, 3, 40, 48)  # non-square
        _check(opt(x), tv, x)
        assert opt.cpu_graph_runs == 0 and "square" in opt.cpu_graph_status, opt.cpu_graph_status
        with pytest.raises(RuntimeError, match="Double"):  # float64 into a float32 model: torch's own error
            opt(torch.randn(2, 3, 32, 32).double())
        assert opt.cpu_graph_runs == 0 and "float32" in opt.cpu_graph_status


def test_the_converted_model_itself_runs_the_net_where_it_may():
    """The drop-in: a converted ResNet's no-grad eval CPU call is the CPU graph's (same result rule as
    the fused blocks), and every call the graph must not take runs the blocks: autograd, training,
    hooks inside the model, explain(), another backend, the opt-outs."""
    tv = random_model(torchvision.models.resnet18)
    x = torch.randn(2, 3, 48, 48)
    m = fused_resnet.convert(copy.deepcopy(tv))
    with torch.no_grad():
        _check(m(x), tv, x)
    assert m.cpu_graph_runs == 1 and m.cpu_graph_status == "oneDNN CPU graph"
    out = m(x)  # autograd on: the blocks, and a result that carries grad
    assert out.requires_grad and m.cpu_graph_runs == 1
    seen = []
    h = m.fc.register_forward_hook(lambda *a: seen.append(1))
    with torch.no_grad():
        m(x)
    assert seen == [1] and m.cpu_graph_runs == 1 and "hook" in m.cpu_graph_status
    h.remove()
    h = m.register_forward_hook(lambda *a: seen.append(2))  # on the model itself: fires around the graph
    with torch.no_grad():
        m(x)
    assert seen == [1, 2] and m.cpu_graph_runs == 2
    h.remove()
    rows = fused_resnet.explain(m, x).rows  # what the blocks run, not the graph
    assert len(rows) == 20 and m.cpu_graph_runs == 2
    with torch.no_grad(), fused_resnet.use_backend("eager"):
        m(x)
    assert m.cpu_graph_runs == 2
    with torch.no_grad():
        m.layer1[0].bn1.weight.mul_(2)  # an edit: the net is rebuilt from the new weights
        tv.layer1[0].bn1.weight.mul_(2)
        _check(m(x), tv, x)
    assert m.cpu_graph_runs == 3
    m.train()
    assert "_cpu_graphs" not in m.__dict__  # a refresh point drops the nets
    m.eval()
    off = fused_resnet.convert(copy.deepcopy(tv), cpu_graph=False)
    with torch.no_grad():
        _check(off(x), tv, x)
    assert off.cpu_graph_runs == 0
    clone = copy.deepcopy(m)  # a copy builds its own nets, from its own weights
    assert "_cpu_graphs" not in clone.__dict__ and clone.cpu_graph_runs == 0


def test_the_environment_switch_turns_the_drop_in_graph_off(monkeypatch):
    tv = random_model(torchvision.models.resnet18)
    m = fused_resnet.convert(copy.deepcopy(tv))
    x = torch.randn(1, 3, 40, 40)
    monkeypatch.setenv("FUSED_RESNET_CPU_GRAPH", "0")
    with torch.no_grad():
        _check(m(x), tv, x)
    assert m.cpu_graph_runs == 0
    monkeypatch.delenv("FUSED_RESNET_CPU_GRAPH")
    with torch.no_grad():
        _check(m(x), tv, x)
    assert m.cpu_graph_runs == 1


def test_without_the_library_the_blocks_run_and_the_status_says_why(monkeypatch):
    tv = random_model(torchvision.models.resnet18)
    m = fused_resnet.convert(copy.deepcopy(tv))
    x = torch.randn(1, 3, 40, 40)
    monkeypatch.setitem(_cpu_graph._state, "ext", (None, "onednn-cpu-gomp is not installed (test)"))
    with torch.no_grad():
        _check(m(x), tv, x)
    assert m.cpu_graph_runs == 0 and "_cpu_graphs" not in m.__dict__ and "not installed" in m.cpu_graph_status


def _timm_model(name, **kwargs):
    timm = pytest.importorskip("timm")
    from fused_resnet.testing import randomize_bn

    torch.manual_seed(0)
    return randomize_bn(timm.create_model(name, pretrained=False, **kwargs), torch.Generator().manual_seed(0)).eval()


@pytest.mark.parametrize("name,kwargs", [("resnet50", {}), ("resnet34", {}), ("wide_resnet50_2", {}),
                                         ("resnet50", {"num_classes": 0})])
def test_timm_resnets_run_the_net(name, kwargs):
    """A converted plain timm ResNet answers a whole no-grad call (forward: features and head) with the
    net; a NaN input still lands where timm puts it (the blocks run that call)."""
    m = _timm_model(name, **kwargs)
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = fused(x)
        assert fused.cpu_graph_runs == 1, fused.cpu_graph_status
        _check(out, m, x)
        bad = x.clone()
        bad[1, 0, 5, 5] = float("nan")
        out, eager = fused(bad), m(bad)
        assert fused.cpu_graph_runs == 1 and "cannot be proven" in fused.cpu_graph_status
        assert torch.equal(out.isnan(), eager.isnan()) and out.isnan().any()
        feats = fused.forward_features(x)  # (forward_features alone: the fused blocks, timm's contract)
        assert feats.dim() == 4 and fused.cpu_graph_runs == 1


@pytest.mark.parametrize("name,kwargs,why", [
    ("resnet50d", {}, "deep stem"),
    ("seresnet50", {}, "SE"),
    ("resnext50_32x4d", {}, "grouped"),
    ("resnet18", {"global_pool": "max"}, "head"),
    ("resnet18", {"drop_path_rate": 0.1}, "drop-path"),
])
def test_timm_variants_the_net_does_not_compute_run_the_blocks(name, kwargs, why):
    m = _timm_model(name, **kwargs)
    fused = fused_resnet.convert(copy.deepcopy(m))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = fused(x)
    assert fused.cpu_graph_runs == 0 and why in fused.cpu_graph_status, fused.cpu_graph_status
    _check(out, m, x)
