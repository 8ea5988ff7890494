"""Checkpoint files that are never half-written and never unpickle code.

Lightning's own ``TorchCheckpointIO`` stages the bytes in a temporary file under the system temp
folder and then *moves* it over the target: across filesystems (``/tmp`` on local disk, outputs on
NFS/Lustre) that move is a copy, so a crash or preemption mid-copy leaves a truncated
``last.ckpt``. Here the temporary file sits next to the target and ``os.replace`` swaps it in, which
POSIX guarantees to be atomic: readers see the old file or the new one, nothing in between.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from dat_lightning.checkpoints import read_checkpoint


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary sibling file, fsync and ``os.replace``."""
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # persist the rename itself (the directory entry); not possible on every filesystem
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, ``weights_only=True`` reads with clear errors.

    Configured in ``conf/trainer/default.yaml`` (``plugins.checkpoint_io``, kept by every trainer config). Every checkpoint the trainer
    writes (``last.ckpt``, ``stage1.ckpt``, best-FID, the preemption save) goes through
    :func:`atomic_torch_save`; every checkpoint it resumes from goes through
    :func:`~dat_lightning.checkpoints.read_checkpoint`, which refuses pickles that need more
    than tensors and plain containers, and names truncated or corrupt files. Remote paths
    (``s3://`` ...) fall back to Lightning's fsspec implementation, still with ``weights_only``.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only is forced: nothing dat-lightning writes needs more, and an arbitrary
        # pickle could run code.
        if not _is_local(path):
            return super().load_checkpoint(path, weights_only=True)
        return read_checkpoint(str(path).removeprefix("file://"))
