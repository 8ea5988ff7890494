"""From a checkpoint file to an eval-mode classifier (and the config it was trained with).

A training checkpoint carries ``dat_config`` (the resolved Hydra config as a plain dict), so it is
self-describing. A plain state dict (or a public robust model, see :mod:`dat_lightning.checkpoints.foreign`)
needs the experiment config it belongs to: an experiment name such as ``"fmnist_dat"``, a YAML
file (e.g. a run's ``.hydra/config.yaml``) or a mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dat_lightning.checkpoints import (
    CheckpointError,
    load_matching,
    read_checkpoint,
)
from dat_lightning.checkpoints.foreign import convert
from dat_lightning.checkpoints.stored_config import build_data, build_network
from dat_lightning.config import CONFIG_DIR, register_resolvers

ConfigLike = str | Path | Mapping[str, Any] | DictConfig


@dataclass
class LoadedRun:
    """A classifier restored from ``path`` with the experiment config that describes it."""

    net: nn.Module
    config: DictConfig
    path: Path
    gen_steps: int | None  # the curriculum's chain length T when the checkpoint was written
    config_source: str = ""  # where ``config`` came from, for messages
    config_stored: bool = True  # the checkpoint's own (resolved) config, not one the user gave


def experiment_config(config: ConfigLike) -> DictConfig:
    """A training config from an experiment name (``"fmnist_dat"``; ``"train"`` is the default
    config), a YAML file, or a mapping / DictConfig (returned as a DictConfig)."""
    if isinstance(config, DictConfig):
        return config
    if isinstance(config, Mapping):
        return OmegaConf.create(dict(config))
    text = str(config)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        if not Path(text).is_file():
            raise FileNotFoundError(f"experiment config file not found: {text}")
        return OmegaConf.load(text)
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    if text not in ("train", "default") and text not in experiments:
        raise ValueError(f"unknown experiment {text!r}: choose one of {['train', *experiments]}, "
                         "or give a YAML file or a config mapping")
    overrides = [] if text in ("train", "default") else [f"+experiment={text}"]
    register_resolvers()
    # Inside a running Hydra app (the evaluate / sample CLIs) Hydra is already initialized:
    # compose in a fresh context and put the app's context back afterwards.
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=overrides)
    finally:
        restore_gh_from_backup(backup)


def load_run(path: str | Path, ema: bool = True, config: ConfigLike | None = None,
             format: str = "auto", net_overrides: Mapping[str, Any] | None = None) -> LoadedRun:
    """Read ``path`` (``weights_only=True``) and rebuild its classifier in eval mode.

    Args:
        path: a training checkpoint (``.ckpt``) or a plain state dict.
        ema: take the EMA weights of a training checkpoint when it has both.
        config: the experiment config for files without ``dat_config`` (it wins over
            ``dat_config`` when both exist); see :func:`experiment_config`.
        format: layout of a foreign state dict (``auto``, ``dat``, ``robustbench``, ...; see
            :mod:`dat_lightning.checkpoints.foreign`).
        net_overrides: merged into the config's ``model.net`` (e.g. ``{"mean": [0, 0, 0], "std":
            [1, 1, 1]}`` for a network trained on unnormalized inputs).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    if config is not None:
        cfg, source, stored = experiment_config(config), f"the config {config!r}", False
    elif isinstance(ckpt.get("dat_config"), Mapping):
        cfg, source, stored = OmegaConf.create(dict(ckpt["dat_config"])), f"the checkpoint {path}", True
    else:
        raise CheckpointError(
            f"{path} is a plain state dict without the config it was trained with: pass the "
            "experiment, e.g. load_classifier(path, config='fmnist_dat') (CLIs: config=fmnist_dat), "
            "a YAML file, or a mapping with model.net (and data, for evaluation)."
        )
    if OmegaConf.select(cfg, "model.net") is None:
        raise CheckpointError(f"the config for {path} has no model.net node to build the classifier from")
    if net_overrides:
        cfg.model.net = OmegaConf.merge(cfg.model.net, OmegaConf.create(dict(net_overrides)))
    net = build_network(cfg.model.net, source, stored=stored)
    load_weights(net, path, format=format, ema=ema, ckpt=ckpt)
    net.eval().requires_grad_(False)
    return LoadedRun(net=net, config=cfg, path=path, gen_steps=chain_length(ckpt), config_source=source,
                     config_stored=stored)


def load_weights(net: nn.Module, path: str | Path, format: str = "auto", ema: bool = True,
                 ckpt: Mapping[str, Any] | None = None) -> None:
    """The one route from a file to a network's weights (``init_ckpt``, ``load_classifier``): read
    once with ``weights_only=True`` (or reuse ``ckpt``, what was read), convert its layout
    (:func:`~dat_lightning.checkpoints.foreign.convert`, normalization checked), load strictly."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    source = f"{path}" if format == "auto" else f"{path} (format {format} asked for)"
    load_matching(net, convert(ckpt, format, str(path), net=net, ema=ema), source=source)


def chain_length(ckpt: Mapping[str, Any]) -> int | None:
    """The curriculum's chain length T when the checkpoint was written (its callback's state;
    ``dat_gen_steps`` in checkpoints of earlier versions), None when it has none."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("GenStepCurriculum") and isinstance(state, Mapping) and "steps" in state:
            return int(state["steps"])
    legacy = ckpt.get("dat_gen_steps")
    return None if legacy is None else int(legacy)


def load_classifier(path: str | Path, ema: bool = True, config: ConfigLike | None = None,
                    format: str = "auto", net_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """The classifier of a checkpoint: an eval-mode ``nn.Module``, images in [0, 1] -> logits.

    ``ema`` picks the EMA weights of a training checkpoint; a plain state dict needs ``config``
    (an experiment name such as ``"fmnist_dat"``, a YAML file or a mapping). Parameters are
    frozen (``requires_grad=False``); input gradients still flow for attacks and sampling.
    """
    return load_run(path, ema=ema, config=config, format=format, net_overrides=net_overrides).net


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_datamodule(run: LoadedRun, overrides: Mapping[str, Any] | None = None, **kwargs: Any):
    """The run's :class:`~dat_lightning.data.DATDataModule`, built from its checked ``data`` node
    (:func:`~dat_lightning.checkpoints.stored_config.build_data`) with the user's ``overrides``
    merged in (e.g. another dataset root) and ``kwargs`` (batch_size, num_workers) on top."""
    if OmegaConf.select(run.config, "data") is None:
        raise CheckpointError(f"{run.config_source} has no data node: evaluation needs the dataset")
    return build_data(run.config.data, "data", run.config_source, stored=run.config_stored,
                      overrides=OmegaConf.to_container(OmegaConf.create(dict(overrides))) if overrides else None,
                      **kwargs)
