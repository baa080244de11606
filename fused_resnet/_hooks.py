"""Which hooks could fire (and keep a tensor) when a module is called, and how the fused path reads
them so that torch.compile guards on them on every supported torch version.

A fused module skips the forward of its inner modules; a hook on any of them sends the call to the
reference forward, so the hook fires (ARCHITECTURE.md, "Invalidation model"). Under torch.compile
the check must be something dynamo guards on: torch 2.11's dynamo turns an *empty* hook dict read as
a module attribute into a constant with no guard (``skip_nnmodule_hook_guards``, on by default; 2.14
guards its length), so a hook registered after compiling would not recompile the graph that skips
it. The same dicts read out of a tuple the module kept (``keep``) are guarded on every version, with
``len()``: dynamo guards on the length ``len()`` reads, not on a dict ``any()`` tests.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
from torch import nn

GLOBAL_HOOKS = tuple(getattr(nn.modules.module, name) for name in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))


def hook_dicts(m: nn.Module) -> tuple:
    """The hook dicts of ``m`` whose hooks fire when ``m`` is called (forward, pre, backward)."""
    return (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)


def has_hooks(m: nn.Module, grad: Optional[bool] = None) -> bool:
    """Does ``m`` have hooks that calling it would run (and that could keep its output)? Backward
    hooks count when autograd records (``grad``: torch.is_grad_enabled(), if the caller has it)."""
    if m._forward_hooks or m._forward_pre_hooks or GLOBAL_HOOKS[0] or GLOBAL_HOOKS[1]:
        return True
    if grad is None:
        grad = torch.is_grad_enabled()
    return grad and bool(m._backward_hooks or m._backward_pre_hooks or GLOBAL_HOOKS[2] or GLOBAL_HOOKS[3])


def keep(skipped: tuple) -> tuple:
    """(skipped modules, their hook dicts): what ``none_fire`` reads while dynamo traces."""
    return skipped, tuple([d for m in skipped for d in (  # (inline: cold-path call count, tests/test_plans.py)
        m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)])


def none_fire(skipped: tuple, kept: Optional[tuple]) -> bool:
    """No module hook (global, or on any of ``skipped``) would fire: the fused path may skip them.
    ``kept``: what ``keep(skipped)`` returned earlier, if anything."""
    if torch.compiler.is_dynamo_compiling():
        if kept is not None and len(kept[0]) == len(skipped) and all(map(operator.is_, kept[0], skipped)):
            dicts = kept[1]
        else:
            dicts = tuple([d for m in skipped for d in hook_dicts(m)])
        return not any(map(len, GLOBAL_HOOKS)) and not any(map(len, dicts))
    return not any(GLOBAL_HOOKS) and not [m for m in skipped if m._forward_hooks or m._forward_pre_hooks
                                          or m._backward_hooks or m._backward_pre_hooks]
