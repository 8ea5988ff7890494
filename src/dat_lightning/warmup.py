"""The linear learning-rate warm-up of JEM, JEM++ and EB-JDAT, applied per optimizer step.

Their training scripts set the learning rate of step ``k`` (``k`` steps taken before it, the first
step ``k = 0``) to ``lr * k / W`` while ``k <= W``, and leave it to the epoch schedule from then on
(``--warmup_iters``: 1000 in wgrathwohl/JEM ``train_wrn_ebm.py``'s default, in sndnyang/JEMPP
``scripts/jempp_cifar10.sh`` and in jkcjkc/EB-JDAT ``EB-JDAT-JEM++/train.sh``). Their first step
therefore runs at LR 0: it changes no weight but does fill momentum or Adam's moments.

Here the factor multiplies whatever LR the epoch scheduler holds, for the one step only: the
optimizer's and the scheduler's state, which checkpoints save, never hold a warmed-up value, so a
resumed run warms up exactly as an uninterrupted one. This equals the authors' rule whenever the
warm-up ends before the first epoch decay (1000 steps against decays after 40 or more epochs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def linear_warmup_factor(step: int, warmup_steps: int) -> float:
    """The LR multiplier of the step with ``step`` optimizer steps before it: ``min(1, step / W)``;
    1 when ``warmup_steps`` is 0 (no warm-up)."""
    if warmup_steps < 0:
        raise ValueError(f"the LR warm-up must be >= 0 steps, got {warmup_steps}")
    if step < 0:
        raise ValueError(f"a step index must be >= 0, got {step}")
    if warmup_steps == 0 or step >= warmup_steps:
        return 1.0
    return step / warmup_steps


@contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """Every parameter group's LR times ``factor`` inside the block, restored (the same object)
    on leaving it, also when the block raises."""
    held = [group["lr"] for group in optimizer.param_groups]
    try:
        if factor != 1.0:
            for group, lr in zip(optimizer.param_groups, held, strict=True):
                group["lr"] = lr * factor
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, held, strict=True):
            group["lr"] = lr
