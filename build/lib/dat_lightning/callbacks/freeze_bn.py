"""Keep every BatchNorm frozen for the whole of stage two."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.callbacks.protocol import staged


class FreezeBatchNorm(Callback):
    """Freeze BatchNorm whenever ``pl_module.stage == 2``.

    Re-applied at the start of every training batch, not only once: anything that calls a
    whole-module ``.train()`` (a validation loop, a user's callback) would otherwise silently
    unfreeze it, and a resumed run starts from freshly constructed (training) layers.
    """

    def __init__(self) -> None:
        self._announced = False

    def _apply(self, pl_module: LightningModule) -> None:
        if staged(pl_module).stage == 2:
            count = freeze_batchnorm(pl_module)
            if not self._announced:
                rank_zero_info(f"Stage two: {count} BatchNorm layers frozen (running statistics fixed).")
                self._announced = True

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._apply(pl_module)
