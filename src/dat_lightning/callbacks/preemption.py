"""Preemption and resumption: nothing of a run is lost when the machine is taken away.

* SIGTERM (sent by most schedulers and by ``kill``) and SIGUSR1 (SLURM's advance warning with
  ``#SBATCH --signal=USR1@120``) only set a flag. At the end of the current training step the
  :class:`Preemption` callback writes ``checkpoints/last.ckpt`` (atomically, see
  :mod:`dat_lightning.checkpoints.writing`) and stops the run with :class:`Preempted`; the CLI then exits with
  ``128 + signal`` (143 for SIGTERM) and one line saying where the checkpoint is. On SLURM the
  job is requeued (``scontrol requeue``).
* The signal cannot be lost: data-loader workers leave it to the training process, and a
  watchdog thread ends the process (``128 + signal``, naming the last checkpoint) on a second
  signal, when the training process is blocked in native code, or when no save came within
  ``grace_s`` seconds (:mod:`.signal_watchdog`).
* The next launch of the same command finds that checkpoint: the run directory is derived from
  the command-line overrides (``outputs/<task_name>/<overrides>``, see ``conf/hydra/default.yaml``)
  and ``ckpt_path: last`` (the default) resumes from ``<run dir>/checkpoints/last.ckpt`` when it
  exists (:func:`dat_lightning.cli.run_directory.resolve_ckpt_path`).

The training process's random state is checkpointed by the module itself, with or without this
callback (:func:`dat_lightning.data.order.training_rng_state`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dat_lightning.callbacks.signal_watchdog import SignalWatchdog
from dat_lightning.divergence import latest_checkpoint

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class Preempted(Exception):
    """The run stopped on a signal after saving ``checkpoint``."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum = int(signum)
        self.checkpoint = checkpoint
        name = signal.Signals(self.signum).name
        super().__init__(
            f"stopped by {name}: checkpoint saved to {checkpoint}. Run the same command again to "
            f"resume from it (or pass ckpt_path={checkpoint})."
        )

    @property
    def exit_code(self) -> int:
        """The shell's convention for "terminated by signal N"."""
        return 128 + self.signum


class Preemption(Checkpoint):
    """Save a resumable checkpoint and stop when a preemption signal arrives.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass so that Lightning runs it after
    the other callbacks of a step (EMA update, curriculum): the checkpoint holds the complete
    state after the step. Signals are honoured at the end of a training step or of an epoch
    (after validation and the epoch-end callbacks), never mid-step. A
    :class:`~.signal_watchdog.SignalWatchdog` ends the process when that cannot happen in time: a
    second signal, a training process blocked in native code, no save within ``grace_s``.

    Args:
        dirpath: folder of the checkpoint (the run's ``checkpoints/``).
        filename: its name; ``last.ckpt`` is what ``ckpt_path: last`` resumes from.
        signals: signal names to handle.
        slurm_requeue: under SLURM (``SLURM_JOB_ID`` set), requeue the job after saving.
        grace_s: seconds from the first signal within which the run must have saved and stopped.
        responsive_s: seconds within which the training process must notice a signal.
    """

    def __init__(
        self,
        dirpath: str,
        filename: str = "last.ckpt",
        signals: tuple[str, ...] | list[str] = DEFAULT_SIGNALS,
        slurm_requeue: bool = True,
        grace_s: float = 60.0,
        responsive_s: float = 5.0,
    ) -> None:
        self.path = Path(dirpath) / filename
        self.signals = [getattr(signal, name) for name in signals]
        self.slurm_requeue = slurm_requeue
        self.grace_s, self.responsive_s = float(grace_s), float(responsive_s)
        self.signal_received: int | None = None
        self._saving = False
        self._previous_handlers: dict[int, Any] = {}
        self._watchdog: SignalWatchdog | None = None

    # -- signal handling ----------------------------------------------------------------------

    def _handle(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the training process: only set a flag.
        self.signal_received = signum

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Installed here, after Lightning registered its own SIGTERM handler (which would stop
        # the run without a checkpoint, possibly in the middle of validation); restored at the end.
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("Preemption: not in the main thread, signal handlers not installed.")
            return
        for signum in self.signals:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)
        launcher = trainer.strategy.launcher
        self._watchdog = SignalWatchdog(
            self.signals, acknowledged=lambda: self.signal_received is not None,
            saving=lambda: self._saving, last_checkpoint=lambda: latest_checkpoint(trainer),
            children=lambda: list(getattr(launcher, "procs", None) or []),
            grace_s=self.grace_s, responsive_s=self.responsive_s)
        self._watchdog.start()
        names = ", ".join(signal.Signals(s).name for s in self.signals)
        rank_zero_info(f"Preemption: on {names} the run saves {self.path} at the end of the step and stops.")

    def _restore_handlers(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:  # a signal after the last save point still stops the process, after saving
            self._stop_if_signalled(trainer)
        finally:
            self._restore_handlers()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    # -- saving and stopping ------------------------------------------------------------------

    def _stop_if_signalled(self, trainer: Trainer) -> None:
        requested = self.signal_received is not None
        if trainer.world_size > 1:  # a signal seen by any rank stops all of them together
            requested = bool(trainer.strategy.reduce_boolean_decision(requested, all=False))
        if not requested:
            return
        signum = self.signal_received or signal.SIGTERM
        self._saving = True
        try:  # the full training state (weights_only=False here means: not just the weights)
            trainer.save_checkpoint(self.path, weights_only=False)  # collective under DDP; rank 0 writes
        finally:
            self._saving = False
        rank_zero_info(f"Preemption ({signal.Signals(signum).name}): saved {self.path}.")
        if self.slurm_requeue and os.environ.get("SLURM_JOB_ID") and trainer.is_global_zero:
            _slurm_requeue()
        raise Preempted(signum, self.path)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        try:
            self._stop_if_signalled(trainer)
        except Preempted:
            _log_the_step(trainer)  # its weights are in the checkpoint: its curves go with them
            raise

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_if_signalled(trainer)


def _log_the_step(trainer: Trainer) -> None:
    """Hand the interrupted step's metrics to the loggers, as Lightning does right after this hook
    (a private call, so guarded: without it the resumed curves miss that one step)."""
    try:
        trainer._logger_connector.update_train_step_metrics()
    except Exception as err:  # noqa: BLE001 - never let logging stop a preemption save
        rank_zero_warn(f"Preemption: the interrupted step's metrics were not logged ({err!r}).")


def _slurm_requeue() -> None:
    job = os.environ["SLURM_JOB_ID"]
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as err:
        rank_zero_warn(f"Preemption: could not requeue SLURM job {job}: {err}")
        return
    if result.returncode == 0:
        rank_zero_info(f"Preemption: requeued SLURM job {job}.")
    else:
        rank_zero_warn(f"Preemption: `scontrol requeue {job}` failed: {result.stderr.strip()}")
