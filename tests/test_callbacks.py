"""Callbacks in real (tiny) fits: frozen BatchNorm, the curriculum, EMA, sample grid and FID."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dat_lightning.batchnorm import eval_mode
from dat_lightning.callbacks import FIDCallback, GenStepCurriculum, WarmupEMA
from dat_lightning.callbacks.ema import evaluation_net, warmup_ema_decay
from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.checkpoints.loading import chain_length
from dat_lightning.models import build_classifier
from dat_lightning.sampling import pgd_sample
from helpers import NO_FID, Recorder, compose_config, fit_tiny, same_tensors, two_stage_run

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def raw_net_state(ckpt: dict) -> dict:
    """The raw (not averaged) classifier weights of a training checkpoint."""
    state = ckpt.get("current_model_state", ckpt["state_dict"])
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


@pytest.fixture(scope="module")
def fresh_init(tmp_path_factory):
    """A plain state dict of a freshly initialised WRN-10-1: a stand-in stage-one model."""
    path = tmp_path_factory.mktemp("init") / "init.pt"
    net = build_classifier("wrn10_1", num_classes=10, in_chans=1, mean=[0.286], std=[0.353])
    torch.save(net.state_dict(), path)
    return path


# ---------------------------------------------------------------------------- a two-stage fit
@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    return two_stage_run(tmp_path_factory)


def test_stage_one_updates_batchnorm_statistics(two_stage):
    rec = two_stage.recorder
    start = rec.where(hook="epoch_start", epoch=0)[0]["bn"]
    end = rec.where(hook="epoch_end", epoch=0)[0]["bn"]
    assert differs(start, end)


def test_stage_two_keeps_batchnorm_statistics_through_validation_and_sampling(two_stage):
    rec = two_stage.recorder
    stage2 = [e for e in rec.events if e["epoch"] >= 1]
    assert {e["stage"] for e in stage2} == {2}
    # Stage two starts from the stage-one EMA (statistics included) and freezes those statistics.
    frozen = rec.where(hook="epoch_start", epoch=1)[0]["bn"]
    stage_one = read_checkpoint(two_stage.dir / "checkpoints" / "stage1.ckpt")["state_dict"]
    assert same_tensors(frozen, {k: stage_one[f"net.{k}"] for k in frozen})
    assert differs(frozen, rec.where(hook="epoch_end", epoch=0)[0]["bn"])
    # Every snapshot of stage two (batch starts and ends, epoch starts and ends, i.e. before and
    # after the mid-epoch validation, the grids and FID of epoch 1) has the stage-one statistics.
    for e in stage2:
        assert same_tensors(e["bn"], frozen), (e["hook"], e["epoch"], e["batch_idx"])
    # Validation ran after the 2nd batch of each epoch and a training batch followed it; the
    # epoch-2 batches also followed the grid and FID of epoch 1.
    for epoch in (1, 2):
        hooks = [(e["hook"], e["batch_idx"]) for e in stage2 if e["epoch"] == epoch]
        at = hooks.index(("validation_end", None))
        assert hooks[at - 1] == ("batch_end", 1) and hooks[at + 1] == ("batch_start", 2)
    assert [e["batch_idx"] for e in rec.where(hook="batch_start", epoch=2)] == [0, 1, 2]
    # ... while BatchNorm's affine weights did train.
    assert differs(rec.where(hook="epoch_start", epoch=1)[0]["affine"], stage2[-1]["affine"])
    # The raw weights saved at the end agree.
    ckpt = read_checkpoint(two_stage.dir / "checkpoints" / "last.ckpt")
    saved = raw_net_state(ckpt)
    assert same_tensors({k: saved[k] for k in frozen}, frozen)


def test_sample_grid_every_epoch_and_fid_in_stage_two_only(two_stage):
    run_dir = two_stage.dir
    samples = list((run_dir).rglob("samples/*.png"))
    names = {p.name for p in samples}
    assert {"epoch_000.png", "epoch_001.png", "epoch_002.png", "final.png", "last.png"} <= names
    # The final grid is the one of the final weights (no step after the last epoch's grid).
    by_name = {p.name: p for p in samples}
    assert by_name["final.png"].read_bytes() == by_name["epoch_002.png"].read_bytes()
    fid = next(cb for cb in two_stage.trainer.callbacks if type(cb).__name__ == "FIDCallback")
    assert fid.metric_name == "fid_cifar10_resnet18"
    assert fid.last_value is not None and fid.last_value > 0
    assert (run_dir / "checkpoints" / "best-fid.ckpt").is_file()
    cached = list((run_dir / "cache" / "fid").glob("*.pt"))
    assert len(cached) == 1 and "fmnist" in cached[0].name
    logged = [line for line in (run_dir / "csv").rglob("metrics.csv")]
    header, *rows = logged[0].read_text().splitlines()
    column = header.split(",").index(fid.metric_name)
    epoch_col = header.split(",").index("epoch")
    fid_epochs = {int(float(r.split(",")[epoch_col])) for r in rows if r.split(",")[column]}
    assert fid_epochs == {1, 2}  # stage one (epoch 0) has no samples, so no FID


def test_fid_every_n_epochs_and_always_after_the_last(monkeypatch):
    """A run whose length is not a multiple of every_n_epochs still has its final model measured
    (and a best-FID checkpoint when it has a single epoch)."""
    measured = []
    fid = FIDCallback(torch.nn.Identity(), step_size=1.0, steps=1, every_n_epochs=3, stage2_only=False)
    fid.last_sample_energy = 0.0
    monkeypatch.setattr(fid, "compute", lambda trainer, *_, **__: measured.append(trainer.current_epoch) or 1.0)
    logged = []
    module = SimpleNamespace(log=lambda name, value, **_: logged.append(name))
    for max_epochs in (7, 1):
        for epoch in range(max_epochs):
            fid.on_train_epoch_end(SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, is_global_zero=True, fast_dev_run=False), module)
    assert measured == [2, 5, 6, 0]
    assert logged.count(fid.metric_name) == 4


def test_fid_logs_the_mean_energy_of_the_samples_it_scores(two_stage):
    trainer, module = two_stage.trainer, two_stage.module
    fid = next(cb for cb in trainer.callbacks if type(cb).__name__ == "FIDCallback")
    fid.compute(trainer, module, num_samples=30)
    # The same 30 samples by hand: EMA weights in eval mode, seeds ood[10000 + i] (wrapping
    # around the source), labels i % K.
    net = evaluation_net(trainer, module)
    k = module.net.num_classes
    ood = trainer.datamodule.ood
    x0 = torch.stack([ood[(10_000 + i) % len(ood)] for i in range(30)])
    y = torch.arange(30) % k
    with eval_mode(net):
        x = pgd_sample(net, x0, y, step_size=fid.step_size, steps=fid.steps)
        with torch.no_grad():
            expected = -torch.logsumexp(net(x), dim=1).mean()
    assert fid.last_sample_energy == pytest.approx(float(expected), rel=1e-5)
    # ... and it is logged wherever FID is (stage two's epochs).
    header, *rows = next((two_stage.dir / "csv").rglob("metrics.csv")).read_text().splitlines()
    cols = header.split(",")
    logged = [r.split(",") for r in rows]
    fid_rows = [r for r in logged if r[cols.index(fid.metric_name)]]
    energy_rows = [r for r in logged if r[cols.index("val/energy_samples")]]
    assert len(energy_rows) == len(fid_rows) == 2


def expected_ema(raw_steps: list[dict]) -> dict:
    """The authors' EMA by hand: the first update copies, update n >= 1 uses decay min(.999, (1+n)/(10+n))."""
    avg = {k: v.clone() for k, v in raw_steps[0].items()}
    for n, raw in enumerate(raw_steps[1:], start=1):
        d = warmup_ema_decay(n)
        avg = {k: d * avg[k] + (1 - d) * raw[k] for k in avg}
    return avg


def test_ema_weights_are_the_warmup_average_of_the_raw_weights(two_stage):
    rec, module = two_stage.recorder, two_stage.module
    steps = [e["params"] for e in rec.where(hook="batch_end")]
    assert len(steps) == 9
    # Stage one (epoch 0, steps 0-2) averages its own steps; stage two starts from that average
    # and averages afresh (steps 3-8), as when the authors start stage two from the stage-one EMA.
    stage_one_ema = expected_ema(steps[:3])
    for k, v in stage_one_ema.items():
        torch.testing.assert_close(rec.where(hook="epoch_start", epoch=1)[0]["params"][k], v)
    # What grids and FID sample from at each epoch end is the EMA of the steps of its stage so far.
    for epoch, end in enumerate(rec.where(hook="epoch_end")):
        assert not end["eval_is_raw"]
        want = expected_ema(steps[: 3 * (epoch + 1)] if epoch == 0 else steps[3: 3 * (epoch + 1)])
        for k, v in want.items():
            torch.testing.assert_close(end["eval_params"][k], v)
    # After fit the module holds the average; the checkpoint keeps the raw weights apart.
    final = expected_ema(steps[3:])
    got = dict(module.net.named_parameters())
    for k, v in final.items():
        torch.testing.assert_close(got[k].detach(), v)
    raw = raw_net_state(read_checkpoint(two_stage.dir / "checkpoints" / "last.ckpt"))
    assert all(torch.equal(raw[k], steps[-1][k]) for k in steps[-1])
    assert differs({k: got[k].detach() for k in final}, {k: raw[k] for k in final})


def test_ema_without_restart_averages_through_both_stages(tmp_path):
    recorder = Recorder()
    fit_tiny(tmp_path, ["stage1_epochs=1", "stage2_epochs=1", "callbacks.ema.restart_at_stage_two=false",
                        *NO_FID], callbacks=[recorder])
    steps = [e["params"] for e in recorder.where(hook="batch_end")]
    stage_two_start = recorder.where(hook="epoch_start", epoch=1)[0]["params"]
    assert all(torch.equal(stage_two_start[k], steps[2][k]) for k in steps[2])  # the raw weights
    for k, v in expected_ema(steps).items():
        torch.testing.assert_close(recorder.where(hook="epoch_end", epoch=1)[0]["eval_params"][k], v)


def test_evaluation_net_without_ema_is_the_module_net(tmp_path):
    cfg = compose_config(tmp_path, ["callbacks.ema=null"])
    from dat_lightning.cli.train import build

    _, module, trainer = build(cfg)
    assert not any(isinstance(cb, WarmupEMA) for cb in trainer.callbacks)
    assert evaluation_net(trainer, module) is module.net


# ---------------------------------------------------------------------------- resume mid-epoch
def test_batchnorm_stays_frozen_after_a_mid_epoch_resume(tmp_path, fresh_init):
    init_state = torch.load(fresh_init, weights_only=True)
    init_bn = {k: v for k, v in init_state.items() if k.rsplit(".", 1)[-1] in BN_BUFFERS}
    assert init_bn
    overrides = ["stage1_epochs=0", f"init_ckpt={fresh_init}", "stage2_epochs=1",
                 "trainer.limit_train_batches=4", "callbacks.sample_grid=null", *NO_FID]
    steps_dir = tmp_path / "steps"
    fit_tiny(tmp_path / "first", overrides, callbacks=[
        ModelCheckpoint(dirpath=steps_dir, every_n_train_steps=2, save_top_k=-1,
                        filename="step{step}", auto_insert_metric_name=False)])
    mid = steps_dir / "step2.ckpt"
    assert mid.is_file()
    saved = raw_net_state(read_checkpoint(mid))
    assert same_tensors({k: saved[k] for k in init_bn}, init_bn)

    recorder = Recorder()
    fit_tiny(tmp_path / "resumed", overrides, callbacks=[recorder], ckpt_path=str(mid))
    batches = recorder.where(hook="batch_end")
    assert [(e["epoch"], e["batch_idx"]) for e in batches] == [(0, 2), (0, 3)]
    assert [e["global_step"] for e in batches] == [3, 4]
    for e in recorder.events:
        assert same_tensors(e["bn"], init_bn), (e["hook"], e["batch_idx"])
    assert differs({k: saved[k] for k in batches[-1]["affine"]}, batches[-1]["affine"])


# ---------------------------------------------------------------------------- curriculum
def staged_stand_in(gen_steps=None) -> SimpleNamespace:
    """What the curriculum reads from and writes to a module (the StagedModule protocol)."""
    return SimpleNamespace(device=torch.device("cpu"), gen_steps=gen_steps, net=None, stage=2, stage2_start_epoch=0)


def drive(callback: GenStepCurriculum, aucs, batch_size: int, pl_module=None):
    """Feed ``on_train_batch_end`` fake step outputs with the given AUCs; returns T after each."""
    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    pl_module = pl_module or staged_stand_in()
    batch = {"gen": (torch.zeros(batch_size, 1, 2, 2), torch.zeros(batch_size, dtype=torch.long))}
    trace = []
    for auc in aucs:
        outputs = {} if auc is None else {"auc": torch.tensor(auc)}
        callback.on_train_batch_end(trainer, pl_module, outputs, batch, 0)
        trace.append(pl_module.gen_steps)
    return trace, pl_module


def test_curriculum_hand_trace_window_reset_and_cap():
    # window = ceil(10 / 4) = 3 batches; threshold 0.8; cap 2.
    cb = GenStepCurriculum(start_steps=0, max_steps=2, auc_threshold=0.8, min_imgs_per_threshold=10)
    aucs = [0.9, 0.9, 0.5,  # full window, mean 0.77: no step
            0.9,            # slides to (0.9, 0.5, 0.9): 0.77
            0.9,            # (0.5, 0.9, 0.9): 0.77
            0.9,            # (0.9, 0.9, 0.9): T=1, window restarts
            0.8, 0.8,       # not full yet
            0.8,            # (0.8, 0.8, 0.8) >= 0.8: T=2
            1.0, 1.0, 1.0, 1.0]  # capped at 2
    trace, _ = drive(cb, aucs, batch_size=4)
    assert trace == [0] * 5 + [1, 1, 1, 2, 2, 2, 2, 2]
    assert cb.state.steps == 2


def test_curriculum_window_follows_the_batch_size():
    # ceil(10 / 5) = 2 batches: two good AUCs suffice; with batch 4 (window 3) they do not.
    for batch_size, want in ((5, 1), (4, 0)):
        cb = GenStepCurriculum(start_steps=0, max_steps=5, auc_threshold=0.6, min_imgs_per_threshold=10)
        drive(cb, [0.7, 0.7], batch_size=batch_size)
        assert cb.state.steps == want, batch_size


def test_curriculum_ignores_stage_one_steps():
    cb = GenStepCurriculum(start_steps=1, max_steps=5, auc_threshold=0.0, min_imgs_per_threshold=1)
    trace, _ = drive(cb, [None, None], batch_size=4)
    assert cb.state.steps == 1 and cb.state.window == ()


def test_curriculum_state_round_trip_and_gen_steps_follow_it():
    cb = GenStepCurriculum(start_steps=0, max_steps=5, auc_threshold=0.8, min_imgs_per_threshold=12)
    drive(cb, [0.9, 0.9, 0.9, 0.1, 0.95], batch_size=4)  # T=1, window (0.1, 0.95)
    state = cb.state_dict()
    restored = GenStepCurriculum(start_steps=0, max_steps=5, auc_threshold=0.8, min_imgs_per_threshold=12)
    restored.load_state_dict(state)
    assert restored.state.steps == 1
    assert restored.state.window == pytest.approx((0.1, 0.95))
    module = staged_stand_in(gen_steps=0)
    restored.on_train_start(None, module)
    assert module.gen_steps == 1
    # One more good batch completes the restored window (0.1, 0.95, 0.99): mean 0.68, no step;
    # the original gives the same answer.
    for c in (cb, restored):
        drive(c, [0.99], batch_size=4, pl_module=module)
    assert cb.state == restored.state


def test_curriculum_state_survives_a_checkpoint_resume(tmp_path, fresh_init):
    # Threshold 0: every full window (2 batches of 16 for 32 images) adds a chain step.
    overrides = ["stage1_epochs=0", f"init_ckpt={fresh_init}", "callbacks.curriculum.start_steps=0",
                 "callbacks.curriculum.max_steps=5", "callbacks.curriculum.auc_threshold=0.0",
                 "callbacks.curriculum.min_imgs_per_threshold=32", "callbacks.sample_grid=null", *NO_FID]
    first = Recorder()
    fit_tiny(tmp_path / "first", [*overrides, "stage2_epochs=1"], callbacks=[first])
    assert [e["gen_steps"] for e in first.where(hook="batch_end")] == [0, 1, 1]
    ckpt_file = tmp_path / "first" / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_file)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("GenStepCurriculum")]
    assert state["steps"] == 1 and chain_length(ckpt) == 1  # what reports read as the checkpoint's T
    assert state["window"].tolist() == pytest.approx([first.where(hook="batch_end")[-1]["auc"]])

    resumed = Recorder()
    _, _, module, _ = fit_tiny(tmp_path / "resumed", [*overrides, "stage2_epochs=2"],
                               callbacks=[resumed], ckpt_path=str(ckpt_file))
    # The restored window has one value, so the first resumed batch completes it.
    assert resumed.where(hook="batch_start")[0]["gen_steps"] == 1
    assert [e["gen_steps"] for e in resumed.where(hook="batch_end")] == [2, 2, 3]
    assert module.gen_steps == 3
