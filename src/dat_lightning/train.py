"""Train a DAT model: ``python -m dat_lightning.train [+experiment=NAME] [key=value ...]``.

A thin ``@hydra.main`` around :func:`run`, which tests call with a composed config. Mistakes
exit with one message and code 1 (:mod:`dat_lightning.reliability.errors`); a preempted run exits
with 128 + signal, and the same command resumes it (:mod:`dat_lightning.reliability.preemption`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf

from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.reliability.config_checks import (
    check_config,
    check_model_fits_data,
    check_overrides,
    cli_overrides,
    wandb_offline_fallback,
)
from dat_lightning.reliability.errors import clear_errors
from dat_lightning.reliability.preemption import register_run_dir_resolver, resolve_ckpt_path
from dat_lightning.summary import final_summary, print_summary

register_resolvers()
register_run_dir_resolver()


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a config group (callbacks, loggers)."""
    if not group:
        return []
    return [hydra.utils.instantiate(node) for node in group.values() if node is not None]


def build(cfg: DictConfig) -> tuple[Any, Any, Trainer]:
    """The datamodule, the LightningModule and the Trainer a config describes."""
    check_config(cfg)
    wandb_offline_fallback(cfg.get("logger"))
    seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    check_model_fits_data(module.net, datamodule)
    module.experiment_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks: list[Callback] = instantiate_all(cfg.get("callbacks"))
    loggers = instantiate_all(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit both stages as configured, then measure the final model; returns the summary."""
    datamodule, module, trainer = build(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    summary: dict[str, Any] = {"output_dir": str(cfg.paths.output_dir)}
    if cfg.summary.enabled and not trainer.fast_dev_run and trainer.is_global_zero:
        summary |= final_summary(cfg, trainer, module, datamodule)
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.paths.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    with clear_errors(HydraConfig.get().runtime.output_dir):
        run(cfg)


def main() -> None:
    """The CLI. Overrides are checked first, so a typo lists the valid keys or options."""
    overrides = cli_overrides(sys.argv[1:])
    if overrides is not None:
        with clear_errors():
            check_overrides(overrides, "train")
    hydra_main()


if __name__ == "__main__":
    main()
