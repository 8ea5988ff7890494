"""``python -m dat_lightning.judge [epochs=3 out=PATH]``: train the Fashion-MNIST judge of sample quality.

The judge (:mod:`dat_lightning.metrics.fmnist_judge`) is a plain CNN; its features score samples
with ``fid.extractor=fmnist_cnn``. Config: ``conf/judge.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from dat_lightning.cli.launcher import in_run_directory, launch
from dat_lightning.cli.settings_checks import check_judge_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.metrics.fmnist_judge import default_weights_path, make_judge

register_resolvers()


def run(cfg: DictConfig) -> Path:
    """Train the judge as ``cfg`` says; returns the weights file."""
    check_judge_settings(cfg)
    out = Path(cfg.out) if cfg.out else default_weights_path()
    return make_judge(out, str(cfg.root), epochs=int(cfg.epochs), limit=cfg.limit)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="judge")
def hydra_main(cfg: DictConfig) -> None:
    in_run_directory(cfg, run)


def main() -> None:
    """The CLI: overrides and values checked first, then the training."""
    launch(sys.argv[1:], "judge", hydra_main, validate=check_judge_settings)
