"""Logs that survive a resume: one CSV folder and one W&B run per run directory.

Lightning's CSV logger takes the next free ``version_N`` folder at every launch, or, given a fixed
version, deletes the metrics file it finds; W&B starts a new run at every launch. A preempted and
resumed run then has its curves split (or cut). Here a run directory keeps them whole:

- :class:`ResumableCSVLogger` (``version: 0``) appends to the ``metrics.csv`` an earlier launch of
  the run wrote; rows logged after the checkpoint a launch resumes from (by a launch that was
  killed, not preempted) are dropped first (:meth:`ResumableCSVLogger.truncate_after`);
- :func:`keep_wandb_run` gives every launch of a run the same W&B run id (kept in
  ``<run dir>/wandb_run_id`` and in the config a checkpoint records) with ``resume="allow"``.
"""

from __future__ import annotations

import csv
import os
import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, open_dict

WANDB_ID_FILE = "wandb_run_id"


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer that continues an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """A CSV logger whose run keeps one folder and one ``metrics.csv`` across resumed launches."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def truncate_after(self, step: int) -> int:
        """Drop the rows logged after global step ``step`` (what a killed launch did past the
        checkpoint now resumed from); returns how many were dropped."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return 0
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if not r.get("step") or float(r["step"]) <= step]
        if len(kept) < len(rows):
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)
        return len(rows) - len(kept)


def keep_wandb_run(logger_cfg: DictConfig | None, run_dir: str | os.PathLike,
                   recorded: Mapping[str, Any] | None = None) -> str | None:
    """Give the W&B loggers of ``logger_cfg`` this run's id (the run directory's, else the one the
    resumed checkpoint's config ``recorded``, else a new one) and ``resume="allow"``.

    Only the process of global rank 0 keeps the id file: the others log nothing to W&B.
    """
    from dat_lightning.cli.run_directory import global_rank_from_env

    if not logger_cfg or global_rank_from_env() != 0:
        return None
    run_id = None
    for node in logger_cfg.values():
        if node is None or "WandbLogger" not in str(node.get("_target_", "")):
            continue
        if run_id is None:
            run_id = node.get("id") or _known_run_id(Path(run_dir), recorded)
        with open_dict(node):
            node.id, node.resume = run_id, "allow"
    if run_id is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / WANDB_ID_FILE).write_text(run_id + "\n")
    return run_id


def _known_run_id(run_dir: Path, recorded: Mapping[str, Any] | None) -> str:
    stored = run_dir / WANDB_ID_FILE
    if stored.is_file() and stored.read_text().strip():
        return stored.read_text().strip()
    for node in ((recorded or {}).get("logger") or {}).values():
        if isinstance(node, Mapping) and node.get("id"):
            return str(node["id"])
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id format
