"""One launch per run directory, and a resume only under the config it was saved with.

The run directory is keyed by the command (``outputs/<task>/<overrides>``), so launching the same
command twice, or two commands with the same ``run_name``, would otherwise train in one folder at
once and overwrite each other's checkpoints and ``.hydra`` record without a word. Here:

- the launch that starts first holds an exclusive lock on ``<run dir>/.lock`` (``flock``, released
  by the kernel when the process ends, however it ends); a second launch is refused with the
  holder's pid and how to start a separate run;
- only the lock holder writes the ``.hydra`` record (Hydra's own writing is off:
  ``hydra.output_subdir: null`` in ``conf/hydra/default.yaml``) and removes temporary checkpoint
  files a killed write left behind;
- a resumed fit compares the config recorded in its checkpoint with the new one and refuses a
  difference outside :data:`RESUMABLE_KEYS` (:func:`check_resume`), unless ``force_resume=true``.

Only the process of global rank 0 locks and writes; the other ranks of a multi-process launch
(started by Lightning or SLURM in the same directory) find their rank in the environment.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from dat_lightning.checkpoints import CheckpointError
from dat_lightning.cli.config_checks import ConfigError

LOCK_NAME = ".lock"
_held_locks: dict[Path, int] = {}  # open lock descriptors, kept for the life of the process

# Keys that may differ between a checkpoint's config and the launch that resumes it: where the
# run stops, where files go and what is printed at the end, none of which changes training.
RESUMABLE_KEYS = ("ckpt_path", "force_resume", "run_name", "stage2_epochs", "trainer.max_epochs",
                  "paths", "summary", "logger", "data.num_workers", "trainer.enable_progress_bar")


class RunDirectoryBusy(ConfigError):
    """Another launch holds the run directory."""


def global_rank_from_env() -> int:
    """This process's global rank as launchers set it (torchrun, SLURM, Lightning's children)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def lock(directory: Path) -> None:
    """Hold ``<directory>/.lock`` for the rest of this process, or raise :class:`RunDirectoryBusy`."""
    directory = Path(directory).resolve()
    if directory in _held_locks:
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = path.read_text().strip() or "a process that has not written its pid yet"
        os.close(fd)
        raise RunDirectoryBusy(
            f"the run directory {directory} is in use by another launch ({holder}). Wait for it "
            "to finish (the same command then resumes it), or start a separate run with "
            "run_name=NAME."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()}, since "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n").encode())
    _held_locks[directory] = fd


def write_hydra_record(directory: Path, cfg: DictConfig) -> None:
    """``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml``, as Hydra itself writes them."""
    if not HydraConfig.initialized():
        return
    folder = Path(directory) / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    hydra_cfg = HydraConfig.get()
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed (``.NAME.tmp-PID``).

    Safe under the lock: no other launch writes here.
    """
    stale = sorted((Path(directory) / "checkpoints").glob(".*.tmp-*"))
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        rank_zero_info(f"Removed {len(stale)} temporary file(s) of interrupted checkpoint writes: "
                       f"{', '.join(p.name for p in stale)}")
    return stale


def claim(directory: Path, cfg: DictConfig) -> None:
    """What the launch of global rank 0 does first in its run directory (see the module docstring)."""
    if global_rank_from_env() != 0:
        return
    lock(directory)
    write_hydra_record(directory, cfg)
    remove_stale_temporaries(directory)


# -- resuming -------------------------------------------------------------------------------------


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """The checkpoint a fit starts from.

    ``None`` starts afresh; ``"last"`` resumes from ``<output_dir>/checkpoints/last.ckpt`` when
    this run directory has one (otherwise starts afresh); any other value is a path that must
    exist.
    """
    if ckpt_path is None or str(ckpt_path).lower() in ("", "none", "null"):
        return None
    if str(ckpt_path) == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            rank_zero_info(
                f"Resuming from {last}, the last checkpoint of this run directory "
                "(ckpt_path=null starts over, run_name=NAME starts a separate run)."
            )
            return str(last)
        return None
    if not Path(ckpt_path).is_file():
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not exist. Give the path of a Lightning checkpoint "
            "(e.g. outputs/<task>/<run>/checkpoints/last.ckpt), `last` for this run directory's "
            "last checkpoint, or null to start afresh."
        )
    return str(ckpt_path)



def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for a nested config container."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out |= flatten_config(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: tree}


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_KEYS)


def config_differences(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, new)}`` for every setting outside :data:`RESUMABLE_KEYS` that differs.

    Paths under a recorded ``paths.*`` directory (the run directory, the cache) are compared as if
    they were under the new one, so a checkpoint resumed in another directory, or with another
    ``DAT_CACHE``, differs only where it really does.
    """
    old_flat, new_flat = flatten_config(recorded), flatten_config(new)
    moves = [(str(old_flat[key]).rstrip("/"), str(new_flat[key]).rstrip("/"))
             for key in old_flat if key.startswith("paths.") and new_flat.get(key)]
    # the longest recorded directory first (the cache may lie inside the run directory); never "/"
    moves = sorted((pair for pair in moves if pair[0]), key=lambda pair: len(pair[0]), reverse=True)

    def moved(value: Any) -> Any:
        if isinstance(value, str):
            for old_dir, new_dir in moves:
                if value == old_dir or value.startswith(old_dir + "/"):
                    return new_dir + value[len(old_dir):]
        return value

    missing = object()

    def same(key: str) -> bool:  # unchanged as written (a file given by name), or moved with its directory
        old_value, new_value = old_flat.get(key, missing), new_flat.get(key, missing)
        return old_value == new_value or moved(old_value) == new_value

    return {
        key: (old_flat.get(key), new_flat.get(key))
        for key in sorted(set(old_flat) | set(new_flat))
        if not _resumable(key) and not same(key)
    }


def check_resume(ckpt_path: str | None, checkpoint: Mapping[str, Any] | None, new_config: Mapping[str, Any],
                 force: bool = False) -> None:
    """Refuse to resume ``ckpt_path`` (read as ``checkpoint``) under a config other than the one it
    was saved with."""
    if ckpt_path is None or checkpoint is None:
        return
    recorded = checkpoint.get("dat_config")
    if not isinstance(recorded, Mapping):
        return  # not one of ours: nothing recorded to compare with
    differences = config_differences(recorded, new_config)
    if not differences:
        return
    shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(differences.items())[:12])
    more = f" ... ({len(differences)} in all)" if len(differences) > 12 else ""
    if force:
        rank_zero_info(f"force_resume=true: resuming {ckpt_path} under a changed config ({shown}{more}).")
        return
    raise ConfigError(
        f"ckpt_path={ckpt_path}: the config of this launch differs from the one it was saved with, "
        f"in {len(differences)} setting(s): {shown}{more}. Resuming would continue the saved "
        "optimizer, curriculum and data order under other settings. Launch with the same "
        "settings; or start afresh (ckpt_path=null, or run_name=NAME for a separate run); or start "
        "stage two from its weights (init_ckpt=<it> stage1_epochs=0); or add force_resume=true "
        f"to continue anyway. Settings that may change on resume: {', '.join(RESUMABLE_KEYS)}."
    )
