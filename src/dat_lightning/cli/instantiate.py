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


def launch_sharded(cfg: DictConfig):
    """The launched Fabric of ``cfg.trainer`` (:func:`make_fabric`), seeded with ``cfg.seed``, and
    this process's :class:`~dat_lightning.sharding.Shards`: how ``sample`` and ``evaluate`` start."""
    from lightning.pytorch import seed_everything

    from dat_lightning.sharding import Shards

    fabric = make_fabric(cfg.trainer)
    seed_everything(int(cfg.seed), workers=True)
    return fabric, Shards.of_fabric(fabric)


def make_fabric(trainer_cfg: DictConfig):
    """A launched Lightning Fabric for the ``trainer`` group of a config (accelerator, devices,
    nodes, strategy, precision and its plugins), so that ``sample`` and ``evaluate`` run on the
    devices and cluster launch that training uses (``trainer=ddp``, ``trainer=slurm``)."""
    from lightning.fabric import Fabric
    from omegaconf import OmegaConf

    keys = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    settings = {k: OmegaConf.select(trainer_cfg, k) for k in keys}
    fabric = Fabric(**{k: v for k, v in settings.items() if v is not None},
                    plugins=instantiate_all(trainer_cfg.get("plugins")) or None)
    fabric.launch()
    return fabric
