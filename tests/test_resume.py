"""Exact resume (issue 4, point 1).

Guarantees:
- A stage-two run interrupted mid-epoch (a real SIGUSR1 to the training process; the Preemption
  callback saves ``checkpoints/last.ckpt`` at the end of the step and stops the run) and resumed
  from that checkpoint ends with the same weights, EMA weights, optimizer and LR-scheduler state,
  curriculum T and AUC window, and global step as an uninterrupted run of the same length, also
  in the middle of an LR warm-up.
- The resumed steps see exactly the batches the uninterrupted run saw at those steps (same data
  order, same augmentation: each item carries its own augmentation seed), and BatchNorm is still
  frozen in stage two after resuming.
- Randomness drawn in the training process (here a PGD random start) continues as if the run had
  never stopped: the global torch RNG state is part of the checkpoint.
- The samplers' resume skip and per-item seeds: a skipped epoch is the tail of the full one.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from lightning.pytorch import Callback

from dat_lightning.batchnorm import has_training_batchnorm
from dat_lightning.callbacks import GenStepCurriculum, WarmupEMA
from dat_lightning.callbacks.preemption import Preempted
from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.cli.train import build
from dat_lightning.data.order import SeededRandomSampler, resume_point
from helpers import NO_FID, compose_config

STEPS_PER_EPOCH = 4
INTERRUPT_AT = 6  # global step: the second batch of the stage-two epoch
RUN = (
    *NO_FID,
    "callbacks.sample_grid=null",
    "stage1_epochs=1",
    "stage2_epochs=1",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
    "data.num_workers=1",  # augmentation in worker processes, whose RNG a resumed run does not share
    "model.clf_attack.random_init=true",  # draws from the global RNG every step
    # T grows when a 3-batch AUC window is full: the window is half full at the interruption.
    "callbacks.curriculum.auc_threshold=0.0",
    "callbacks.curriculum.min_imgs_per_threshold=48",
    "callbacks.curriculum.max_steps=3",
    # an LR warm-up over the whole run: the resumed steps must take up its factor where it stopped
    f"model.lr_warmup_steps={2 * STEPS_PER_EPOCH + 1}",
)



class BatchLog(Callback):
    """Per global step: a fingerprint of the three streams' batch and whether BN trains."""

    def __init__(self) -> None:
        self.batches: dict[int, tuple[float, ...]] = {}
        self.bn_training: dict[int, bool] = {}
        self.stage: dict[int, int] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        (x, y), (x_hat, y_hat), x0 = batch["clf"], batch["gen"], batch["ood"]
        self.batches[step] = tuple(float(t.double().sum()) for t in (x, y, x_hat, y_hat, x0))
        self.bn_training[step] = has_training_batchnorm(pl_module.net)
        self.stage[step] = pl_module.stage


class SignalAt(Callback):
    """Send ``signum`` to this process at the end of global step ``step``."""

    def __init__(self, step: int, signum: int = signal.SIGUSR1) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(run_dir, callbacks=(), ckpt_path=None):
    """Fit the tiny run in ``run_dir``; test callbacks go first (before the Checkpoint callbacks,
    where Lightning puts them for callbacks given to the Trainer)."""
    datamodule, module, trainer = build(compose_config(run_dir, RUN))
    trainer.callbacks[:0] = callbacks
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return module, trainer


def final_state(module, trainer) -> dict[str, dict[str, torch.Tensor]]:
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, WarmupEMA))
    curriculum = next(cb for cb in trainer.callbacks if isinstance(cb, GenStepCurriculum))
    state = {
        "weights": module.net.state_dict(),
        "ema": ema._average_model.module.state_dict(),
        "curriculum": {"T": torch.tensor(curriculum.state.steps),
                       "window": torch.tensor(curriculum.state.window),
                       "module_T": torch.tensor(module.gen_steps)},
        "global_step": {"step": torch.tensor(trainer.global_step)},
    }
    for i, opt in enumerate(trainer.optimizers):
        state[f"optimizer{i}"] = {
            f"{p}.{k}": v for p, s in opt.state_dict()["state"].items() for k, v in s.items()
        } | {"lr": torch.tensor(opt.param_groups[0]["lr"])}
    for i, config in enumerate(trainer.lr_scheduler_configs):
        state[f"scheduler{i}"] = {k: torch.tensor(v) for k, v in config.scheduler.state_dict().items()
                                  if isinstance(v, int | float)}
    return state


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for part in a:
        assert a[part].keys() == b[part].keys(), part
        for key in a[part]:
            x, y = a[part][key], b[part][key]
            assert x.shape == y.shape, (part, key)
            assert torch.allclose(x.double(), y.double(), rtol=1e-5, atol=1e-7), (part, key)


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path):
    full_log = BatchLog()
    full_module, full_trainer = fit(tmp_path / "full", [full_log])
    total = 2 * STEPS_PER_EPOCH
    assert full_trainer.global_step == total
    assert [full_log.stage[s] for s in range(1, total + 1)] == [1] * 4 + [2] * 4
    assert len({full_log.batches[s] for s in full_log.batches}) == total  # the steps differ

    with pytest.raises(Preempted) as stopped:
        fit(tmp_path / "cut", [SignalAt(INTERRUPT_AT)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    assert stopped.value.checkpoint == last and stopped.value.signum == signal.SIGUSR1
    ckpt = read_checkpoint(last)  # weights_only=True
    assert ckpt["global_step"] == INTERRUPT_AT
    assert ckpt["DATDataModule"] == {"epoch": 1, "batches": 2, "epoch_batches": STEPS_PER_EPOCH}
    assert len(ckpt["callbacks"]["GenStepCurriculum"]["window"]) == 2  # mid-window

    resumed_log = BatchLog()
    module, trainer = fit(tmp_path / "cut", [resumed_log], ckpt_path=str(last))
    assert sorted(resumed_log.batches) == list(range(INTERRUPT_AT + 1, total + 1))
    for step in resumed_log.batches:
        assert resumed_log.batches[step] == full_log.batches[step], f"different batch at step {step}"
        assert not resumed_log.bn_training[step]  # stage two: BatchNorm still frozen
    assert_same_state(final_state(module, trainer), final_state(full_module, full_trainer))
    assert module.gen_steps == 2  # the half-full window completed after resuming


def test_a_resumed_epoch_is_the_tail_of_the_full_epoch():
    full = SeededRandomSampler(50, seed=3, stream=1, with_seeds=True)
    full.set_epoch(2)
    items = list(full)
    assert len(items) == 50 and sorted(i for i, _ in items) == list(range(50))
    assert len({s for _, s in items}) == 50  # one seed per item
    resumed = SeededRandomSampler(50, seed=3, stream=1, with_seeds=True)
    resumed.set_epoch(2)
    resumed.skip_once(2, 20)
    assert list(resumed) == items[20:]
    assert list(resumed) == items  # the skip applies once
    other = SeededRandomSampler(50, seed=3, stream=1, with_seeds=True)
    other.skip_once(1, 20)  # a skip recorded for another epoch is dropped
    other.set_epoch(2)
    assert list(other) == items
    # the seeds are a function of (seed, stream, epoch, position), not of the indices drawn
    assert [s for _, s in items] == full.item_seeds(2).tolist()
    assert full.item_seeds(3).tolist() != full.item_seeds(2).tolist()


def test_resume_point_after_a_finished_epoch_is_the_next_epoch():
    assert resume_point({"epoch": 3, "batches": 2, "epoch_batches": 5}) == (3, 2)
    assert resume_point({"epoch": 3, "batches": 5, "epoch_batches": 5}) == (4, 0)
    assert resume_point({"epoch": 3, "batches": 0, "epoch_batches": 5}) == (3, 0)


def test_stage_one_checkpoint_does_not_depend_on_the_stage_two_length(tmp_path):
    """`make reproduce` trains stage one alone (stage2_epochs=0) and starts stage two from its
    checkpoint: that checkpoint must be the one a two-stage fit writes at the stage boundary."""
    from dat_lightning.cli.train import run

    states = []
    for stage2_epochs in (0, 1):
        out = tmp_path / f"stage2_{stage2_epochs}"
        run(compose_config(out, [*NO_FID, "callbacks.sample_grid=null", "stage1_epochs=2",
                                 f"stage2_epochs={stage2_epochs}", "trainer.limit_train_batches=3"]))
        ckpt = read_checkpoint(out / "checkpoints" / "stage1.ckpt")
        states.append((ckpt["global_step"], ckpt["state_dict"], ckpt["current_model_state"]))
    (step_a, ema_a, raw_a), (step_b, ema_b, raw_b) = states
    assert step_a == step_b == 6
    for a, b in ((ema_a, ema_b), (raw_a, raw_b)):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rank_shares_interleave_one_global_order_and_resume_on_the_same_items():
    """Under DDP each rank takes ``order[rank::W]`` of the stream's one order (not reshuffled, as
    Lightning's sampler wrapper would), so a resumed rank continues exactly with its own items."""
    def share(rank: int, world: int = 3) -> SeededRandomSampler:
        return SeededRandomSampler(50, seed=3, stream=1, with_seeds=True, num_replicas=world, rank=rank)

    order = list(share(0, world=1))
    shares = [list(share(r)) for r in range(3)]
    assert [len(share(r)) for r in range(3)] == [16, 16, 16] and [len(s) for s in shares] == [16, 16, 16]
    assert all(shares[r] == order[r:48:3] for r in range(3))  # the tail (50 % 3 items) is cut
    for r in range(3):  # two batches of 4 per rank done: 24 items of the global order consumed
        resumed = share(r)
        resumed.skip_once(0, 2 * 4 * 3)
        assert list(resumed) == shares[r][8:]
