"""Save the stage-one model at the stage boundary, so both stages can be evaluated."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from dat_lightning.callbacks.protocol import staged


class StageOneCheckpoint(Callback):
    """Write ``<dirpath>/stage1.ckpt`` at the end of the last stage-one epoch.

    It is an ordinary training checkpoint (EMA weights in ``state_dict`` when EMA runs), so
    it can be evaluated, or used as ``init_ckpt`` for other stage-two runs.
    """

    def __init__(self, dirpath: str, filename: str = "stage1.ckpt") -> None:
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch + 1 == staged(pl_module).stage2_start_epoch and not trainer.fast_dev_run:
            trainer.save_checkpoint(self.path, weights_only=False)  # stage two starts from it: full state

