"""Preemption and resumption: nothing of a run is lost when the machine is taken away.

* SIGTERM (sent by most schedulers and by ``kill``) and SIGUSR1 (SLURM's advance warning with
  ``#SBATCH --signal=USR1@120``) only set a flag. At the end of the current training step the
  :class:`Preemption` callback writes ``checkpoints/last.ckpt`` (atomically, see
  :mod:`.checkpoint_io`) and stops the run with :class:`Preempted`; the CLI then exits with
  ``128 + signal`` (143 for SIGTERM) and one line saying where the checkpoint is. On SLURM the
  job is requeued (``scontrol requeue``).
* The signal cannot be lost: data-loader workers leave it to the training process, and a
  watchdog thread ends the process (``128 + signal``, naming the last checkpoint) on a second
  signal, when the training process is blocked in native code, or when no save came within
  ``grace_s`` seconds (:mod:`.signal_watchdog`).
* The next launch of the same command finds that checkpoint: the run directory is derived from
  the command-line overrides (``outputs/<task_name>/<overrides>``, see ``conf/hydra/default.yaml``)
  and ``ckpt_path: last`` (the default) resumes from ``<run dir>/checkpoints/last.ckpt`` when it
  exists (:func:`resolve_ckpt_path`).

The callback also checkpoints the global torch RNG state, so randomness drawn in the training
process (e.g. a PGD random start) continues as if the run had never stopped.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from omegaconf import OmegaConf

from dat_lightning.checkpoints import CheckpointError
from dat_lightning.reliability.divergence import latest_checkpoint
from dat_lightning.reliability.signal_watchdog import SignalWatchdog

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
MAX_RUN_DIR_NAME = 120


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
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_if_signalled(trainer)

    # -- RNG state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch_rng" in state_dict:
            torch.set_rng_state(state_dict["torch_rng"])
        if "cuda_rng" in state_dict and torch.cuda.is_available():
            states = state_dict["cuda_rng"]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)


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


def register_run_dir_resolver() -> None:
    """``${run_dir_name:${run_name},${hydra.job.override_dirname}}`` for ``hydra.run.dir``."""
    if not OmegaConf.has_resolver("run_dir_name"):
        OmegaConf.register_new_resolver("run_dir_name", run_dir_name)
