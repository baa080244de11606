"""fused_resnet.optimize(model, example_input): a converted model that replays CUDA graphs.

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
weights. Each input signature (shape, strides, dtype, device) gets its own graph; CPU inputs and
training mode run the converted model directly, under torch.no_grad(): this module is for
inference only. While any module of the model (or a global hook) has a forward hook, calls run the
model itself, so the hooks fire. Calls from several threads are serialized, and each waits on the GPU for the
previous replay before overwriting the static input.
"""
from __future__ import annotations

import collections
import threading
from typing import NamedTuple, Optional

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from . import folding
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


class _Graph(NamedTuple):
    graph: "torch.cuda.CUDAGraph"
    static_input: torch.Tensor
    static_output: torch.Tensor


class OptimizedModel(nn.Module):
    """What ``fused_resnet.optimize`` returns; call it like the model (see ``optimize``)."""

    def __init__(self, model: nn.Module, *, cuda_graphs: bool = True, max_graphs: int = 8,
                 copy_output: bool = False, warmup: int = 3) -> None:
        super().__init__()
        self.model = model  # a registered submodule: .to(), state_dict(), parameters() reach it
        self.cuda_graphs = cuda_graphs
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
        if self._dicts is None or self._dicts.epoch != epoch:
            mods = tuple(self.model.modules())
            convs = tuple(m for m in mods if type(m) is nn.Conv2d)
            bns = tuple(m for m in mods if isinstance(m, nn.BatchNorm2d) or type(m) is FrozenBatchNorm2d)
            self._dicts = _Structure(
                epoch, tuple(d for m in mods for d in (m._parameters, m._buffers)),
                tuple((id(m), type(m)) for m in mods), (tuple(map(vars, convs)), tuple(map(vars, bns))),
                tuple(d for m in mods for d in (m._forward_hooks, m._forward_pre_hooks)),
                tuple(m for m in mods if isinstance(m, _FusedMixin)))
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
                     _lock=None, _done=None, captures=0)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (inference only: no autograd graph is recorded)."""
        if not (self.cuda_graphs and isinstance(x, torch.Tensor) and x.is_cuda) or self.model.training \
                or self._hooked():  # hooks fire only in a real forward: run one
            with torch.no_grad():
                return self.model(x)
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
        static_input = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_input.copy_(x)
        graph, static_output = capture(self.model, static_input, warmup=self.warmup, pool=self._pool,
                                       stream=self._stream)
        entry = _Graph(graph, static_input, static_output)
        self._graphs[key] = entry
        self.captures += 1
        return entry

    def _fused_resnet_refresh(self) -> None:
        """fused_resnet.refresh(): the graphs read the old folds; capture again."""
        self.drop_graphs()

    def drop_graphs(self) -> None:
        """Release every captured graph (the next call of each shape captures again)."""
        if self._graphs:
            torch.cuda.synchronize()  # replays may still run on callers' streams
        self._graphs.clear()
        self._stamp = None

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
             max_graphs: int = 8, copy_output: bool = False) -> OptimizedModel:
    """Convert ``model`` (if needed), put it in eval mode and return a module that owns it and, on
    CUDA, replays one captured CUDA graph per input signature.

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
    Returns:
        an ``OptimizedModel``. Weights changed after capture are detected on the next call and the
        graphs are captured again. CPU inputs and training mode run the converted model directly
        (under torch.no_grad(): inference only).
    """
    convert(model)
    model.eval()
    opt = OptimizedModel(model, cuda_graphs=cuda_graphs, max_graphs=max_graphs, copy_output=copy_output)
    if example_input is not None:
        with torch.inference_mode():
            opt(example_input)
    return opt
