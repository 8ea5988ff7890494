"""DATModule: the stage losses against hand computations, stage switching, init_ckpt."""

from __future__ import annotations

import copy

import hydra
import pytest
import torch
import torch.nn.functional as F

from dat_lightning.attacks import pgd_attack
from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.sampling import pgd_sample
from helpers import compose_config, two_stage_run


def tiny_module(tmp_path, *overrides):
    cfg = compose_config(tmp_path, ["stage1_epochs=1", *overrides])
    return hydra.utils.instantiate(cfg.model)


def fake_images(n, seed, channels=1, size=28, classes=10):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(classes, (n,), generator=g)


def grads(net):
    return [None if p.grad is None else p.grad.clone() for p in net.parameters()]


def test_stage_one_loss_gradient_comes_only_from_its_backward(tmp_path):
    module = tiny_module(tmp_path, "model.clf_attack.steps=3", "model.ce_weight=0.5")
    net = module.net.train()  # stage one: BatchNorm trains (batch statistics in the forward)
    reference = copy.deepcopy(net)
    x, y = fake_images(8, seed=0)

    loss, _ = module.stage_one_loss(x, y)
    assert all(p.grad is None for p in net.parameters()), "the attack left parameter gradients"
    loss.backward()

    x_adv = pgd_attack(reference, x, y, **module.clf_attack)
    assert (x_adv - x).flatten(1).norm(dim=1).min() > 0  # the attack did move the images
    (0.5 * F.cross_entropy(reference(x_adv), y)).backward()
    for got, want in zip(grads(net), grads(reference), strict=True):
        torch.testing.assert_close(got, want)


def test_stage_two_loss_is_weighted_ce_plus_bce_on_logsumexp(tmp_path):
    module = tiny_module(tmp_path, "model.clf_attack.steps=2", "model.ce_weight=0.5",
                         "model.bce_weight=2.0", "model.gen_attack.step_size=0.3")
    net = module.net.train()
    freeze_batchnorm(net)
    module.gen_steps = 3
    x, y = fake_images(6, seed=1)
    x_hat, y_hat = fake_images(6, seed=2)
    x0, _ = fake_images(6, seed=3)

    loss, stats = module.stage_two_loss(x, y, x_hat, y_hat, x0)
    assert all(p.grad is None for p in net.parameters()), "attack or chain left parameter gradients"
    loss.backward()
    got_grads = grads(net)
    net.zero_grad(set_to_none=True)

    # Eq. 9-11 by hand, from the public attack and chain.
    x_adv = pgd_attack(net, x, y, **module.clf_attack)
    x_fake = pgd_sample(net, x0, y_hat, step_size=0.3, steps=3)
    assert not torch.equal(x_fake, x0)
    lse = torch.logsumexp(torch.cat([net(x_hat), net(x_fake)]), dim=1)
    target = torch.cat([torch.ones(6), torch.zeros(6)])
    expected = 0.5 * F.cross_entropy(net(x_adv), y) + 2.0 * F.binary_cross_entropy_with_logits(lse, target)
    torch.testing.assert_close(loss, expected)
    expected.backward()
    for got, want in zip(got_grads, grads(net), strict=True):
        torch.testing.assert_close(got, want)
    assert set(stats) >= {"loss_ce", "loss_bce", "energy_real", "energy_fake", "auc"}


def test_stage_two_refuses_training_batchnorm(tmp_path):
    module = tiny_module(tmp_path)
    x, y = fake_images(4, seed=0)
    with pytest.raises(RuntimeError, match="FreezeBatchNorm"):
        module.stage_two_loss(x, y, x, y, x)


def test_stage_two_from_epoch_zero_needs_init_ckpt(tmp_path):
    cfg = compose_config(tmp_path, ["stage1_epochs=0"])
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
