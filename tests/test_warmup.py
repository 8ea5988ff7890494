"""The per-step linear LR warm-up of JEM, JEM++ and EB-JDAT (dat_lightning.warmup).

Guarantees:
- The factor is the authors' ``k / W`` for the step with ``k`` steps before it (0 at the first
  step), 1 from step ``W`` on and without a warm-up; negative values are refused.
- Optimizing under :func:`scaled_lr` gives the same weights, step for step, as the authors' loop,
  which writes ``lr * k / W`` into the optimizer, with SGD momentum and Adam (whose step at LR 0
  still fills their state) and an epoch decay after the warm-up; the optimizer keeps its own LR.
- In a training run of the energy methods each optimizer step uses the warmed-up LR, the optimizer
  (and so the checkpoint) holds the scheduled one, and ``train/lr`` logs the one used.
"""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from lightning.pytorch import Callback

from dat_lightning.warmup import linear_warmup_factor, scaled_lr
from helpers import fit_tiny, tiny_module


def test_factor_is_steps_before_over_warmup_then_one():
    assert [linear_warmup_factor(k, 4) for k in range(7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert linear_warmup_factor(0, 0) == 1.0 and linear_warmup_factor(37, 0) == 1.0
    assert linear_warmup_factor(250, 1000) == 0.25
    with pytest.raises(ValueError, match="warm-up must be >= 0"):
        linear_warmup_factor(3, -1)
    with pytest.raises(ValueError, match="step index must be >= 0"):
        linear_warmup_factor(-1, 10)


def test_scaled_lr_restores_the_same_values_even_when_the_step_raises():
    params = [torch.nn.Parameter(torch.ones(2))]
    opt = torch.optim.SGD([{"params": params, "lr": 0.1}, {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.3}])
    with scaled_lr(opt, 0.5):
        assert [g["lr"] for g in opt.param_groups] == [0.05, 0.15]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.3]
    with pytest.raises(RuntimeError, match="boom"), scaled_lr(opt, 0.0):
        raise RuntimeError("boom")
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.3]


def _optimizer(kind: str, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=4e-4)
    return torch.optim.Adam(params, lr=1e-2)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_training_under_scaled_lr_equals_the_authors_loop(kind):
    """The authors' loop (JEM train_wrn_ebm.py): at each epoch start a decay multiplies the group's
    LR; before each step ``if cur_iter <= warmup_iters: lr = base * cur_iter / warmup_iters`` is
    written into every group. Ours: the scheduler owns the LR, the warm-up scales one step."""
    warmup, steps_per_epoch, epochs, decay_at = 5, 3, 4, 2
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4, 3, generator=g) for _ in range(epochs * steps_per_epoch)]
    target = torch.randn(3, 2, generator=g)

    def loss(w, x):
        return ((x @ w - x @ target) ** 2).mean()

    w_ref = torch.nn.Parameter(torch.randn(3, 2, generator=torch.Generator().manual_seed(1)))
    w_ours = torch.nn.Parameter(w_ref.detach().clone())
    w_start = w_ref.detach().clone()
    opt_ref, opt_ours = _optimizer(kind, [w_ref]), _optimizer(kind, [w_ours])
    base = opt_ref.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt_ours, milestones=[decay_at], gamma=0.2)

    cur_iter = 0
    for epoch in range(epochs):
        if epoch == decay_at:
            for group in opt_ref.param_groups:
                group["lr"] = group["lr"] * 0.2
        for i in range(steps_per_epoch):
            x = data[epoch * steps_per_epoch + i]
            if cur_iter <= warmup:
                for group in opt_ref.param_groups:
                    group["lr"] = base * cur_iter / warmup
            opt_ref.zero_grad()
            loss(w_ref, x).backward()
            opt_ref.step()

            opt_ours.zero_grad()
            loss(w_ours, x).backward()
            with scaled_lr(opt_ours, linear_warmup_factor(cur_iter, warmup)):
                opt_ours.step()
            cur_iter += 1
            torch.testing.assert_close(w_ours, w_ref, rtol=0, atol=1e-7)
        sched.step()
        assert opt_ours.param_groups[0]["lr"] == pytest.approx(base * (0.2 if epoch + 1 >= decay_at else 1))
    assert (w_ours.detach() - w_start).abs().min() > 1e-4  # every weight moved: the steps did train


class LrOfEachStep(Callback):
    """The LR each optimizer step ran with, and the LR the optimizer holds after it."""

    def __init__(self) -> None:
        self.used: list[float] = []
        self.held: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0]
        step = opt.step

        def recording_step(*args, **kwargs):
            self.used.append(opt.param_groups[0]["lr"])
            return step(*args, **kwargs)

        opt.step = recording_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.held.append(trainer.optimizers[0].param_groups[0]["lr"])
        assert float(outputs["lr"]) == pytest.approx(self.used[-1])


def test_an_energy_method_run_warms_its_lr_up_per_step_from_its_config(tmp_path):
    record = LrOfEachStep()
    _, _, module, trainer = fit_tiny(tmp_path, ["method=jempp", "stage1_epochs=2", "model.buffer.size=100",
                                                "model.buffer.fit_images=300"], callbacks=[record])
    assert module.lr_warmup_steps == 1000  # JEM++'s --warmup_iters, from its method config
    assert trainer.global_step == 6
    assert record.used == pytest.approx([0.1 * k / 1000 for k in range(6)])
    assert record.held == [0.1] * 6  # the scheduled LR: what the checkpoint saves
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1


def test_dat_has_no_warmup_and_a_negative_warmup_is_refused_at_construction(tmp_path):
    assert tiny_module(tmp_path).lr_warmup_steps == 0
    with pytest.raises(InstantiationException, match="warm-up must be >= 0 steps, got -5"):
        tiny_module(tmp_path, "model.lr_warmup_steps=-5")
