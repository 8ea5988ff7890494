"""EMA of the weights through Lightning's EMAWeightAveraging, with the authors' warm-up decay."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor

from dat_lightning.callbacks.protocol import staged


def warmup_ema_decay(num_averaged: int | Tensor, max_decay: float = 0.999) -> float | Tensor:
    """The authors' decay ``min(max_decay, (1 + n) / (10 + n))`` after ``n`` updates: early averages
    forget the random initialization quickly, later ones average over ~1/(1-max_decay) steps."""
    n = num_averaged
    if isinstance(n, Tensor):
        return torch.clamp((1 + n) / (10 + n), max=max_decay)
    return min(max_decay, (1 + n) / (10 + n))


def _warmup_avg_fn(max_decay: float):
    def avg_fn(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        decay = warmup_ema_decay(num_averaged.to(averaged.dtype), max_decay)
        return decay * averaged + (1 - decay) * current

    return avg_fn


class WarmupEMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging whose decay follows :func:`warmup_ema_decay`.

    Validation, the final weights and the checkpoint's ``state_dict`` use the average;
    the raw weights stay in the checkpoint's ``current_model_state`` for resuming.

    With ``restart_at_stage_two`` (default), a run that trains both stages starts stage two the
    way the authors run it as a separate job: from the stage-one EMA weights, with a fresh
    average (warm-up included). Carried over instead, the average would mix stage-one weights
    into every stage-two evaluation for ~1/(1 - max_decay) steps.
    """

    def __init__(self, max_decay: float = 0.999, restart_at_stage_two: bool = True, **kwargs: Any) -> None:
        super().__init__(decay=max_decay, **kwargs)
        self._kwargs["avg_fn"] = _warmup_avg_fn(max_decay)
        self.max_decay = max_decay
        self.restart_at_stage_two = restart_at_stage_two
        self._restarted = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        start = staged(pl_module).stage2_start_epoch
        # start == 0: stage two begins from init_ckpt, whose weights the average already holds.
        if self.restart_at_stage_two and not self._restarted and start > 0 and trainer.current_epoch == start:
            self._copy_average_to_current(pl_module)
            self._average_model.n_averaged.zero_()  # the next update copies, then the warm-up decay
            self._restarted = True

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"restarted_at_stage_two": self._restarted}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._restarted = bool(state_dict.get("restarted_at_stage_two", False))


def evaluation_net(trainer, pl_module):
    """The classifier to evaluate between epochs: the EMA copy when an EMA callback runs.

    Valid outside validation only (the callback swaps weights during validation).
    """
    for cb in trainer.callbacks:
        if isinstance(cb, EMAWeightAveraging) and cb._average_model is not None:
            return cb._average_model.module.net
    return pl_module.net
