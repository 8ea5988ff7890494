"""Where the Hydra configs live, and the resolvers they use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

# The repository's conf/ (editable install); DAT_CONFIG_DIR points elsewhere if needed.
CONFIG_DIR = Path(os.environ.get("DAT_CONFIG_DIR", Path(__file__).resolve().parents[2] / "conf"))


def register_resolvers() -> None:
    """``${add:a,b}`` sums numbers (max_epochs = stage1_epochs + stage2_epochs)."""
    if not OmegaConf.has_resolver("add"):
        OmegaConf.register_new_resolver("add", lambda *xs: sum(xs))
