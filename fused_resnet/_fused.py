"""The machinery every fused module shares: which (conv, BN) pairs fold, the fold cache, launch plans,
the invalidation checks of the hot path, the reference-forward fallback, hooks. The model-specific
classes (torchvision's in blocks.py, timm's in timm_resnet.py) say which convs their forward runs.
"""
from __future__ import annotations

import types
from typing import Iterator, NamedTuple, Optional

import torch
import torch.autograd.forward_ad as _fwad
from torch import nn

from . import _autocast, _context, _finite, _hooks, _selector, _spare, _trace, folding
from ._hooks import GLOBAL_HOOKS as _GLOBAL_HOOKS, has_hooks as _has_hooks, hook_dicts as _hook_dicts  # noqa: F401
from ._geometry import memory_format_of, suggests_channels_last
from .folding import FoldCache, FoldedConv, attr_dicts, fold_conv_bn, source_slots, structure_epoch, tensor_dicts
from .folding import downsample_pair as _downsample_pair, foldable as _foldable  # noqa: F401 (blocks, timm)
from .ops.fused_conv2d import fused_conv2d, plan_conv

CL = torch.channels_last
_functorch_active = torch._C._are_functorch_transforms_active
_any_autocast = torch._C._is_any_autocast_enabled


def _input_problem(x: torch.Tensor, conv: nn.Conv2d, amp: Optional[torch.dtype] = None) -> Optional[str]:
    """Why torchvision's forward must take input x (its result or its error), or None. ``amp``: the
    autocast dtype of this forward (x and the weight are cast to it)."""
    if x.dim() != 4:
        return f"{x.dim()}D input"
    if x.shape[1] != conv.in_channels:
        return f"input has {x.shape[1]} channels, expected {conv.in_channels}"
    if amp is not None:
        if not _autocast.castable(conv.weight):
            return f"weight dtype {conv.weight.dtype} under autocast"
    elif x.dtype != conv.weight.dtype:
        return f"input dtype {x.dtype} != weight dtype {conv.weight.dtype}"
    if x.device != conv.weight.device:
        return f"input on {x.device}, weight on {conv.weight.device}"
    if x.numel() == 0:
        return "empty input"
    return None


def _conv(x, fc: FoldedConv, name: str, backend, steps, residual=None, relu=True, into_residual=False):
    """One fused conv of a block: the next launch when replaying a plan; when recording one, the
    launch the planning seam (ops.fused_conv2d.plan_conv) gives, kept in ``steps.record``; else (autograd,
    torch.compile, explain, dispatch modes) the op itself."""
    if steps.replay is not None:
        return next(steps.replay).run(x, residual)
    _trace.set_conv(name)
    if steps.record is None or (residual is not None and residual.requires_grad and torch.is_grad_enabled()):
        # (A residual that needs gradients, e.g. from a downsample that does not fold and trains:
        # the op runs the differentiable reference, and this call is not kept as a plan.)
        if steps.record is not None:
            steps.record.append(None)
        return fused_conv2d(x, fc.weight, fc.bias, stride=fc.stride, padding=fc.padding, dilation=fc.dilation,
                            groups=fc.groups, residual=residual, relu=relu, backend=backend,
                            _into_residual=into_residual)
    launch = plan_conv(x, fc.weight, fc.bias, fc.stride, fc.padding, fc.dilation, fc.groups, residual, relu,
                       backend if backend is not None else steps.ambient, into_residual)
    steps.record.append(launch)
    return launch.run(x, residual)


class _Steps(NamedTuple):
    """How a block's convs run in this call: replay a plan's launches, or resolve each (and record
    the launches into ``record`` when a plan is being built)."""

    replay: Optional[Iterator]
    record: Optional[list]
    n: int  # convs this block runs fused (the downsample's is last, when it is fused)
    ambient: Optional[str] = None  # the requested backend of this forward (use_backend / env), for children
    amp: Optional[torch.dtype] = None  # the autocast dtype of this forward (_autocast), for children


class _Hot(NamedTuple):
    """What a block's hot path re-reads only when structure_epoch() moved (module attributes are
    slow); the tensors and hooks themselves are read out of these dicts on every call."""

    epoch: int
    pairs: tuple  # ((conv, bn), ...) as _fold_pairs() returns them
    slots: tuple  # where every tensor of every conv and BN sits (folding.source_slots): read each call
    attrs: tuple  # the convs' and BNs' instance dicts (folding.attr_dicts): geometry and eps, read each call
    hook_dicts: tuple  # hook dicts of every module the fused path does not call (_skipped_modules)
    fusable: bool  # the activation is nn.ReLU and every pair folds (else the slow path says why not)
    containers: tuple  # the _modules dicts of the skipped containers (the downsample Sequential)
    lens: list  # their lengths: Sequential.insert/pop/del edit _modules without a registration hook
    modules: tuple  # the skipped modules themselves: the tree the recorded launch plans were made for


class _Plan(NamedTuple):
    generation: int  # the fold cache generation the launches were built from
    launches: tuple  # fused_resnet.ops.fused_conv2d.Launch per conv, in call order
    layout: tuple  # (memory format to return, input is channels_last) for inputs of this key


_MAX_PLANS = 16  # input signatures kept per module, least recently used evicted first
# Derived state: a cache of the parameters, never copied or pickled with the module (a copy refolds).
_DERIVED = ("_fold_cache", "_plans", "_hot", "_hot_parts", "_cpu_graphs")  # (_hot_parts: timm's, _cpu_graphs: blocks.ResNet)


def _refresh_after_load(module, _incompatible_keys) -> None:
    # Forced: parameters created under torch.inference_mode() have no version counter, so a copy
    # into them would not change the stamp.
    module._refresh_folds(force=True)


def _alias(fn, name: str):
    """``fn`` under another name, so TorchScript compiles it as a method of that name (it compiles
    a method called from forward under the function's own __name__; torchvision's is "forward")."""
    alias = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    alias.__qualname__ = name
    return alias


class _FusedMixin:
    """Shared machinery: which (conv, bn) pairs to fold, the fold cache, launch plans, the fallback.

    The invalidation model (ARCHITECTURE.md): derived state (folded weights, packed layouts, launch
    plans) depends on every tensor of every folded conv and BN, the conv geometry and BN eps, the
    modules' classes and train/eval flags, and the hooks of every module the fused path does not
    call. On every eval call the hot path re-reads the tensors (out of the modules' own dicts) and
    compares their versions, storage pointers, geometry and eps with the fold's stamp; a hook on a
    skipped module or a global module hook sends the call to the reference forward, so the hook
    fires. Module structure (which modules, their classes) is re-read when structure_epoch() moves.
    PyTorch gives writes through ``.data`` no signal: ``eval()``/``train()`` and
    ``fused_resnet.refresh(model)`` refold everything. Copies (deepcopy, pickle, torch.load) carry no
    derived state.

    Launch plans: the first eval call with a given input signature (shape, strides, dtype, device,
    requested backend, donation, inference mode, autocast dtype) resolves every conv as the op does (validation,
    backend choice, tuned config, packed weights) and keeps the resulting launches; later calls with
    that signature whose stamp is unchanged run the launches."""

    _fused_backend = None  # set by convert(backend=...): None or a backend name
    # TorchScript scripts the reference forward (see forward()); these attributes are not part of it.
    __jit_ignored_attributes__ = ["_fused_backend"]

    def _fold_pairs(self) -> list:
        raise NotImplementedError

    def _activations(self) -> tuple:
        """The activation modules the fused path replaces by the epilogue's ReLU."""
        return (self.relu,)

    def _skipped_modules(self) -> tuple:
        """The submodules whose forward the fused path replaces (their hooks would not fire)."""
        return tuple(self.modules())[1:]

    def _keep_hook_dicts(self, skipped: Optional[tuple] = None) -> None:
        """Keep the skipped modules' hook dicts for _hook_problem under torch.compile (_hooks.keep):
        by convert() and when the hot path re-reads the structure (plain eager calls only: torch.export's
        non-strict tracer runs the forward on stand-ins for the modules)."""
        self.__dict__["_hook_refs"] = _hooks.keep(self._skipped_modules() if skipped is None else skipped)

    def _hook_problem(self) -> Optional[str]:
        skipped = self._skipped_modules()
        if _hooks.none_fire(skipped, self.__dict__.get("_hook_refs")):
            return None
        if _trace.user_hooks(_GLOBAL_HOOKS):
            return "eager: a global module hook is registered (reference forward, so it fires)"
        for m in skipped:
            if _trace.user_hooks(_hook_dicts(m)):
                name = next((n for n, sub in self.named_modules() if sub is m), type(m).__name__)
                return f"eager: hook on {name} (reference forward, so it fires)"
        return None

    def _main_convs(self) -> tuple:
        """The convs between the module's input and its returned activation (not a downsample's):
        torch's conv returns channels_last when its input or its weight is, so they decide the memory
        format torchvision returns (_out_format). Empty for modules returning logits."""
        return ()

    def _out_format(self, x) -> torch.memory_format:
        """The memory format torchvision's forward returns for input x: x's, or channels_last when a
        conv weight on the way suggests it (PyTorch's rule: input or weight channels_last)."""
        fmt = memory_format_of(x)
        if fmt is not CL:
            for c in self._main_convs():  # (a contiguous weight never suggests channels_last)
                if not c.weight.is_contiguous() and suggests_channels_last(c.weight):
                    return CL
        return fmt

    def _fusion_problem(self, x, pairs: Optional[tuple] = None, fusable: bool = False,
                        amp: Optional[torch.dtype] = None) -> Optional[str]:
        """None if this call can take the fused path, else the reason for torchvision's forward.
        ``pairs``: _fold_pairs() if the caller has them; ``fusable``: the caller's current structure
        (_Hot) found the activations ReLU and every pair foldable; ``amp``: the autocast dtype."""
        if self.training:
            return "eager: training mode"
        if not fusable:
            for act in self._activations():
                if type(act) is not nn.ReLU:
                    return f"eager: activation {type(act).__name__} is not ReLU"
        if pairs is None:
            pairs = self._fold_pairs()
        for conv, bn in pairs:
            why = None if fusable else _foldable(conv, bn)
            if why:
                return f"eager: {why}"
            if bn.training:
                return "eager: a BatchNorm inside is in training mode"
        why = self._hook_problem()
        if why:
            return why
        why = _input_problem(x, pairs[0][0], amp)
        return f"eager: {why} (torchvision's forward)" if why else None

    def __getstate__(self):
        # deepcopy, pickle, torch.save and cloudpickle: the copy refolds from its own parameters.
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in _DERIVED}

    def train(self, mode: bool = True):
        # eval() and train() are refresh points: everything is refolded on the next call, which also
        # catches writes through .data (no version bump, nothing else can see them).
        self._drop_plans()
        cache = self.__dict__.get("_fold_cache")
        if cache is not None:
            cache.invalidate()
        self._mark_refreshed()
        return super().train(mode)

    def _fused_resnet_refresh(self) -> None:
        """fused_resnet.refresh(): refold now, drop the plans."""
        self._refresh_folds(force=True)

    def _mark_refreshed(self) -> None:
        """Count a refresh point of this module (optimize() re-captures its graphs after one)."""
        self.__dict__["_refreshes"] = self.__dict__.get("_refreshes", 0) + 1

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half()/.cuda(): refold now, into new tensors of the new dtype/device, so a graph
        # compiled afterwards reads folds that match its parameters.
        out = super()._apply(fn, *args, **kwargs)
        self._drop_plans()
        self._refresh_folds()
        return out

    def _refresh_folds(self, force: bool = False) -> None:
        cache = self.__dict__.get("_fold_cache")
        self._drop_plans()
        if force:
            self._mark_refreshed()
        if cache is not None:
            if force:
                cache.invalidate()
            try:
                cache.refresh(self._fold_pairs())
            except (ValueError, RuntimeError, AttributeError):  # no longer foldable: the next forward says why
                self.__dict__.pop("_fold_cache", None)

    def _folded(self, pairs: list) -> tuple:
        """Folded convs: cached on the hot path, differentiable when autograd records a graph.

        Under torch.compile / torch.export the cached folded tensors are read as graph inputs (no
        per-call fold in the graph); a small op refreshes them in place if a parameter changed
        (export takes them as constants). A module never run eagerly before compiling has no cache
        yet: its graph folds per call (correct, slower)."""
        if torch.is_grad_enabled() and any(
                t is not None and t.requires_grad for c, b in pairs for t in (c.weight, c.bias, b.weight, b.bias)):
            return tuple(fold_conv_bn(c, b) for c, b in pairs)
        cache = self.__dict__.get("_fold_cache")
        if _context.dispatch_mode_flag() and not torch.compiler.is_compiling():
            with torch.no_grad():  # a dispatch mode (FlopCounterMode, ...): folds for this call only, never cached
                return tuple(fold_conv_bn(c, b) for c, b in pairs)
        if torch.compiler.is_compiling():
            if cache is None or not cache.matches(pairs):
                return tuple(fold_conv_bn(c, b) for c, b in pairs)
            if _context.exporting():
                if cache.stale():
                    raise RuntimeError(
                        "fused_resnet: a parameter, BN statistic or conv attribute changed after the folded "
                        "weights were last computed; run the model once in eager mode, or call "
                        "fused_resnet.refresh(model), before torch.export, so the exported program holds the "
                        "current folds")
            else:
                torch.ops.fused_resnet._refresh_folds([t for f in cache.value for t in (f.weight, f.bias)],
                                                      cache.handle)
            # The geometry as the graph reads it from the modules: the compiler guards on it, so an
            # edited stride/padding recompiles instead of running the graph traced with the old one.
            return tuple(f._replace(stride=tuple(c.stride), padding=tuple(c.padding), dilation=tuple(c.dilation),
                                    groups=c.groups) for f, (c, _) in zip(cache.value, pairs))
        if cache is None:
            cache = self.__dict__["_fold_cache"] = FoldCache()
            self._ensure_load_hook()
        return cache.refresh(pairs)

    def _ensure_load_hook(self) -> None:
        """load_state_dict refreshes this module (also called for a whole-model graph: _model_stamp)."""
        if not self.__dict__.get("_load_hook"):
            self.register_load_state_dict_post_hook(_refresh_after_load)
            self.__dict__["_load_hook"] = True

    def _drop_plans(self) -> None:
        """Launch plans and the hot state (and a ResNet's CPU graphs): rebuilt on the next call."""
        for key in ("_plans", "_hot", "_cpu_graphs"):
            self.__dict__.pop(key, None)

    def _hot_state(self, rebuild: bool = False) -> _Hot:
        folding.install_epoch_hooks()  # (a module unpickled in a new process was never convert()ed there)
        hot = old = self.__dict__.get("_hot")
        if rebuild or hot is None or hot.epoch != structure_epoch():
            pairs = tuple(self._fold_pairs())
            ok = not [a for a in self._activations() if type(a) is not nn.ReLU] \
                and not [p for p in pairs if _foldable(*p) is not None]
            skipped = self._skipped_modules()
            # Forward and pre-hooks only: a planned call records no autograd graph, where backward
            # hooks would not fire in the reference forward either (the slow path checks them all).
            hooks = tuple([d for m in skipped for d in (m._forward_hooks, m._forward_pre_hooks)]) + _GLOBAL_HOOKS[:2]
            # The skipped containers (the downsample Sequential): their edits without a registration
            # hook (insert, del, pop) change what folds. (The block's own _modules change through
            # setattr, which bumps the epoch.)
            containers = tuple([m._modules for m in skipped if m._modules])
            hot = self.__dict__["_hot"] = _Hot(structure_epoch(), pairs, source_slots(tensor_dicts(pairs)),
                                               attr_dicts(pairs), hooks, ok, containers,
                                               list(map(len, containers)), tuple(skipped))
            if old is not None and list(map(id, old.modules)) != list(map(id, hot.modules)):
                self.__dict__.pop("_plans", None)  # a new module tree (timm's se set): its launches may differ
            self._keep_hook_dicts(skipped)
        return hot

    def _plan(self, x, donate: bool, ambient: str, amp: Optional[torch.dtype] = None) -> tuple:
        """(plan, key): the launch plan valid for this call, or (None, key to record one under), or
        (None, None) when this call is not planned (training, explain(), torch.compile, autograd,
        tracing, dispatch modes, hooks)."""
        # (Flag reads inlined: this runs once per fused module per forward; see benchmarks/NOTES.md.)
        if self.training or _trace._records is not None or torch.compiler.is_compiling() \
                or _context.dispatch_mode_flag():
            return None, None
        hot = self.__dict__.get("_hot")
        if hot is None or hot.epoch != folding._EPOCH[0] or list(map(len, hot.containers)) != hot.lens:
            hot = self._hot_state(rebuild=True)
        if not hot.fusable or any(hot.hook_dicts):
            return None, None
        try:
            sources = list(map(dict.__getitem__, *hot.slots))  # the tensors in their slots now (C-level)
        except KeyError:  # a tensor was deleted from its module since the structure was read
            self.__dict__.pop("_hot", None)
            return None, None
        if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in sources)):
            return None, None  # autograd records: the differentiable path (gradients for x too)
        # (A BN switched to training mode changes the stamp: the slow path then says why not.)
        backend = self._fused_backend if self._fused_backend is not None else ambient
        key = (x.shape, x.stride(), x.dtype, x.device, backend, donate, torch.is_inference_mode_enabled(),
               x.is_inference(), amp)
        cache = self.__dict__.get("_fold_cache")
        plans = self.__dict__.get("_plans")
        if cache is None or plans is None:
            return None, key
        try:
            current = hot.pairs == cache.pairs and folding.stamp(sources, hot.pairs, hot.attrs) == cache.stamp
        except (AttributeError, RuntimeError, KeyError):  # a slot emptied (None), an attribute deleted
            current = False
        if not current:
            # Something the folds depend on changed: the slow path re-validates (geometry, padding
            # mode, ...) and refolds, which bumps the generation; the plan is then rebuilt, and the
            # structure re-read.
            self.__dict__.pop("_hot", None)
            return None, key
        plan = plans.get(key)
        if plan is not None and plan.generation == cache.generation:
            if len(plans) > 1:  # most recently used last: eviction takes the first
                plans[key] = plans.pop(key, plan)  # (default: another thread may have moved it)
            return plan, key
        return None, key

    def _run_planned(self, x, donate: bool, body, untraced: bool = False, ambient: Optional[str] = None,
                     amp: Optional[torch.dtype] = None):
        """Run ``body(x, donate, fmt, folded, steps)`` through a launch plan (see the class docstring):
        x in channels_last (donate: whether it may be written over), fmt the memory format to return.
        ``untraced``/``ambient``/``amp``: the caller is a fused parent's forward, which already checked
        for tracers and modes and read the requested backend (use_backend() / FUSED_RESNET_BACKEND)
        and the autocast dtype (_autocast.conv_dtype) for this forward."""
        if not untraced:
            # First: under torch.fx, x is a Proxy that no check may touch; torch.jit.trace records the reference.
            if not isinstance(x, torch.Tensor) or torch.jit.is_tracing():
                return self._fallback(x, _context.tracing_reason(x))
            if not torch.compiler.is_compiling():
                # torch.func, forward AD, tensor subclasses: the reference forward, nothing cached
                # (flag reads here; tracing dispatch modes are checked on the slow path, where they go)
                if type(x) is not torch.Tensor or _functorch_active() or _fwad._current_level >= 0:
                    return self._fallback(x, _context.mode_problem(x))
                amp = _autocast.conv_dtype(x) if _any_autocast() else None
                # A new forward token: bounds recorded on activations hold inside this forward only
                # (_finite; inline: host cost).
                outer = getattr(_finite.STATE, "token", 0)
                _finite.STATE.token = next(_finite.TOKENS)
                try:
                    out = self._run_checked(x, donate, body, ambient, amp)
                finally:
                    _finite.STATE.token = outer
                    _spare.STATE.t = None  # (no memory kept between calls: _spare)
                for t in (x, out):  # no bound of ours stays on the caller's tensors
                    if isinstance(t, torch.Tensor) and _finite.KEY in t.__dict__:
                        del t.__dict__[_finite.KEY]
                return out
            amp = _autocast.conv_dtype(x)
        return self._run_checked(x, donate, body, ambient, amp)

    def _run_checked(self, x, donate: bool, body, ambient: Optional[str], amp: Optional[torch.dtype]):
        """_run_planned once x is known to be a plain tensor with no tracer or mode (a fused parent's
        forward calls this directly: _donation.run_layer)."""
        if ambient is None:
            ambient = _selector.requested_backend()
        plan, key = self._plan(x, donate, ambient, amp)
        if plan is not None:  # the plan knows the input's layout (its strides are part of the key)
            fmt, cl = plan.layout
            if amp is not None:
                x = x.to(amp)
            return body(x if cl else x.contiguous(memory_format=CL), donate and cl, fmt, None,
                        _Steps(iter(plan.launches), None, len(plan.launches), ambient, amp))
        # The structure _plan validated in this call (key is set only then: containers, stamp or a
        # fresh read), so a cold call computes it once; otherwise (training, explain, torch.compile,
        # autograd, hooks) everything is re-read and re-checked here.
        hot = self.__dict__.get("_hot") if key is not None else None
        if hot is not None and hot.epoch == folding._EPOCH[0]:
            pairs, fusable = hot.pairs, hot.fusable
        else:
            pairs, fusable = self._fold_pairs(), False
        why = _context.mode_problem(x) if _context.dispatch_mode_flag() and not torch.compiler.is_compiling() \
            else None  # FakeTensorMode, make_fx, functionalization: the reference forward
        why = why or self._fusion_problem(x, pairs, fusable, amp)
        if why:
            return self._fallback(x, why)
        folded = self._folded(pairs)
        if amp is not None:  # autocast: the convs run in its dtype, on folds made for it
            folded = _autocast.cast_folds(self.__dict__.get("_fold_cache"), folded, pairs, amp)
            x = x.to(amp)
        # The generation of these folds, read now: another thread may refold while body() runs, and
        # launches recorded from the old folds must not be filed under the new generation.
        cache = self.__dict__.get("_fold_cache")
        generation = cache.generation if cache is not None else None
        record = [] if key is not None else None
        layout = (self._out_format(x), x.is_contiguous(memory_format=CL))
        out = body(x.contiguous(memory_format=CL), donate and layout[1], layout[0], folded,
                   _Steps(None, record, len(folded), ambient, amp))
        if record is not None and cache is not None and None not in record:
            plans = self.__dict__.setdefault("_plans", {})
            plans.pop(key, None)
            # Evict the least recently used; list(plans) and pop(k, None) stay safe when threads
            # sharing the module edit the dict in between.
            excess = len(plans) + 1 - _MAX_PLANS
            for old in list(plans)[:max(excess, 0)]:
                plans.pop(old, None)
            plans[key] = _Plan(generation, tuple(record), layout)
        return out

    def _identity(self, x, folded, ds_index: int, donate: bool, steps: _Steps):
        """(residual tensor, whether this block owns it and may overwrite it)."""
        if self.downsample is None:
            return x, donate
        if steps.n > ds_index:
            fc = folded[ds_index] if folded is not None else None
            return _conv(x, fc, "downsample.0", self._fused_backend, steps, relu=False), True
        return _finite.forget(self.downsample(x).contiguous(memory_format=CL)), False

    def _fallback(self, x, why: str):
        if not _trace.active():  # (no context manager: torch.compile cannot graph-break inside one)
            return super().forward(x)
        with _trace.fallback(why):
            return super().forward(x)


class _FusedBlock(_FusedMixin):
    """A residual block's forward through its launch plan; _donation.run_layer runs it with a donated input.
    Subclasses set ``_reference_forward`` to their base class's forward (``_alias``): TorchScript
    compiles that one (the branch below is resolved at compile time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._reference_forward(x)
        return self._forward(x, donate=False)

    def __prepare_scriptable__(self):
        _context.warn_once("script", "fused_resnet: torch.jit.script compiles the reference (unfused) forward of "
                                     "converted blocks: same outputs, no fused kernels (torch.export or "
                                     "torch.compile keep the folded convs)")
        return self

    def _forward(self, x: torch.Tensor, donate: bool, untraced: bool = False,
                 ambient: Optional[str] = None) -> torch.Tensor:
        """donate=True: the caller hands x over, so the last conv may write its output into it.
        untraced/ambient: from a fused parent's forward (_donation.run_layer), see _run_planned."""
        return self._run_planned(x, donate, self._body, untraced, ambient)
