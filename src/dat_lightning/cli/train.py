"""``python -m dat_lightning.train [+experiment=NAME] [key=value ...]``: train a DAT model.

A thin ``@hydra.main`` around :func:`run`, which tests call with a composed config. Mistakes
exit with one message and code 1 (:mod:`dat_lightning.cli.errors`); a preempted run exits
with 128 + signal, and the same command resumes it (:mod:`dat_lightning.callbacks.preemption`).
Config: ``conf/train.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch import Callback, Trainer, seed_everything
from omegaconf import DictConfig, OmegaConf

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.cli.config_checks import check_model_fits_data
from dat_lightning.cli.instantiate import instantiate_all, make_loggers
from dat_lightning.cli.launcher import in_run_directory, launch
from dat_lightning.cli.run_directory import check_resume, resolve_ckpt_path
from dat_lightning.cli.settings_checks import check_train_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.run_logs import ResumableCSVLogger, keep_wandb_run
from dat_lightning.summary import final_summary, print_summary

register_resolvers()


def build(cfg: DictConfig) -> tuple[Any, Any, Trainer]:
    """The datamodule, the LightningModule and the Trainer a config describes."""
    check_train_settings(cfg)
    seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    module = hydra.utils.instantiate(cfg.model)
    check_model_fits_data(module.net, datamodule)
    module.experiment_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, module, make_trainer(cfg)


def make_trainer(cfg: DictConfig) -> Trainer:
    """The Trainer of a config with its callbacks, loggers and plugins (named in the config so
    that configs add to them; the Trainer takes their values as lists)."""
    callbacks: list[Callback] = instantiate_all(cfg.get("callbacks"))
    loggers = make_loggers(cfg.get("logger"))
    plugins = instantiate_all(cfg.trainer.get("plugins"))
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    node.pop("plugins", None)  # a mapping in the config, a list for the Trainer
    return hydra.utils.instantiate(node, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fit both stages as configured, then measure the final model; returns the summary."""
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    resumed = read_checkpoint(ckpt_path, mmap=True) if ckpt_path else None  # maps the tensors: cheap
    keep_wandb_run(cfg.get("logger"), cfg.paths.output_dir, (resumed or {}).get("dat_config"))
    datamodule, module, trainer = build(cfg)
    check_resume(ckpt_path, resumed, module.experiment_config, force=bool(cfg.get("force_resume", False)))
    for logger in trainer.loggers:
        if resumed is not None and isinstance(logger, ResumableCSVLogger):
            logger.truncate_after(int(resumed.get("global_step", 0)))
        logger.log_hyperparams(module.experiment_config)  # the resolved config, to every logger
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    summary: dict[str, Any] = {"output_dir": str(cfg.paths.output_dir)}
    if cfg.summary.enabled and not trainer.fast_dev_run:
        summary |= final_summary(cfg, trainer, module, datamodule)  # every process takes a share
        if trainer.is_global_zero:
            Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.paths.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
            print_summary(summary)
    return summary


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    in_run_directory(cfg, run)


def main() -> None:
    """The CLI: overrides and values checked first, then the run in its own directory."""
    launch(sys.argv[1:], "train", hydra_main, validate=check_train_settings, checkpoints=("ckpt_path", "init_ckpt"))


if __name__ == "__main__":
    main()
