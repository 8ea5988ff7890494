"""Divergence guard (issue 4, point 3).

Guarantees:
- A training step whose loss or gradients are not finite is skipped: the weights, the EMA
  weights, the optimizer state, the curriculum (T and AUC window), the global step and (stage
  one) the BatchNorm running statistics are exactly what they were before it; training goes on.
- Skipped steps are counted and logged (``train/skipped_steps``); the real and generated
  energies are logged every step (``train/energy_real``, ``train/energy_fake``).
- After ``model.max_bad_steps`` consecutive bad steps training stops with a DivergenceError that
  names the last good checkpoint and the likely causes (BatchNorm, chain step size, learning rate).
- The finiteness test catches NaN and inf gradients but not large finite ones.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from lightning.pytorch import Callback

from dat_lightning.callbacks import GenStepCurriculum, WarmupEMA
from dat_lightning.cli.train import build
from dat_lightning.divergence import DivergenceError, DivergenceGuard, is_finite_step
from helpers import NO_FID, compose_config

RUN = (*NO_FID, "callbacks.sample_grid=null", "stage1_epochs=1", "stage2_epochs=1",
       "trainer.limit_train_batches=3")



def copies(tensors) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


class NaNOnCommand(Callback):
    """Makes the classifier return NaN logits during the batches (counted from 0) in ``poison``.

    It also snapshots the training state at every batch start, i.e. after all hooks of the
    previous step (EMA and curriculum update in their batch-end hooks), and keeps each step's
    outputs: ``states[k]`` is the state before batch k, ``states[k + 1]`` the state after it.
    """

    def __init__(self, poison) -> None:
        self.poison = set(poison)
        self.on = False
        self.states: list[dict] = []
        self.steps: list[dict] = []

    def setup(self, trainer, pl_module, stage):
        pl_module.net.register_forward_hook(lambda m, i, out: out * math.nan if self.on else out)

    def snapshot(self, trainer, pl_module) -> dict:
        ema = next(cb for cb in trainer.callbacks if isinstance(cb, WarmupEMA))
        curriculum = next(cb for cb in trainer.callbacks if isinstance(cb, GenStepCurriculum))
        return {
            "params": copies(pl_module.net.parameters()),
            "buffers": copies(pl_module.net.buffers()),
            "ema": copies(ema._average_model.parameters()),
            "opt": [copies(v for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
                    for opt in trainer.optimizers],
            "curriculum": (curriculum.state.steps, curriculum.state.window),
            "step": trainer.global_step,
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.states.append(self.snapshot(trainer, pl_module))
        self.on = len(self.steps) in self.poison

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({"poisoned": self.on, "stage": pl_module.stage, "outputs": dict(outputs)})
        self.on = False


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def fit(tmp_path, callback, overrides=()):
    datamodule, module, trainer = build(compose_config(tmp_path, [*RUN, *overrides]))
    trainer.callbacks[:0] = [callback]  # before EMA and curriculum: it switches NaN on first
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    return module, trainer


def test_non_finite_steps_are_skipped_counted_and_training_goes_on(tmp_path):
    nan = NaNOnCommand(poison={1, 4})  # one stage-one and one stage-two step, mid-epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module, trainer = fit(tmp_path, nan)
    skipped = [str(w.message) for w in caught if "Skipped a training step" in str(w.message)]
    # each warning names its own batch (the global step does not advance on a skipped step)
    assert len(skipped) == 2
    assert "batch 1 of epoch 0, training batch 2 of the run" in skipped[0]
    assert "batch 1 of epoch 1, training batch 5 of the run" in skipped[1]
    assert [r["poisoned"] for r in nan.steps] == [False, True, False, False, True, False]
    assert [r["stage"] for r in nan.steps] == [1, 1, 1, 2, 2, 2]
    for k in (0, 1, 3, 4):  # steps followed by another in the same epoch
        before, after, step = nan.states[k], nan.states[k + 1], nan.steps[k]
        if step["poisoned"]:
            assert same(before["params"], after["params"])
            assert same(before["buffers"], after["buffers"])  # BN statistics restored (stage one)
            assert same(before["ema"], after["ema"])
            assert all(same(a, b) for a, b in zip(before["opt"], after["opt"], strict=True))
            assert before["curriculum"] == after["curriculum"]
            assert after["step"] == before["step"]
            assert "auc" not in step["outputs"]
        else:  # a normal step does update all of them
            assert not same(before["params"], after["params"])
            assert not same(before["ema"], after["ema"])
            assert after["step"] == before["step"] + 1
            assert all(torch.isfinite(p).all() for p in after["params"])
            if step["stage"] == 2:
                assert after["curriculum"] != before["curriculum"]
    assert [float(r["outputs"]["skipped_steps"]) for r in nan.steps] == [0, 1, 1, 1, 2, 2]
    assert trainer.global_step == 4 and trainer.current_epoch == 2  # the run finished
    logged = trainer.logged_metrics
    assert float(logged["train/skipped_steps"]) == 2
    assert {"train/energy_real", "train/energy_fake"} <= set(logged)


def test_too_many_bad_steps_in_a_row_stop_with_the_last_checkpoint_and_causes(tmp_path):
    nan = NaNOnCommand(poison={3, 4, 5})  # all of stage two
    with pytest.raises(DivergenceError) as stopped:
        fit(tmp_path, nan, ["model.max_bad_steps=2"])
    message = str(stopped.value)
    last = tmp_path / "checkpoints" / "last.ckpt"  # written at the end of the good epoch
    assert last.is_file() and f"Last good checkpoint: '{last}'" in message
    assert "2 consecutive steps" in message and "stage 2" in message
    for cause in ("BatchNorm", "model.gen_attack.step_size", "model.optimizer_stage2.lr"):
        assert cause in message
    assert "energy_fake=" in message
    # stage one, one skipped step, then the second bad one raised before its batch-end hooks
    assert [step["poisoned"] for step in nan.steps] == [False, False, False, True]


def test_finiteness_check_flags_nan_and_inf_but_not_large_values():
    w = torch.nn.Parameter(torch.ones(3))
    for grad, ok in ((torch.tensor([1e30, -1e30, 0.0]), True), (torch.tensor([0.0, math.inf, 0.0]), False),
                     (torch.tensor([math.nan, 0.0, 0.0]), False)):
        w.grad = grad
        assert is_finite_step(torch.tensor(1.0), [w]) is ok
    w.grad = torch.zeros(3)
    assert not is_finite_step(torch.tensor(math.nan), [w])


def test_a_runaway_loss_is_a_bad_step_only_beyond_the_bound():
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.zeros(3)
    for loss, bound, ok in ((-2e3, 1e3, False), (1e3, 1e3, True), (999.0, 1e3, True), (-5e7, None, True)):
        assert is_finite_step(torch.tensor(loss), [w], bound) is ok
    with pytest.raises(ValueError, match="max_abs_loss must be > 0"):
        DivergenceGuard(10, 0.0)


def test_nan_samples_skip_the_fid_and_the_run_ends_without_a_crash(tmp_path):
    """One bad step (fewer than max_bad_steps) right before the epoch-end FID: the FID's samples are
    NaN. The eigenvalue routine inside FID used to crash the interpreter on them (exit 139, no
    message); now the measurement is skipped with a warning and the run ends normally."""
    from helpers import TINY_FMNIST, fault_cli_env, run_cli

    args = [*TINY_FMNIST, "stage1_epochs=1", "stage2_epochs=1", "summary.enabled=true", "summary.test_size=16",
            "summary.fid_samples=20", "+callbacks.nan={_target_: fault_callbacks.NaNLogitsFromTheLastStep}",
            f"paths.cache_dir={tmp_path}/cache"]
    result = run_cli(args, cwd=tmp_path, env=fault_cli_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "NaN from now on" in output and "Skipped a training step" in output
    assert "the generated images' features hold NaN or inf" in output and "measurement is skipped" in output
    assert "fid_cifar10_resnet18  not measured" in output  # the final summary says why


def test_fid_of_non_finite_features_is_an_error_not_a_crash():
    from dat_lightning.metrics.fid import NonFiniteFeatures
    from dat_lightning.metrics.quality import fid_from_features

    real, fake = torch.randn(20, 4), torch.randn(20, 4)
    assert math.isfinite(fid_from_features(real, fake))
    fake[3, 1] = math.nan
    with pytest.raises(NonFiniteFeatures, match="generated images' features hold NaN"):
        fid_from_features(real, fake)
    real[0, 0] = math.inf
    with pytest.raises(NonFiniteFeatures, match="real images' features"):
        fid_from_features(real, torch.randn(20, 4))


def test_a_checkpoint_with_nan_weights_is_refused_by_name(tmp_path, tiny_run_dir):
    import dat_lightning
    from dat_lightning.checkpoints import CheckpointError, read_checkpoint

    ckpt = read_checkpoint(tiny_run_dir / "checkpoints" / "last.ckpt")
    ckpt["state_dict"]["net.backbone.conv1.weight"][0] = math.nan
    torch.save(ckpt, tmp_path / "diverged.ckpt")
    with pytest.raises(CheckpointError, match=r"NaN or inf in 1 tensor\(s\): backbone.conv1.weight"):
        dat_lightning.load_classifier(tmp_path / "diverged.ckpt")
