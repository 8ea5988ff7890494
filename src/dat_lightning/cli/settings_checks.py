"""The values each command line takes, checked before any file is read or written.

Each CLI's ``validate`` runs on the composed config before Hydra creates the run directory (and
again inside the task, for multirun and programmatic calls). A bad value stops the CLI with one
line naming the key the user set, the value and what it must be: for a derived key such as
``sampling.step_size: ${model.gen_attack.step_size}`` the message names the key it comes from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from dat_lightning.attacks import NORMS
from dat_lightning.cli.config_checks import ConfigError
from dat_lightning.metrics.ood import SCORES

EVALUATION_METRICS = ("clean", "autoattack", "fid", "counterfactual", "ood", "calibration")
OOD_SCORES = tuple(SCORES)


def source_key(cfg: DictConfig, key: str) -> str:
    """The key a user sets for ``key``: the target of a plain interpolation ``${a.b}``, followed."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return key
    raw = node._get_node(leaf)._value()
    match = re.fullmatch(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else None
    return source_key(cfg, match.group(1)) if match else key


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def need(cfg: DictConfig, key: str, ok: Callable[[Any], bool], what: str, null: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``cfg[key]`` passes ``ok`` (or is null, when ``null``)."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is None and null:
        return
    try:
        good = value is not None and ok(value)
    except TypeError:
        good = False
    if not good:
        shown = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        where = source_key(cfg, key)
        also = f" (used as {key})" if where != key else ""
        what = f"{what}{' or null' if null else ''}"
        raise ConfigError(f"{where}={shown!r}{also} is not allowed: set {where} to {what}.")


def at_least(cfg: DictConfig, key: str, minimum: int, null: bool = False) -> None:
    need(cfg, key, lambda v: _integer(v) and v >= minimum, f"an integer >= {minimum}", null)


def positive(cfg: DictConfig, key: str, null: bool = False) -> None:
    need(cfg, key, lambda v: _number(v) and v > 0, "a number > 0", null)


def one_of(cfg: DictConfig, key: str, options: tuple[str, ...], null: bool = False) -> None:
    need(cfg, key, lambda v: v in options, f"one of {', '.join(options)}", null)


def _attack(cfg: DictConfig, key: str) -> None:
    if OmegaConf.select(cfg, key) is None:
        return
    one_of(cfg, f"{key}.norm", NORMS)
    positive(cfg, f"{key}.eps")
    positive(cfg, f"{key}.step_size")
    at_least(cfg, f"{key}.steps", 0)


def _chain(cfg: DictConfig, key: str, null: bool = False) -> None:
    """A test-time chain: ``steps`` >= 0 and ``step_size`` > 0 (null: the checkpoint's own)."""
    at_least(cfg, f"{key}steps", 0, null)
    positive(cfg, f"{key}step_size", null)


def _fid(cfg: DictConfig, key: str) -> None:
    for name in ("num_real", "batch_size", "splits"):
        at_least(cfg, f"{key}.{name}", 1)


def check_train_settings(cfg: DictConfig) -> None:
    """``python -m dat_lightning.train``: stages, attacks, chain and curriculum, sampling, precision."""
    at_least(cfg, "stage1_epochs", 0)
    at_least(cfg, "stage2_epochs", 0)
    if OmegaConf.select(cfg, "model") is not None:
        _attack(cfg, "model.clf_attack")
        _attack(cfg, "model.val_attack")
        positive(cfg, "model.gen_attack.step_size")
        at_least(cfg, "model.max_bad_steps", 1, null=True)
        need(cfg, "model.max_abs_loss", lambda v: float(v) > 0, "a number > 0 (or null: no bound)", null=True)
    from dat_lightning.metrics.extractors import EXTRACTORS

    # measured only once training ends: a wrong name must fail now, not after the run
    need(cfg, "summary.judge", lambda v: v == "auto" or v in EXTRACTORS,
         f"auto, null or an extractor name ({', '.join(sorted(EXTRACTORS))})", null=True)
    if OmegaConf.select(cfg, "summary.inception_samples"):
        at_least(cfg, "summary.inception_samples", 2)  # a covariance needs two samples
        at_least(cfg, "summary.inception_real", 2)
    curriculum = "callbacks.curriculum"
    if OmegaConf.select(cfg, curriculum) is not None:
        at_least(cfg, f"{curriculum}.start_steps", 0)
        start = OmegaConf.select(cfg, f"{curriculum}.start_steps")
        need(cfg, f"{curriculum}.max_steps", lambda v: _integer(v) and v >= start,
             f"an integer >= {curriculum}.start_steps ({start})")
        need(cfg, f"{curriculum}.auc_threshold", lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]")
        at_least(cfg, f"{curriculum}.min_imgs_per_threshold", 1)
    if OmegaConf.select(cfg, "sampling") is not None:
        _chain(cfg, "sampling.")
    if OmegaConf.select(cfg, "data") is not None:
        at_least(cfg, "data.batch_size", 1)
        at_least(cfg, "data.num_workers", 0)
    precision = str(OmegaConf.select(cfg, "trainer.precision", default=""))
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default="")
    on_cpu = accelerator == "cpu" or accelerator == "auto" and not torch.cuda.is_available()
    if on_cpu and precision in ("16", "16-mixed"):
        raise ConfigError(
            f"trainer.precision={precision} is not available on the CPU (Lightning would run "
            "bf16-mixed instead and the run would record the wrong precision): use "
            "trainer.precision=bf16-mixed, or 32-true."
        )


def _sampling(cfg: DictConfig) -> None:
    """The test-time chain of ``sample`` and ``evaluate`` (null: the checkpoint's own)."""
    at_least(cfg, "sampling.num_samples", 1)
    at_least(cfg, "sampling.batch_size", 1)
    at_least(cfg, "sampling.seed_offset", 0)
    _chain(cfg, "sampling.", null=True)
    _seeds(cfg, "sampling.seeds")


def check_sample_settings(cfg: DictConfig) -> None:
    """``python -m dat_lightning.sample``."""
    _sampling(cfg)
    at_least(cfg, "grid_per_class", 1)
    sweep = OmegaConf.select(cfg, "sweep")
    if sweep is not None:
        need(cfg, "sweep", lambda v: isinstance(v, ListConfig) and len(v) > 0
             and all(_integer(t) and t >= 0 for t in v), "a non-empty list of chain lengths >= 0")
        _fid(cfg, "fid")


def _seeds(cfg: DictConfig, key: str) -> None:
    need(cfg, key, lambda v: v in ("ood", "uniform", "buffer") or isinstance(v, (DictConfig, Mapping)) and "_target_" in v,
         "null (the checkpoint's own), ood, uniform, buffer or a node with _target_", null=True)


def check_evaluate_settings(cfg: DictConfig) -> None:
    """``python -m dat_lightning.evaluate``."""
    need(cfg, "metrics", lambda v: isinstance(v, ListConfig) and len(v) > 0 and set(v) <= set(EVALUATION_METRICS),
         f"a non-empty list of {', '.join(EVALUATION_METRICS)}")
    _sampling(cfg)
    at_least(cfg, "test_size", 1, null=True)
    at_least(cfg, "batch_size", 1)
    at_least(cfg, "num_workers", 0)
    _fid(cfg, "fid")
    one_of(cfg, "autoattack.norm", NORMS, null=True)
    positive(cfg, "autoattack.eps", null=True)
    at_least(cfg, "autoattack.n_examples", 1)
    at_least(cfg, "autoattack.batch_size", 1)
    at_least(cfg, "counterfactual.n_examples", 2)
    at_least(cfg, "counterfactual.steps", 1)
    positive(cfg, "counterfactual.step_size", null=True)
    need(cfg, "counterfactual.eps", lambda v: len(v) > 0 and all(_number(e) and e > 0 for e in v),
         "a non-empty list of numbers > 0")
    at_least(cfg, "ood.n_ood", 2)
    need(cfg, "ood.scores", lambda v: len(v) > 0 and set(v) <= set(OOD_SCORES),
         f"a non-empty list of {', '.join(OOD_SCORES)}")
    if OmegaConf.select(cfg, "ood.adversarial.enabled"):
        _attack(cfg, "ood.adversarial")
    at_least(cfg, "calibration.n_bins", 1)


def check_judge_settings(cfg: DictConfig) -> None:
    """``python -m dat_lightning.judge``."""
    at_least(cfg, "epochs", 1)
    at_least(cfg, "limit", 1, null=True)
