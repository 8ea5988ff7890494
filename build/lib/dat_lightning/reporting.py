"""Writing what a run measures: one JSON file, and the same numbers and pictures to the Lightning
loggers (W&B, TensorBoard take images; a CSV logger keeps the numbers, the PNG files stay on disk)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor
from torchvision.io import ImageReadMode, read_image


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


def flatten_numbers(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every int/float leaf of a nested report as ``"a/b/c": value`` (booleans and strings left out)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out |= flatten_numbers(value, name)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


def log_numbers(loggers: list[Logger], numbers: Mapping[str, float], step: int = 0) -> None:
    for logger in loggers:
        logger.log_metrics(dict(numbers), step=step)


def log_pictures(loggers: list[Logger], pictures: Mapping[str, str | Path], step: int = 0) -> None:
    """Log PNG files as images (W&B / TensorBoard; a CSV logger keeps the files only)."""
    for key, path in pictures.items():
        image = read_image(str(path), mode=ImageReadMode.RGB).to(torch.float32) / 255.0
        log_image_to(loggers, key, image, step=step)


def close_loggers(loggers: list[Logger]) -> None:
    for logger in loggers:
        logger.finalize("success")
