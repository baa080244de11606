"""fused_resnet.optimize(model, example_input): a converted model that replays CUDA graphs, and on
the CPU runs a torchvision ResNet as one oneDNN graph.

Batch-1 inference is host-bound: without graphs a ResNet-50 forward spends more time in Python and
kernel launches than on the GPU. ``optimize`` captures one CUDA graph per input signature (shape,
dtype, device, strides) and replays it, so a forward costs one input copy and one graph launch.

Ownership and lifetime (the reason this exists instead of a recipe): a CUDA graph holds raw
pointers to every tensor it reads, the model's parameters, folded and packed weights, its static
input and its output. The returned module owns all of them: the converted model, the static
buffers and the graphs live exactly as long as it does, each graph is captured on this module's own
stream into this module's own memory pool, and nothing it captured is freed behind a graph's back.
(A graph whose model was dropped while the graph was kept is what faulted in our benchmarks: see
benchmarks/NOTES.md, "The CUDA-graph fault".)

Weights changed after capture (load_state_dict, in-place edits, parameter replacement) are
detected on the next call from the parameters' and buffers' version counters and storage, and so is
any refresh point (eval()/train() of a converted module, fused_resnet.refresh(), after writes through
.data); the graphs are then dropped and captured again (warm-up included), so a forward never runs on stale
weights. Each input signature (shape, strides, dtype, device) gets its own graph; training mode runs
the converted model directly, under torch.no_grad(): this module is for inference only.

On the CPU (float32), a torchvision ResNet runs as a CPU graph (``_cpu_graph``: oneDNN primitives
called from C++, one net per input shape) when the onednn-cpu-gomp wheel is installed; the same
stamp rebuilds the nets after a weight change. Everything the net cannot take (another model, a
mode, autocast, an input whose ReLU post-op it cannot prove exact, such as one holding NaN) runs
the converted model, and ``cpu_graph_status`` says why.

While any module of the model (or a global hook) has a forward hook, calls run the model itself, so
the hooks fire. Calls from several threads are serialized; on a GPU each waits for the previous
replay before overwriting the static input.
"""
from __future__ import annotations

import collections
import contextlib
import threading
from typing import NamedTuple, Optional

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from . import _cpu_graph, folding
from ._fused import _GLOBAL_HOOKS, _FusedMixin
from .swap import convert


class _Structure(NamedTuple):
    """The model's modules as the replay checks read them (rebuilt when structure_epoch() moves)."""

    epoch: int
    tensor_dicts: tuple  # every module's _parameters and _buffers
    modules: tuple  # (id, type) of every module: a replaced module (even one without tensors) shows
    attrs: tuple  # (conv instance dicts, BN instance dicts): geometry, eps, BN mode (folding.stamp)
    hooks: tuple  # every module's forward and pre-hook dicts
    fused: tuple  # the converted modules (their refresh counters)
    containers: tuple  # every module's _modules dict: Sequential.insert/pop/del edit these without a
    lens: tuple  # registration hook, so their lengths are compared on every call


@contextlib.contextmanager
def _normal_no_grad():
    """no_grad with inference mode off, also inside torch.inference_mode(): the graph's static input
    and output are then normal tensors, so later calls may copy into them and callers may use the
    output whether or not they run under inference mode (an inference tensor refuses in-place writes
    outside it: the first GPU run found optimize(model, example) failing on the next plain call)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


class _Graph(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class OptimizedModel(nn.Module):
    """What ``fused_resnet.optimize`` returns; call it like the model (see ``optimize``)."""

    def __init__(self, model: nn.Module, *, cuda_graphs: bool = True, max_graphs: int = 8,
                 copy_output: bool = False, warmup: int = 3, cpu_graph: bool = True) -> None:
        super().__init__()
        self.model = model  # a registered submodule: .to(), state_dict(), parameters() reach it
        self.cuda_graphs = cuda_graphs
        self.cpu_graph = cpu_graph
        self._cpu_nets: "collections.OrderedDict[tuple, object]" = collections.OrderedDict()  # LRU order
        self._cpu_stamp = None  # of the weights the CPU nets were built from
        self.cpu_graph_status = "no CPU call yet"  # what the last CPU call ran, or why not the CPU graph
        self.cpu_graph_runs = 0  # CPU forwards the CPU graph answered; for tests and logs
        self.max_graphs = max_graphs
        self.copy_output = copy_output
        self.warmup = warmup
        self._graphs: "collections.OrderedDict[tuple, _Graph]" = collections.OrderedDict()  # LRU order
        self._pool = None
        self._stream = None
        self._stamp = None  # of the weights the graphs were captured with
        self._dicts = None  # (structure epoch, every module's _parameters and _buffers dicts)
        self._lock = threading.Lock()  # replays share static buffers: one at a time
        self._done = None  # CUDA event recorded after the last replay
        self.captures = 0  # graphs captured so far (re-captures included); for tests and logs

    def _structure(self) -> _Structure:
        """What the stamp reads, collected again whenever structure_epoch() moved."""
        epoch = folding.structure_epoch()
        if self._dicts is None or self._dicts.epoch != epoch \
                or tuple(map(len, self._dicts.containers)) != self._dicts.lens:
            mods = tuple(self.model.modules())
            containers = tuple(m._modules for m in mods)
            convs = tuple(m for m in mods if type(m) is nn.Conv2d)
            bns = tuple(m for m in mods if isinstance(m, nn.BatchNorm2d) or type(m) is FrozenBatchNorm2d)
            self._dicts = _Structure(
                epoch, tuple(d for m in mods for d in (m._parameters, m._buffers)),
                tuple((id(m), type(m)) for m in mods), (tuple(map(vars, convs)), tuple(map(vars, bns))),
                tuple(d for m in mods for d in (m._forward_hooks, m._forward_pre_hooks)),
                tuple(m for m in mods if isinstance(m, _FusedMixin)), containers, tuple(map(len, containers)))
        return self._dicts

    def _weights_stamp(self) -> tuple:
        """Changes when anything the captured graphs baked in changes: a parameter or buffer edited in
        place, replaced (also by functional_call, which writes the modules' dicts directly: the tensors
        are read out of them each call) or moved; a module replaced; a conv's geometry or a BN's eps or
        mode; a refresh point of a converted module (eval()/train(), fused_resnet.refresh())."""
        st = self._structure()
        tensors = folding.sources_of(st.tensor_dicts)
        # Not the epoch itself: it moves whenever any module anywhere registers a parameter (building
        # an unrelated model), which must not re-capture these graphs; identities catch replacements.
        return (tuple(map(id, tensors)), folding.stamp(tensors, (), st.attrs), st.modules,
                sum(m.__dict__.get("_refreshes", 0) for m in st.fused))

    def _hooked(self) -> bool:
        """A forward hook anywhere in the model (or a global one): a graph replay would skip it."""
        return any(self._structure().hooks) or any(_GLOBAL_HOOKS[:2])

    def train(self, mode: bool = True):
        """eval()/train() are refresh points (as for converted modules): the graphs are captured again."""
        if self.__dict__.get("_graphs"):
            self.drop_graphs()
        return super().train(mode)

    def __getstate__(self):
        # A copy (deepcopy, pickle, Ray) owns its model copy and captures its own graphs on first use.
        state = dict(super().__getstate__())
        state.update(_graphs=collections.OrderedDict(), _pool=None, _stream=None, _stamp=None, _dicts=None,
                     _lock=None, _done=None, captures=0, _cpu_nets=collections.OrderedDict(), _cpu_stamp=None,
                     cpu_graph_runs=0)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (inference only: no autograd graph is recorded)."""
        # hooks fire only in a real forward: run one
        if isinstance(x, torch.Tensor) and not self.model.training and not self._hooked():
            if self.cuda_graphs and x.is_cuda:
                return self._replay(x)
            if self.cpu_graph and x.device.type == "cpu":
                out = self._cpu_graph_forward(x)
                if out is not None:
                    return out
        with torch.no_grad():
            return self.model(x)

    def _cpu_graph_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The CPU graph's output for x (fused_resnet/_cpu_graph.py), or None: then the model runs,
        and ``cpu_graph_status`` says why."""
        why = _cpu_graph.input_problem(x)
        if why:
            self.cpu_graph_status = why
            return None
        with self._lock:  # the nets' buffers are shared by every call
            stamp = self._weights_stamp()
            if stamp != self._cpu_stamp:
                self._cpu_nets.clear()  # they hold folds of the old weights
                self._cpu_stamp = stamp
            key = tuple(x.shape)
            entry = self._cpu_nets.get(key)
            if entry is None:
                while len(self._cpu_nets) >= self.max_graphs:
                    self._cpu_nets.popitem(last=False)
                entry = self._cpu_nets[key] = _cpu_graph.build(self.model, x)  # (net, why not); failures kept too
            else:
                self._cpu_nets.move_to_end(key)
            net, why = entry
            out = net.run(x) if net is not None else None
            if out is None:
                self.cpu_graph_status = why or "an input or weight the ReLU post-op cannot be proven exact for (NaN, Inf, near float32's range)"
                return None
            self.cpu_graph_runs += 1
            self.cpu_graph_status = "oneDNN CPU graph"
            return out

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            stamp = self._weights_stamp()
            if stamp != self._stamp:
                self.drop_graphs()
            key = (tuple(x.shape), x.stride(), x.dtype, x.device)
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(x, key)
                self._stamp = self._weights_stamp()  # after warm-up: refolds are done
            else:
                self._graphs.move_to_end(key)
            stream = torch.cuda.current_stream(x.device)
            if self._done is not None:
                stream.wait_event(self._done)  # the last replay (maybe another thread's stream) is done with the buffers
            entry.static_input.copy_(x)
            entry.graph.replay()
            out = entry.static_output.clone() if self.copy_output else entry.static_output
            self._done = torch.cuda.Event()
            self._done.record(stream)
            return out

    def _capture(self, x: torch.Tensor, key: tuple) -> _Graph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = torch.cuda.Stream(device=x.device)
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)  # least recently used shape
        with _normal_no_grad():
            static_input = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
            static_input.copy_(x)
        graph, static_output = capture(self.model, static_input, warmup=self.warmup, pool=self._pool,
                                       stream=self._stream, mode=_normal_no_grad)
        entry = _Graph(graph, static_input, static_output)
        self._graphs[key] = entry
        self.captures += 1
        return entry

    def _fused_resnet_refresh(self) -> None:
        """fused_resnet.refresh(): the graphs read the old folds; capture again."""
        self.drop_graphs()

    def drop_graphs(self) -> None:
        """Release every captured graph and CPU net (the next call of each shape builds again)."""
        if self._graphs:
            torch.cuda.synchronize()  # replays may still run on callers' streams
        self._graphs.clear()
        self._stamp = None
        self._cpu_nets.clear()
        self._cpu_stamp = None

    def graph_shapes(self) -> list:
        """Input shapes with a captured graph, least recently used first."""
        return [k[0] for k in self._graphs]


def capture(fn, static_input: torch.Tensor, *, warmup: int = 3, pool=None, stream=None,
            mode=torch.inference_mode) -> tuple:
    """(CUDA graph, static output) of ``fn(static_input)``: the one capture routine (OptimizedModel
    and the benchmark's --cuda-graphs use it). Warm-up runs on the capture stream first, so fold
    caches, packed weights, launch plans, Triton compiles and cuDNN plans exist and the capture
    records kernels only. The graph holds raw pointers into static_input, the output and everything
    ``fn`` reads: the caller keeps them alive as long as the graph. ``mode``: the grad mode context."""
    stream = stream if stream is not None else torch.cuda.Stream(device=static_input.device)
    stream.wait_stream(torch.cuda.current_stream(static_input.device))
    with torch.cuda.stream(stream), mode():
        for _ in range(warmup):
            fn(static_input)
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with mode(), torch.cuda.graph(graph, pool=pool, stream=stream):
        static_output = fn(static_input)
    torch.cuda.current_stream(static_input.device).wait_stream(stream)
    return graph, static_output


def optimize(model: nn.Module, example_input: Optional[torch.Tensor] = None, *, cuda_graphs: bool = True,
             max_graphs: int = 8, copy_output: bool = False, cpu_graph: bool = True) -> OptimizedModel:
    """Convert ``model`` (if needed), put it in eval mode and return a module that owns it and, on
    CUDA, replays one captured CUDA graph per input signature; on the CPU a torchvision ResNet runs
    as one oneDNN graph per input shape where it can (see the module's docstring).

    Args:
        model: a torchvision/timm ResNet (or any module containing their blocks), on its device and
            in its dtype already. It is converted in place and kept by the returned module; keep
            using the returned module, not ``model``, for inference.
        example_input: if given (a CUDA tensor), its graph is captured now rather than on the first
            call; on CPU it is only run once.
        cuda_graphs: False gives the plain converted model's behaviour (still one owner object).
        max_graphs: how many input signatures keep a graph; the least recently used is released
            when a new shape arrives (batch sizes map to graphs one to one: pad your batches to a
            few sizes if they vary a lot).
        copy_output: the returned tensor is this module's static output buffer, overwritten by the
            next call with the same input shape; True returns a copy instead (one extra pass).
        cpu_graph: False runs CPU inputs through the converted model (as FUSED_RESNET_CPU_GRAPH=0).
    Returns:
        an ``OptimizedModel``. Weights changed after capture are detected on the next call and the
        graphs (or CPU nets) are built again. Training mode runs the converted model directly
        (under torch.no_grad(): inference only).
    """
    convert(model)
    model.eval()
    opt = OptimizedModel(model, cuda_graphs=cuda_graphs, max_graphs=max_graphs, copy_output=copy_output,
                         cpu_graph=cpu_graph)
    if example_input is not None:
        with torch.inference_mode():
            opt(example_input)
    return opt
