"""Writes PyTorch gives no version signal for, turned into one: the optimizer-step counter.

Fused optimizer steps (``SGD/Adam/AdamW(fused=True)``) write parameters inside one kernel and leave
their ``_version`` unchanged (foreach and plain steps bump it). A model kept in eval between steps
(frozen-BN fine-tuning, validation without another ``eval()``) would then run folds of the old
weights. PyTorch calls every global optimizer step post-hook after each ``Optimizer.step()``, fused
or not; the one installed here counts steps, and ``folding.stamp`` includes the count, so any step
anywhere in the process makes every fold cache refold on its next use (cheap: a step is rare next to
forwards, and a refold is one pass over the folded weights).

Installed with the registration hooks (``folding.install_epoch_hooks``: the first ``convert()`` or
fused call), never at import. Still untracked (README "Writes fused_resnet cannot see"): another
process writing shared-memory weights, writes through ``.data`` or a flat buffer that parameters
alias (``vector_to_parameters``), in-place edits of inference tensors; ``fused_resnet.refresh(model)``
or ``model.eval()`` refold after those.
"""
from __future__ import annotations

from torch.optim.optimizer import register_optimizer_step_post_hook

STEPS = [0]  # optimizer steps taken in this process since install() (read by folding.stamp)
_HANDLE: list = []


def _count_step(_optimizer, _args, _kwargs) -> None:
    STEPS[0] += 1


def install() -> None:
    """Install the process-wide optimizer step hook, once."""
    if not _HANDLE:
        _HANDLE.append(register_optimizer_step_post_hook(_count_step))
