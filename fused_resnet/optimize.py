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

On the CPU the converted model runs as it does without optimize(): a converted torchvision ResNet
takes a float32 no-grad eval call as one oneDNN graph where it can (``_cpu_graph``, behind the same
kind of whole-model stamp); ``cpu_graph_status`` says what the last CPU call ran, or why not the graph.

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

from ._fused import _FusedMixin
from ._model_stamp import ModelStamp
from .swap import convert


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
        for m in model.modules():  # (the converted ResNets read it: blocks.ResNet._cpu_graph_forward)
            if isinstance(m, _FusedMixin):
                m.__dict__["_cpu_graph_on"] = cpu_graph
        self.max_graphs = max_graphs
        self.copy_output = copy_output
        self.warmup = warmup
        self._graphs: "collections.OrderedDict[tuple, _Graph]" = collections.OrderedDict()  # LRU order
        self._pool = None
        self._stream = None
        self._stamp = None  # of the weights the graphs were captured with
        self._stamper: Optional[ModelStamp] = None  # the model's stamp and hook check (_model_stamp)
        self._lock = threading.Lock()  # replays share static buffers: one at a time
        self._done = None  # CUDA event recorded after the last replay
        self.captures = 0  # graphs captured so far (re-captures included); for tests and logs

    def _model_stamp(self) -> ModelStamp:
        if self._stamper is None:
            self._stamper = ModelStamp(self.model)
        return self._stamper

    def _weights_stamp(self) -> tuple:
        """Changes when anything the captured graphs baked in changes (``_model_stamp``)."""
        return self._model_stamp().stamp()

    def _hooked(self) -> bool:
        """A forward hook anywhere in the model (or a global one): a graph replay would skip it."""
        return self._model_stamp().hooked()

    @property
    def cpu_graph_status(self) -> str:
        """What the last CPU call ran ("oneDNN CPU graph"), or why not the CPU graph."""
        status = getattr(type(self.model), "cpu_graph_status", None)
        if status is None:
            return f"{type(self.model).__name__} is not a converted torchvision ResNet"
        return self.model.cpu_graph_status if self.cpu_graph else "cpu_graph=False"

    @property
    def cpu_graph_runs(self) -> int:
        """CPU calls the CPU graph answered."""
        return self.model.cpu_graph_runs if hasattr(type(self.model), "cpu_graph_runs") else 0

    def train(self, mode: bool = True):
        """eval()/train() are refresh points (as for converted modules): the graphs are captured again."""
        if self.__dict__.get("_graphs"):
            self.drop_graphs()
        return super().train(mode)

    def __getstate__(self):
        # A copy (deepcopy, pickle, Ray) owns its model copy and captures its own graphs on first use.
        state = dict(super().__getstate__())
        state.update(_graphs=collections.OrderedDict(), _pool=None, _stream=None, _stamp=None, _stamper=None,
                     _lock=None, _done=None, captures=0)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x`` (inference only: no autograd graph is recorded)."""
        # hooks fire only in a real forward: run one
        if isinstance(x, torch.Tensor) and self.cuda_graphs and x.is_cuda and not self.model.training \
                and not self._hooked():
            return self._replay(x)
        with torch.no_grad():  # (on the CPU a converted ResNet's own CPU graph takes what it can)
            return self.model(x)

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
        for m in self.model.modules():
            m.__dict__.pop("_cpu_graphs", None)

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
        cpu_graph: False keeps the converted ResNet's CPU calls off its CPU graph (its fused blocks run
            them, as with ``convert(..., cpu_graph=False)``).
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
