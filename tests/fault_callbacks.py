"""Callbacks that make a training run fail the way real runs do, for the CLI tests.

The CLI imports them by ``_target_`` (``+callbacks.hang={_target_: fault_callbacks.WaitForever}``)
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import math
import time

import torch
from lightning.pytorch import Callback


class WaitForever(Callback):
    """At the end of the first epoch, before the epoch-end checkpoint: one process sleeps (its
    signal handlers still run); under DDP every rank waits for a message no rank sends, blocked in
    native code as in a collective that one rank never joins."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        print(f"HANGING rank {trainer.global_rank}", flush=True)
        if trainer.world_size > 1:
            torch.distributed.recv(torch.zeros(1), src=1 - trainer.global_rank)
        else:
            time.sleep(600)


class NaNLogitsFromTheLastStep(Callback):
    """From the last training batch of the first stage-two epoch on, the classifier (and its EMA
    copy) returns NaN: that step is skipped (one bad step, fewer than ``max_bad_steps``), then
    validation, the epoch-end FID and the final summary all see NaN."""

    def __init__(self) -> None:
        self.on = False

    def _poison(self, net) -> None:
        net.register_forward_hook(lambda m, i, out: out * math.nan if self.on else out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.stage == 2 and batch_idx == trainer.num_training_batches - 1 and not self.on:
            print("NaN from now on", flush=True)
            self.on = True
            self._poison(pl_module.net)
            for cb in trainer.callbacks:  # the EMA copy that grids and FID sample from
                average = getattr(cb, "_average_model", None)
                if average is not None:
                    self._poison(average.module.net)


class SignalAtStep(Callback):
    """Send ``DAT_TEST_SIGNAL`` (a signal name) to this process at the end of global step
    ``DAT_TEST_SIGNAL_STEP``, as a scheduler would: both from the environment, so that a relaunch
    of the same command (without them) runs the same config and sends nothing."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os
        import signal

        name, step = os.environ.get("DAT_TEST_SIGNAL"), os.environ.get("DAT_TEST_SIGNAL_STEP")
        if name and step and trainer.global_step == int(step):
            print(f"sending {name} at step {step}", flush=True)
            os.kill(os.getpid(), getattr(signal, name))
