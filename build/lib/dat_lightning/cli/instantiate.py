"""Building config groups whose every entry is an object (callbacks, loggers) from their ``_target_``.

Only for configs the user composed (the command line and the package's own files); a config that
came inside a checkpoint goes through :mod:`dat_lightning.checkpoints.stored_config` instead.
"""

from __future__ import annotations

from typing import Any

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from dat_lightning.cli.config_checks import wandb_offline_fallback


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a config group."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node is not None]


def make_loggers(group: DictConfig | None) -> list[Logger]:
    """The loggers of a ``logger`` group (``csv``, ``wandb``; null for none). W&B without
    credentials logs offline and says so, instead of failing after the work is done."""
    wandb_offline_fallback(group)
    return instantiate_all(group)
