"""Checks of what a user asked for, each failing with a message that says how to fix it.

Most values are checked where they are used (attacks, module, datamodule); these are the checks
that need the whole config or the command line: unknown keys (with the valid ones listed), the
test-time sampling settings (used only at epoch end, so checked up front), model/data agreement,
and W&B without credentials (falls back to offline instead of prompting for a login).
"""

from __future__ import annotations

import difflib
import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dat_lightning.config import CONFIG_DIR

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """The command line or config asks for something that does not exist or cannot work."""


# -- the command line ---------------------------------------------------------------------------


def _is_group(key: str, config_dir: Path) -> bool:
    return (config_dir / key.replace(".", "/")).is_dir()


def _unknown_key_message(cfg: DictConfig, key: str, config_dir: Path) -> str | None:
    """Why ``key`` is not in ``cfg`` and what the valid keys are; None if it exists."""
    node: Any = cfg
    path: list[str] = []
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return None  # below a leaf or inside a list: Hydra's message is precise enough
        child = node._get_node(part) if part in node.keys() else None
        if child is None:
            where = f"'{'.'.join(path)}'" if path else "the top level"
            valid = sorted(str(k) for k in node.keys())
            groups = [g for g in valid if _is_group(g, config_dir)] if not path else []
            close = difflib.get_close_matches(part, valid, n=3, cutoff=0.6)
            text = f"unknown config key '{key}': '{part}' is not a key of {where}."
            if close:
                text += f" Did you mean: {', '.join(close)}?"
            text += f"\nValid keys of {where}: {', '.join(valid)}."
            if groups:
                text += (f"\nConfig groups (select with GROUP=OPTION): {', '.join(groups)}; "
                         "experiments with +experiment=NAME.")
            return text + f"\nTo add a new key on purpose, prefix it with '+': +{key}=..."
        node = child
        path.append(part)
    return None


def check_overrides(overrides: Sequence[str], config_name: str = "train",
                    config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Compose ``config_name`` with ``overrides`` as the CLI will and return it; raise
    :class:`ConfigError` with the valid keys or options when one does not exist."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            try:
                return compose(config_name, overrides=list(overrides))
            except (HydraException, OmegaConfBaseException) as err:
                first_error = err
            # Locate the unknown key: compose with only the overrides that shape the config
            # (group selections and '+' additions), then look each plain key up.
            shaping = [o for o in overrides if o.startswith(("+", "~"))
                       or _is_group(o.split("=", 1)[0], config_dir)]
            try:
                base = compose(config_name, overrides=shaping)
            except (HydraException, OmegaConfBaseException):
                base = None
    finally:
        GlobalHydra.instance().clear()
    if base is not None:
        for override in overrides:
            if override in shaping or "=" not in override:
                continue
            key = override.split("=", 1)[0]
            message = _unknown_key_message(base, key, config_dir)
            if message:
                raise ConfigError(message) from first_error
    # Hydra's own message already lists the options of a config group (unknown experiment ...).
    text = str(first_error).split("\nConfig search path:")[0].strip()
    cause = first_error.__cause__
    if cause is not None and str(cause).strip():
        text += f"\nReason: {str(cause).strip().splitlines()[0]}"
    replaced = [o.split("=", 1)[0] for o in overrides if o.split("=", 1)[-1].startswith("{")]
    if replaced:
        key = replaced[0]
        text += (f"\nA {{...}} value is merged into the existing `{key}`; to replace the whole "
                 f"node, remove it first: '~{key}' '+{key}={{...}}'.")
    raise ConfigError(text) from first_error


def cli_overrides(argv: Sequence[str]) -> list[str] | None:
    """The ``key=value`` arguments of a plain run, as :func:`check_overrides` composes them: the
    user's config folders (``--config-dir DIR`` / ``-cd DIR`` or ``hydra.searchpath=[...]``) join
    the search path as in Hydra; other ``hydra.*`` settings do not shape the config. None when
    other flags (--multirun, --cfg, -cn ...) ask Hydra for something this check does not model."""
    overrides: list[str] = []
    folders: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd") and args:
            folders.append(args.pop(0))
        elif arg.startswith("--config-dir="):
            folders.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            return None
        elif arg.startswith("hydra.searchpath="):
            if folders:
                return None  # both forms at once: leave it to Hydra
            overrides.append(arg)
        elif not arg.startswith(("hydra.", "hydra/")):
            overrides.append(arg)
    if folders:
        if any(o.startswith("hydra.searchpath=") for o in overrides):
            return None
        paths = ",".join(f"file://{Path(f).expanduser().resolve()}" for f in folders)
        overrides.append(f"hydra.searchpath=[{paths}]")
    return overrides


# -- the composed config --------------------------------------------------------------------------


def check_model_fits_data(net: Any, datamodule: Any) -> None:
    """The classifier's input channels and classes match what the data delivers."""
    for attr, have, data_key in (
        ("in_chans", getattr(datamodule, "channels", None), "data.channels"),
        ("num_classes", getattr(datamodule, "num_classes", None), "data.num_classes"),
    ):
        want = getattr(net, attr, None)
        if want is not None and have is not None and int(want) != int(have):
            raise ConfigError(
                f"the model is built for {attr}={want} but the data has {data_key}={have}: "
                f"images would not fit the model. Leave model.net.{attr} at its default "
                f"(${{{data_key}}}) or make the two agree."
            )


# -- W&B ----------------------------------------------------------------------------------------

OFFLINE_MODES = ("offline", "disabled", "dryrun")


def wandb_credentials_available() -> bool:
    """An API key in WANDB_API_KEY or in the netrc file that ``wandb login`` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline_fallback(logger_cfg: DictConfig | None) -> bool:
    """Switch W&B loggers to offline mode when there are no credentials, and say so.

    Returns whether it did. Online W&B without credentials would otherwise stop at an
    interactive login prompt (or fail) after the run has set up.
    """
    if not logger_cfg or os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return False
    switched = False
    for name, node in logger_cfg.items():
        if node is None or "WandbLogger" not in str(node.get("_target_", "")) or node.get("offline"):
            continue
        if wandb_credentials_available():
            continue
        with _writable(node):
            node.offline = True
        switched = True
        log.warning(
            "W&B: no credentials found (no WANDB_API_KEY, no api.wandb.ai entry in ~/.netrc), so "
            "logger.%s logs OFFLINE under %s/wandb. Upload later with `wandb sync <that folder>`; "
            "run `wandb login` (or set WANDB_API_KEY) to log online, or WANDB_MODE=offline to "
            "silence this.", name, node.get("save_dir", "."),
        )
    return switched


class _writable:
    def __init__(self, node: DictConfig) -> None:
        self.node, self.flags = node, None

    def __enter__(self) -> None:
        self.flags = (OmegaConf.is_readonly(self.node), OmegaConf.is_struct(self.node))
        OmegaConf.set_readonly(self.node, False)
        OmegaConf.set_struct(self.node, False)

    def __exit__(self, *exc: Any) -> None:
        OmegaConf.set_readonly(self.node, self.flags[0])
        OmegaConf.set_struct(self.node, self.flags[1])
