"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

# The Hydra configs ship inside the package (pip installs them with it). A user's own configs join
# them through Hydra's search path: --config-dir DIR or hydra.searchpath=[file://DIR].
CONFIG_DIR = Path(__file__).resolve().parent / "conf"


MAX_RUN_DIR_NAME = 120


def register_resolvers() -> None:
    """``${add:a,b}`` sums numbers (max_epochs = stage1_epochs + stage2_epochs);
    ``${run_dir_name:${run_name},${hydra.job.override_dirname}}`` names the run directory."""
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda *xs: sum(xs))
    if not OmegaConf.has_resolver("run_dir_name"):
        OmegaConf.register_new_resolver("run_dir_name", run_dir_name)


def run_dir_name(run_name: str | None, override_dirname: str) -> str:
    """The run directory's name: ``run_name`` if set, else the command-line overrides.

    The same command therefore maps to the same directory, where ``ckpt_path: last`` finds the
    checkpoint of an interrupted launch. Characters that would nest folders are replaced, and long
    names are shortened with a hash that keeps them unique.
    """
    name = str(run_name) if run_name not in (None, "") else (override_dirname or "default")
    name = re.sub(r"[^A-Za-z0-9=,+._@-]", "_", name)
    if len(name) > MAX_RUN_DIR_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[: MAX_RUN_DIR_NAME - 13]}-{digest}"
    return name

