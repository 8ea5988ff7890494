"""Data loading that survives trouble: unreadable images, and signals meant for the training process.

Unreadable images fail with the file's path, or are skipped and counted (``data.on_corrupt_image``).

Dataset readers raise :class:`~dat_lightning.data.datasets.CorruptImageError` naming the file.
In a DataLoader worker that error travels to the training process, which re-raises it with the
worker's traceback (the path included); nothing hangs. With ``skip`` the item is replaced by the
next readable one (deterministically, so a resumed run sees the same replacement), a warning names
the file, and a counter shared by all workers counts the skips.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Any

from torch.utils.data import Dataset

from dat_lightning.data.datasets import CorruptImageError

log = logging.getLogger(__name__)

CORRUPT_IMAGE_POLICIES = ("fail", "skip")
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

def worker_settings(num_workers: int) -> dict[str, Any]:
    """The DataLoader keyword arguments of every loader of ours with ``num_workers`` workers.

    Each worker leaves preemption signals to the training process
    (:func:`leave_preemption_to_the_parent`). With the ``fork`` start method (Linux before Python
    3.14) the workers are also started with those signals blocked, so a group signal that arrives
    while a worker is still starting, before its ``worker_init_fn`` runs, waits for that function
    instead of killing the worker (the training process then stopped with "DataLoader worker
    exited unexpectedly" instead of saving).
    """
    if num_workers <= 0:
        return {}
    settings: dict[str, Any] = {"worker_init_fn": leave_preemption_to_the_parent}
    if multiprocessing.get_start_method() == "fork":
        settings["multiprocessing_context"] = _STARTED_WITH_PREEMPTION_BLOCKED
    return settings


class _ForkWithPreemptionBlocked(multiprocessing.context.ForkProcess):
    def start(self) -> None:
        # A forked child inherits the signal mask of the thread that forks; only that thread's
        # mask changes here, and a signal for the training process meanwhile waits until the end.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class _ForkContextWithPreemptionBlocked(multiprocessing.context.ForkContext):
    Process = _ForkWithPreemptionBlocked


_STARTED_WITH_PREEMPTION_BLOCKED = _ForkContextWithPreemptionBlocked()


def leave_preemption_to_the_parent(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: a preemption signal is the training process's.

    SIGTERM or SIGUSR1 sent to the whole process group (SLURM, ``timeout``, ``kill -- -PGID``) must
    not end a worker before the training process has saved, so the worker blocks both and a thread
    reads them with their sender: from the worker's parent (the loader ending its workers with
    ``terminate()``, or multiprocessing doing so at exit) the worker exits at once; from anyone
    else it is ignored. Ignoring SIGTERM outright made every such ``terminate()`` fail: an
    abandoned loader then cost 10 s per worker to shut down, and a process exiting with one never
    ended. The worker also drops the wakeup socket it inherited at fork, so nothing it receives is
    mistaken for a signal to the training process.
    """
    signal.set_wakeup_fd(-1)
    # Before any other thread of the worker starts: threads inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    threading.Thread(target=_exit_when_the_parent_signals, args=(os.getppid(),),
                     name="preemption-signals", daemon=True).start()


def _exit_when_the_parent_signals(parent_pid: int) -> None:
    while True:
        if signal.sigwaitinfo(PREEMPTION_SIGNALS).si_pid == parent_pid:
            # Status 0: PyTorch's SIGCHLD handler would report any other as a crashed worker.
            os._exit(0)


def check_policy(policy: str) -> str:
    if policy not in CORRUPT_IMAGE_POLICIES:
        raise ValueError(f"data.on_corrupt_image must be one of {CORRUPT_IMAGE_POLICIES}, got {policy!r}")
    return policy


class SkipCorrupt(Dataset):
    """Items of ``dataset``; an unreadable one is replaced by the next index's item.

    Keys are ints or ``(index, seed)`` pairs (:class:`~.resumable_data.SeededItems`). After
    ``max_consecutive`` unreadable images in a row the error is raised after all: that is a broken
    folder, not a few bad files.
    """

    def __init__(self, dataset: Dataset, max_consecutive: int = 16) -> None:
        self.dataset = dataset
        self.max_consecutive = max_consecutive
        # Shared memory: workers increment it, the training process reads it.
        self.skipped = multiprocessing.Value("q", 0)

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def num_skipped(self) -> int:
        return int(self.skipped.value)

    def __getitem__(self, key: int | tuple[int, Any]) -> Any:
        index, rest = (key, None) if isinstance(key, int) else (key[0], key[1:])
        last_error: CorruptImageError | None = None
        for attempt in range(self.max_consecutive):
            current = (index + attempt) % len(self)
            try:
                return self.dataset[current if rest is None else (current, *rest)]
            except CorruptImageError as err:
                last_error = err
                with self.skipped.get_lock():
                    self.skipped.value += 1
                    count = self.skipped.value
                log.warning("Skipped an unreadable image (data.on_corrupt_image=skip, %d so far): %s", count, err)
        raise CorruptImageError(
            f"{self.max_consecutive} consecutive unreadable images from index {index} on, the last: "
            f"{last_error}. Check the dataset folder, or re-extract it."
        ) from last_error
