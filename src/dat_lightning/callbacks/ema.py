"""EMA of the weights through Lightning's EMAWeightAveraging, with the authors' warm-up decay."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import Tensor


def warmup_ema_decay(num_averaged: int | Tensor, max_decay: float = 0.999) -> float | Tensor:
    """SPEC decay ``min(max_decay, (1 + n) / (10 + n))`` after ``n`` updates: early averages
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
    """

    def __init__(self, max_decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(decay=max_decay, **kwargs)
        self._kwargs["avg_fn"] = _warmup_avg_fn(max_decay)
        self.max_decay = max_decay


def evaluation_net(trainer, pl_module):
    """The classifier to evaluate between epochs: the EMA copy when an EMA callback runs.

    Valid outside validation only (the callback swaps weights during validation).
    """
    for cb in trainer.callbacks:
        if isinstance(cb, EMAWeightAveraging) and cb._average_model is not None:
            return cb._average_model.module.net
    return pl_module.net
