"""DATModule: the stage losses against hand computations, stage switching, init_ckpt."""

from __future__ import annotations

import hydra
import pytest
import torch

from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.checkpoints import read_checkpoint
from helpers import compose_config, tiny_module, two_stage_run


def test_stage_two_refuses_training_batchnorm_and_a_missing_curriculum(tmp_path):
    module = tiny_module(tmp_path)
    with pytest.raises(RuntimeError, match="FreezeBatchNorm"):
        module.stage_two_chain_steps()
    freeze_batchnorm(module.net)
    with pytest.raises(RuntimeError, match="callbacks.curriculum"):  # T is the curriculum's
        module.stage_two_chain_steps()
    module.gen_steps = 4
    assert module.stage_two_chain_steps() == 4


def test_stage_two_from_epoch_zero_needs_init_ckpt(tmp_path):
    cfg = compose_config(tmp_path, ["stage1_epochs=0", "init_ckpt=null"])
    with pytest.raises(Exception, match="init_ckpt=PATH"):
        hydra.utils.instantiate(cfg.model)


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """1 stage-one and 2 stage-two epochs of 3 batches, EMA on, a Recorder on every batch."""
    return two_stage_run(tmp_path_factory)


def test_stage_switch_uses_one_optimizer_per_stage(two_stage):
    cfg, recorder = two_stage.cfg, two_stage.recorder
    ends = recorder.where(hook="batch_end")
    assert [e["stage"] for e in ends] == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert [e["epoch"] for e in ends] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    lr2 = cfg.model.optimizer_stage2.lr
    for e in ends:
        opt1_state, opt2_state = e["opt_state"]
        if e["stage"] == 1:  # only the stage-one optimizer has stepped (momentum buffers)
            assert opt1_state > 0 and opt2_state == 0
        else:
            assert opt2_state > 0
            assert e["lr"][1] == lr2
    # The stage-one optimizer took no step in stage two; its cosine schedule ran to 0 at the switch.
    assert ends[-1]["lr"][0] == pytest.approx(0.0, abs=1e-12)
    assert ends[0]["lr"][0] == cfg.model.optimizer_stage1.lr
    # Stage two stepped optimizer 2 only: optimizer 1's state is what the last stage-one step left.
    opt1_at_switch = recorder.where(hook="epoch_end", epoch=0)[0]["opt_tensors"][0]
    opt1_at_end, opt2_at_end = ends[-1]["opt_tensors"]
    assert opt1_at_switch
    assert all(torch.equal(a, b) for a, b in zip(opt1_at_switch, opt1_at_end, strict=True))
    opt2_first_step = ends[3]["opt_tensors"][1]
    assert any(not torch.equal(a, b) for a, b in zip(opt2_first_step, opt2_at_end, strict=True))


def test_init_ckpt_takes_ema_weights_of_a_lightning_checkpoint(two_stage, tmp_path):
    ckpt_path = two_stage.dir / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(ckpt_path)
    ema = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    raw = {k.removeprefix("net."): v for k, v in ckpt["current_model_state"].items()
           if k.startswith("net.")}
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    for flag, want in (("true", ema), ("false", raw)):
        module = hydra.utils.instantiate(compose_config(
            tmp_path, ["stage1_epochs=0", f"init_ckpt={ckpt_path}", f"model.init_ckpt_ema={flag}"]).model)
        got = module.net.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got), f"init_ckpt_ema={flag}"


def test_init_ckpt_accepts_a_plain_state_dict(tmp_path):
    donor = tiny_module(tmp_path / "a", "seed=123").net
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "weights.pt"
    torch.save(donor.state_dict(), path)
    module = hydra.utils.instantiate(
        compose_config(tmp_path, ["stage1_epochs=0", f"init_ckpt={path}"]).model)
    want, got = donor.state_dict(), module.net.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_init_ckpt_that_does_not_fit_says_so(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"backbone.nonsense": torch.zeros(3)}, path)
    with pytest.raises(Exception, match="does not fit the model"):
        hydra.utils.instantiate(compose_config(tmp_path, ["stage1_epochs=0", f"init_ckpt={path}"]).model)
