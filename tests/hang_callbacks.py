"""Callbacks that make a training run hang outside a training step, for the signal tests.

The CLI imports them by ``_target_`` (``+callbacks.hang={_target_: hang_callbacks.WaitForever}``)
with ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

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
