"""Logging an image to whichever logger the run uses (W&B, TensorBoard); CSV keeps files only."""

from __future__ import annotations

from collections.abc import Iterable

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor


def log_image(trainer: Trainer, key: str, image: Tensor, step: int | None = None) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger of ``trainer`` that takes images."""
    log_image_to(trainer.loggers, key, image, step)


def log_image_to(loggers: Iterable[Logger], key: str, image: Tensor, step: int | None = None) -> None:
    """Send a (C, H, W) image in [0, 1] to every logger that takes images (outside a Trainer)."""
    for logger in loggers:
        if hasattr(logger, "log_image"):  # WandbLogger
            logger.log_image(key=key, images=[image.permute(1, 2, 0).cpu().numpy()], step=step)
        elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
            logger.experiment.add_image(key, image, global_step=step)
