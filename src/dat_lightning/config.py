"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

# The Hydra configs ship inside the package (pip installs them with it). A user's own configs join
# them through Hydra's search path: --config-dir DIR or hydra.searchpath=[file://DIR].
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
# Checkpoints the package ships (the default's stage-one model; `make stage1-checkpoint` makes it).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


MAX_RUN_DIR_NAME = 120


def register_resolvers() -> None:
    """``${add:a,b}`` sums numbers (max_epochs = stage1_epochs + stage2_epochs);
    ``${run_dir_name:${run_name},${hydra.job.override_dirname}}`` names the run directory;
    ``${shipped_stage_one:${stage1_epochs},NAME}`` is the default's ``init_ckpt``."""
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda *xs: sum(xs))
    if not OmegaConf.has_resolver("run_dir_name"):
        OmegaConf.register_new_resolver("run_dir_name", run_dir_name)
    if not OmegaConf.has_resolver("shipped_stage_one"):
        OmegaConf.register_new_resolver("shipped_stage_one", shipped_stage_one)


def shipped_stage_one(stage1_epochs: int, name: str) -> str | None:
    """The shipped checkpoint ``WEIGHTS_DIR/name`` when the run trains no stage one
    (``stage1_epochs == 0``: stage two starts from it), else None: ``stage1_epochs=N`` trains stage
    one from scratch, and an explicit ``init_ckpt=PATH`` replaces the whole expression."""
    return str(WEIGHTS_DIR / name) if int(stage1_epochs) == 0 else None


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

