"""The CPU graph: a whole torchvision ResNet forward as oneDNN primitives run from C++.

Why: on the CPU the converted model's convs are oneDNN's kernels reached through torch ops, and each
such call costs ~35 us of torch's own work besides the kernel (descriptor building, allocation); with
fresh output buffers, page faults, a max-pool that also writes indices and Python around them, that
kept the converted model behind ONNX Runtime at batch 1 whatever was done around the kernels
(benchmarks/NOTES.md, "The CPU gap, split at the kernels"). Here the network is built once per input
signature into oneDNN primitives with BN folded, residual adds and ReLUs as post-ops, weights
reordered once and every activation in a buffer kept with the net, and a forward is one C++ call
(csrc/cpu_graph.cpp, which also explains how the ReLU post-op is kept exact).

Who runs it: a converted torchvision ResNet (``blocks.ResNet``, also inside ``optimize()``) or plain
timm ResNet (``timm_resnet.ResNet``), through ``GraphRoot``, for a float32 CPU call in eval mode
without autograd. ``_cpu_graph_spec.describe`` reads either library's modules into the ``Spec`` the builder uses.
Its ``CpuGraphs`` checks the whole model's stamp (``_model_stamp``) before each call and rebuilds the
nets after any change; hooks inside the model,
modes, autocast and other backends step aside. A net that cannot prove its ReLU post-op exact for an
input returns None and the fused blocks run the call.

What it needs: the ``onednn-cpu-gomp`` wheel (``pip install fused_resnet[cpu]``: libdnnl with GNU
OpenMP, the runtime torch uses), a C++ compiler and ninja; the extension is built on first use
(~35 s on 2 cores) and cached in ``TORCH_EXTENSIONS_DIR``. ``FUSED_RESNET_CPU_GRAPH=0`` turns the path off.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import os
import sys
import threading
import time
from typing import Optional

import torch
import torch.autograd.forward_ad as _fwad
from torch import nn

from . import _env, _selector, _trace, folding
from ._fused import _FusedMixin
from ._geometry import out_size
from ._cpu_graph_spec import Spec, describe, unsupported  # noqa: F401 (unsupported: part of this module's API)
from ._model_stamp import ModelStamp

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
_lock = threading.Lock()
_state: dict = {}


def library_dir() -> Optional[str]:
    """Where pip put the onednn-cpu-gomp wheel's libdnnl (its data files go under the prefix)."""
    for prefix in (sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")):
        if glob.glob(os.path.join(prefix, "lib", "libdnnl.so.3*")):
            return os.path.join(prefix, "lib")
    return None


def _build():
    from torch.utils import cpp_extension

    lib = library_dir()
    if lib is None:
        raise RuntimeError("onednn-cpu-gomp is not installed (pip install fused_resnet[cpu])")
    if not os.path.exists(os.path.join(CSRC, "cpu_graph.cpp")):
        raise RuntimeError(f"csrc/cpu_graph.cpp not found beside the package ({CSRC})")
    import importlib.util

    if importlib.util.find_spec("ninja") is not None:  # the pip wheel's ninja binary onto PATH
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    # One build folder per torch and Python: the library links against this torch.
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.expanduser("~/.cache/torch_extensions")
    build_dir = os.path.join(root, f"fused_resnet_cpu_graph-{tag}")
    os.makedirs(build_dir, exist_ok=True)
    t0 = time.perf_counter()
    print("fused_resnet: building the CPU graph extension (first use, ~35 s; cached afterwards) ...",
          file=sys.stderr, flush=True)
    # torch rebuilds when the source or the flags change: the header's hash goes into the flags
    with open(os.path.join(CSRC, "cpu_winograd.h"), "rb") as f:
        header = hashlib.sha256(f.read()).hexdigest()[:16]
    mod = cpp_extension.load(name="fused_resnet_cpu_graph", sources=[os.path.join(CSRC, "cpu_graph.cpp")],
                             extra_cflags=["-O2", "-fopenmp", f"-DFUSED_RESNET_WINOGRAD_H={header}"],
                             extra_ldflags=["-fopenmp", f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"],
                             build_directory=build_dir, verbose=False)
    print(f"fused_resnet: CPU graph extension ready ({time.perf_counter() - t0:.0f} s; libdnnl "
          f"{mod.library_version()})", file=sys.stderr, flush=True)
    if mod.library_major() != 3:
        raise RuntimeError(f"libdnnl {mod.library_version()} found; the CPU graph is written for oneDNN 3.x")
    return mod


def extension():
    """(module, None) once built or loaded, else (None, why not). Built at most once per process."""
    with _lock:
        if "ext" not in _state:
            if _env.get("FUSED_RESNET_CPU_GRAPH", "1") == "0":
                return None, "FUSED_RESNET_CPU_GRAPH=0"
            if not torch.backends.mkldnn.is_available():
                _state["ext"] = (None, "torch is built without oneDNN (its headers are what the extension uses)")
            else:
                try:
                    _state["ext"] = (_build(), None)
                except Exception as e:  # reported (OptimizedModel.cpu_graph_status), never raised
                    _state["ext"] = (None, f"CPU graph unavailable: {str(e).splitlines()[0][:200]}")
        return _state["ext"]


def unavailable_reason() -> Optional[str]:
    """Why the extension could not be built or loaded, if that was tried in this process (no build)."""
    return _state.get("ext", (None, None))[1]


# What the net can express (describe, Spec): ``_cpu_graph_spec``.


def _tune_rounds() -> int:
    """Rounds of timing per conv shape when a net is built (FUSED_RESNET_CPU_GRAPH_TUNE; 0: oneDNN's
    first choice everywhere, no timing)."""
    v = _env.get("FUSED_RESNET_CPU_GRAPH_TUNE", "3")
    if not v.isdigit():
        raise ValueError(f"FUSED_RESNET_CPU_GRAPH_TUNE={v!r}: a number of timing rounds expected (0: off)")
    return int(v)


NHWC, BLOCKED = "nhwc", "blocked"  # a stage's activation layout (blocked: oneDNN's nChw8c / nChw16c)


def _stage_channels(spec: Spec) -> list:
    """Per stage, the channel counts of every buffer it writes (the stem's go with layer1)."""
    out = []
    for li, blocks in enumerate(spec.layers):
        chans = {spec.stem[0].out_channels} if li == 0 else set()
        for main, ds in blocks:
            for c, _ in main + ([ds] if ds else []):
                chans.update((c.in_channels, c.out_channels))
        out.append(chans)
    return out


class CpuGraph:
    """One built net for one input signature; ``run(x)`` -> logits, or None (the caller runs the model).
    ``layouts``: one of NHWC / BLOCKED per stage (layer1..layer4; the stem takes layer1's); where two
    stages differ, one reorder of the activations between them. ``tune_rounds``: how often each
    implementation oneDNN offers for a conv shape is timed before the fastest is taken (None: the
    FUSED_RESNET_CPU_GRAPH_TUNE setting; 0: oneDNN's first choice); ``tune_log`` lists what was timed.
    ``phases``: whether an NHWC 3x3 stride-2 conv runs as four stride-1 convs over its input's even and
    odd rows and columns (csrc/cpu_graph.cpp, Phases): None where timed faster than oneDNN's kernel for
    it (with the timing on), True wherever it fits, False never. ``winograd``: the same for a 3x3
    stride-1 conv as Winograd's F(2x2, 3x3) (csrc/cpu_winograd.h; AVX2 CPUs, NHWC or 8-channel blocks)."""

    def __init__(self, ext, model: nn.Module, x: torch.Tensor, layouts=(NHWC,) * 4, tune_rounds: Optional[int] = None,
                 phases: Optional[bool] = None, winograd: Optional[bool] = None):
        spec, why = describe(model)
        if spec is None:
            raise ValueError(why)
        if len(layouts) != 4 or any(v not in (NHWC, BLOCKED) for v in layouts):
            raise ValueError(f"layouts: four of {NHWC!r} / {BLOCKED!r} expected, got {layouts!r}")
        self.layouts = tuple(layouts)
        self.block = ext.vector_floats()  # channels per block of the blocked layout
        tags = {NHWC: ext.TAG_NHWC, BLOCKED: ext.TAG_NCHW16C if self.block == 16 else ext.TAG_NCHW8C}
        # The net takes plain NCHW input (run() converts one in another format first). A stem writing the
        # blocked layout reads it directly (oneDNN's kernel for it); one writing NHWC has a kernel only for
        # NHWC input, so the net's first step reorders the input (oneDNN's reorder took 12-19 us at batch
        # 1 at 224x224 where torch's channels_last copy before the net took 56-175 us; benchmarks/NOTES.md).
        x = x.contiguous()
        net = self.net = ext.Net()
        free: dict = {}  # (c, h, w, layout) -> ids of buffers whose values are dead
        layout = layouts[0]  # of the buffers being made

        def buffer(c, h, w):
            ids = free.get((c, h, w, layout))
            return ids.pop() if ids else net.add_buffer(c, h, w, tags[layout])

        def release(i, shape, in_layout=None):
            free.setdefault(shape + (in_layout or layout,), []).append(i)

        def conv(src, hw, c, bn, relu, dst=None, sum_=False):
            s, p = c.stride[0], c.padding[0]
            ohw = out_size(hw, c.kernel_size[0], s, p, 1)
            if ohw < 1:
                raise ValueError(f"input too small: a conv's output would be {ohw}x{ohw}")
            if dst is None:
                dst = buffer(c.out_channels, ohw, ohw)
            w, b = folding.fold_bn(c.weight.detach(), c.bias.detach() if c.bias is not None else None, bn)
            net.add_conv(src, dst, w.contiguous(), b.float().contiguous(), s, p, relu, sum_)
            return dst, ohw

        n, cin, h, w = x.shape
        conv1, bn1 = spec.stem
        if h != w or n == 0 or cin != conv1.in_channels:
            raise ValueError(f"input of shape {tuple(x.shape)}: the net takes square, non-empty inputs with "
                             f"{conv1.in_channels} channels")
        for i, stage in enumerate(_stage_channels(spec)):
            if layouts[i] == BLOCKED and any(c % self.block for c in stage):
                raise ValueError(f"layer{i + 1}'s channels are not whole {self.block}-channel blocks")
        cur = net.add_buffer(cin, h, w, 0)  # (the input: described by its strides at build)
        if layout == NHWC:
            cur_nhwc = net.add_buffer(cin, h, w, tags[NHWC])
            net.add_reorder(cur, cur_nhwc)
            cur = cur_nhwc
        stem, h = conv(cur, h, conv1, bn1, True)
        k, s, p = spec.pool
        hp = out_size(h, k, s, p, 1)
        cur = buffer(conv1.out_channels, hp, hp)
        net.add_pool(stem, cur, True, k, s, p)
        release(stem, (conv1.out_channels, h, h))
        h, c_cur = hp, conv1.out_channels  # the current activations' size and channels
        for li, blocks in enumerate(spec.layers):
            if layouts[li] != layout:  # the previous stage's output, reordered
                old, old_layout, layout = cur, layout, layouts[li]
                cur = buffer(c_cur, h, h)
                net.add_reorder(old, cur)
                release(old, (c_cur, h, h), old_layout)
            for main, ds in blocks:
                t, th, tc = cur, h, None
                for c, bn in main[:-1]:
                    nt, th = conv(t, th, c, bn, True)
                    if tc is not None:
                        release(t, tc)
                    t, tc = nt, (c.out_channels, th, th)
                res, cur_shape = cur, (c_cur, h, h)
                if ds is not None:
                    res, _ = conv(cur, h, ds[0], ds[1], False)
                last, last_bn = main[-1]
                # the residual add and ReLU as post-ops, written over the residual's buffer
                _, oh = conv(t, th, last, last_bn, True, dst=res, sum_=True)
                release(t, tc)
                if res != cur:
                    release(cur, cur_shape)
                cur, h, c_cur = res, oh, last.out_channels
        pooled = net.add_buffer(c_cur, 1, 1, tags[layout])  # (a fresh one: forward() returns the last buffer)
        net.add_pool(cur, pooled, False, h, 1, 0)
        fc = spec.fc  # (None: the pooled features are the result, as a backbone)
        if fc is not None:  # the classifier as oneDNN's inner product, written straight into the result
            wf = fc.weight.detach().float().contiguous()
            net.add_linear(pooled, wf, fc.bias.detach().float().contiguous() if fc.bias is not None
                           else torch.zeros(wf.shape[0]))
        net.build(n, list(x.stride()), tune_rounds if tune_rounds is not None else _tune_rounds(),
                  1 if phases is None else int(bool(phases)) * 2, 1 if winograd is None else int(bool(winograd)) * 2)
        self.tune_log = list(net.tune_log)
        self.implementations = list(net.implementations)
        slow = [i for i, impl in enumerate(self.implementations) if impl.startswith("ref")]
        if slow:  # oneDNN's reference loops: correct, but orders of magnitude slower than the model
            raise ValueError(f"oneDNN has no optimized kernel on this CPU for step {slow[0]} of the net "
                             f"({self.implementations[slow[0]]})")

    @property
    def blocked(self) -> bool:
        return BLOCKED in self.layouts

    @property
    def measured(self) -> int:
        """Read passes in the last run (the input's included): where propagated bounds got loose."""
        return self.net.last_measured

    def run(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The logits (the pooled features for a model without a classifier), or None (see the C++ net)."""
        return self.net.forward(x.contiguous())


def input_problem(x: torch.Tensor) -> Optional[str]:
    """None if a net may run this call, else why the model itself runs it (torch's modes and
    transforms and autocast: the net knows none of them). The model and the input's shape are
    checked when a net is built for it (``build``)."""
    if type(x) is not torch.Tensor or x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return "not a plain 4-d float32 CPU tensor"
    if torch._C._is_any_autocast_enabled():
        return "autocast is enabled"
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return "a torch.func transform, torch.compile or a tracer is active"
    if _fwad._current_level >= 0:
        return "forward-mode AD is active (the net computes no tangents)"
    from . import _context

    if _context.in_dispatch_mode():
        return "a dispatch mode (FakeTensorMode, make_fx, ...) is active"
    return None


# The layout of each stage's activations, as measured for oneDNN 3.2 (benchmarks/NOTES.md, "The CPU
# graph" and "The CPU graph on AVX2"). Its blocked-layout kernels (nChw16c on AVX-512, nChw8c on AVX2)
# beat its NHWC ones on large maps; on small maps its NHWC (brgconv) kernels win.
# - AVX-512 (ResNet-50 at 224, 2 cores, whole nets alone): blocked throughout from 2 x 224 x 224 input
#   pixels (batch 1 NHWC 29.2 ms vs blocked 29.3-32.2; batch 2 57.4-58.5 vs 53.4-54.3; batch 8 216.8
#   vs 204.6), and at batch 1 layers 3-4 blocked gained nothing (14.8 vs 14.6 ms).
# - AVX2 (2 cores, per conv): the 3x3 convs of layers 3-4 run 1.1-1.5x slower blocked than NHWC at
#   batch 8 and the 1x1 convs of layers 1-2 1.1-1.5x slower in NHWC, so a stage is blocked when its
#   output map has at least AVX2_STAGE_MIN_PIXELS pixels (batch x height x width): at 224x224, layers 1-2
#   from batch 2 (batch 8: 25088 and 6272 pixels; layer3 has 1568), none at batch 1.
BLOCKED_MIN_PIXELS = 2 * 224 * 224  # AVX-512: batch x height x width of the input
AVX2_STAGE_MIN_PIXELS = 4096


def choose_layouts(model: nn.Module, x: torch.Tensor, block: int) -> tuple:
    """NHWC or BLOCKED per stage for this input on a CPU whose blocked kernels use ``block`` channels
    (``CpuGraph.block``). A stage whose channels do not fill whole blocks stays NHWC."""
    spec, why = describe(model)
    if spec is None:
        raise ValueError(why)
    n, _, h, w = x.shape
    stages = _stage_channels(spec)
    sizes = []  # each stage's output map, as the net computes it
    conv1 = spec.stem[0]
    hw = out_size(h, conv1.kernel_size[0], conv1.stride[0], conv1.padding[0], 1)
    hw = out_size(hw, *spec.pool, 1)
    for blocks in spec.layers:
        for main, _ in blocks:
            for c, _ in main:
                hw = out_size(hw, c.kernel_size[0], c.stride[0], c.padding[0], 1)
        sizes.append(n * hw * hw)
    if block == 16:
        want = [n * h * w >= BLOCKED_MIN_PIXELS] * 4
    else:
        want = [px >= AVX2_STAGE_MIN_PIXELS for px in sizes]
    return tuple(BLOCKED if b and not any(c % block for c in chans) else NHWC for b, chans in zip(want, stages))


def build(model: nn.Module, x: torch.Tensor, layouts=None) -> tuple[Optional[CpuGraph], Optional[str]]:
    """(net, None) for ``model`` at x's signature, or (None, why not). layouts: per stage (None:
    ``choose_layouts``). A chosen layout oneDNN has only reference loops for on this CPU falls back to
    NHWC throughout."""
    ext, why = extension()
    if ext is None:
        return None, why
    why = unsupported(model)
    if why:
        return None, why
    chosen = layouts or choose_layouts(model, x, ext.vector_floats())
    rounds = _tune_rounds()  # (a malformed setting is the caller's error, raised)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            try:
                net = CpuGraph(ext, model, x, chosen, rounds)
            except ValueError as e:
                if layouts is not None or chosen == (NHWC,) * 4 or "optimized kernel" not in str(e):
                    raise
                net = CpuGraph(ext, model, x, (NHWC,) * 4, rounds)
    except (RuntimeError, ValueError) as e:  # e.g. an input too small for the net's pools
        return None, f"cannot build the CPU graph for this input: {str(e).splitlines()[0][:200]}"
    took = time.perf_counter() - t0
    if took > 1.0 and net.tune_log:  # a first call this much slower deserves a word
        print(f"fused_resnet: CPU graph for input {tuple(x.shape)} built in {took:.1f} s, {len(net.tune_log)} "
              "conv shapes timed (once per process; FUSED_RESNET_CPU_GRAPH_TUNE=0 skips the timing)",
              file=sys.stderr, flush=True)
    return net, None


class CpuGraphs:
    """One model's CPU nets, one per input shape (least recently used dropped past ``max_nets``),
    behind the model's whole stamp (``_model_stamp``): a change to any weight, module or refresh
    point rebuilds them on the next call. ``run(x)`` is the net's output, or None with ``status``
    saying why (the caller then runs the model). Calls from several threads are serialized: the
    nets' buffers are shared by every call."""

    def __init__(self, model: nn.Module, max_nets: int = 8, on_build=None) -> None:
        self.stamp = ModelStamp(model)
        self.on_build = on_build  # called after each net is built (blocks.ResNet: the blocks' folds)
        self.max_nets = max_nets
        self.nets: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()  # shape -> (net, why not)
        self._built_from = None  # the stamp the nets were built from
        self.status = "no CPU call yet"  # what the last call ran, or why not a net
        self.runs = 0  # calls a net answered; for tests and logs
        self._lock = threading.Lock()

    def run(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        why = input_problem(x)
        if why:
            self.status = why
            return None
        with self._lock:
            stamp = self.stamp.stamp()
            if stamp != self._built_from:
                self.nets.clear()  # they hold folds of the old weights
                self._built_from = stamp
            key = tuple(x.shape)
            entry = self.nets.get(key)
            if entry is None:
                while len(self.nets) >= self.max_nets:
                    self.nets.popitem(last=False)
                entry = self.nets[key] = build(self.stamp.model, x)  # failures kept too
                if self.on_build is not None:
                    self.on_build()
            else:
                self.nets.move_to_end(key)
            net, why = entry
            out = net.run(x) if net is not None else None
            if out is None:
                self.status = why or ("an input or weight the ReLU post-op cannot be proven exact for "
                                      "(NaN, Inf, near float32's range)")
                return None
            self.runs += 1
            self.status = "oneDNN CPU graph"
            return out


class GraphRoot:
    """Mixed into a converted ResNet (torchvision's ``blocks.ResNet``, timm's ``timm_resnet.ResNet``):
    its whole-network calls try the CPU graph first (``_cpu_graph_forward``), and it reports what the
    last one ran."""

    def _cpu_graph_forward(self, x: torch.Tensor):
        """The whole network as one oneDNN graph for a no-grad eval call on a float32 CPU tensor, or
        None (then the fused blocks run). Not when a hook on a submodule would be skipped, under
        explain() (it reports the blocks' kernels), with a backend other than auto requested, or when
        turned off (``convert(..., cpu_graph=False)``, FUSED_RESNET_CPU_GRAPH=0)."""
        if self.training or torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_scripting() \
                or type(x) is not torch.Tensor or x.device.type != "cpu":
            return None
        if not self.__dict__.get("_cpu_graph_on", True) or _trace.active() \
                or _env.get("FUSED_RESNET_CPU_GRAPH", "1") == "0":
            return None
        if self._fused_backend not in (None, "auto") or _selector.requested_backend() != "auto" \
                or extension()[0] is None:  # (not installed: no stamp or net lookup per call)
            return None
        graphs = self.__dict__.get("_cpu_graphs")
        if graphs is None:
            graphs = self.__dict__["_cpu_graphs"] = CpuGraphs(self, on_build=self._warm_folds)
        if graphs.stamp.hooked(root=False):
            graphs.status = "a forward hook inside the model (a graph would skip it)"
            return None
        return graphs.run(x)

    def _warm_folds(self) -> None:
        """Fold every converted module as an eager forward of the blocks would: torch.export and
        torch.compile after one eager forward read those folds (README, Serving)."""
        for m in self.modules():
            if isinstance(m, _FusedMixin):
                try:
                    m._folded(m._fold_pairs())
                except (ValueError, RuntimeError, AttributeError):  # not foldable: its forward says why
                    pass

    __jit_unused_properties__ = ["cpu_graph_status", "cpu_graph_runs"]

    @property
    def cpu_graph_status(self) -> str:
        """What the last eligible CPU call ran ("oneDNN CPU graph"), or why not the CPU graph."""
        graphs = self.__dict__.get("_cpu_graphs")
        return graphs.status if graphs is not None else unavailable_reason() or "no CPU graph call yet"

    @property
    def cpu_graph_runs(self) -> int:
        """Calls the CPU graph answered since the model was converted, copied or refreshed."""
        graphs = self.__dict__.get("_cpu_graphs")
        return graphs.runs if graphs is not None else 0
