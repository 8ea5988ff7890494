"""``trainer.precision=bf16-mixed``: the network runs in bf16, everything DAT computes on top of it
(images, PGD updates, energies, logsumexp, BCE) stays float32 (docs/algorithm.md, "A classifier is an energy-based model")."""

from __future__ import annotations

import functools
import math

import torch

from dat_lightning.attacks import PGDSettings, input_gradient, pgd_attack
from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.cli.train import build
from dat_lightning.fused import fused_attack_and_chain
from dat_lightning.models import build_classifier
from dat_lightning.module import DATModule
from dat_lightning.sampling import ChainSettings, pgd_sample
from helpers import NO_FID, compose_config

ATTACK = {"norm": "l2", "eps": 1.0, "step_size": 0.4, "steps": 2, "random_init": False}
B = 8


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def setup_module(fused: bool) -> tuple[DATModule, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    net = build_classifier("wrn10_1", num_classes=10, in_chans=1, mean=[0.5], std=[0.25])
    freeze_batchnorm(net)
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    module = DATModule(net, clf_attack=ATTACK, gen_attack={"step_size": 0.2},
                       optimizer_stage1=sgd, optimizer_stage2=sgd, stage2_start_epoch=1, fused=fused)
    module.gen_steps = 3
    g = torch.Generator().manual_seed(1)
    # Real-looking inputs: class-dependent blobs, so the logits are not all near zero.
    y, y_hat = torch.randint(0, 10, (B,), generator=g), torch.randint(0, 10, (B,), generator=g)
    def images(labels):
        return (torch.rand(B, 1, 28, 28, generator=g) * 0.3 + labels.view(-1, 1, 1, 1) / 15).clamp(0, 1)
    return module, (images(y), y, images(y_hat), y_hat, torch.rand(B, 1, 28, 28, generator=g))


def test_inner_loops_keep_float32_images_under_autocast():
    module, (x, y, _, y_hat, x0) = setup_module(fused=True)
    net = module.net
    with bf16():
        assert net(x).dtype == torch.bfloat16  # the network really runs in reduced precision
        assert input_gradient(lambda z: net(z).logsumexp(1), x).dtype == torch.float32
        attack = PGDSettings(**ATTACK)
        outputs = [pgd_attack(net, x, y, attack), pgd_sample(net, x0, y_hat, step_size=0.2, steps=2),
                   *fused_attack_and_chain(net, x, y, x0, y_hat, attack=attack, chain=ChainSettings(0.2), chain_steps=2)]
    assert all(t.dtype == torch.float32 for t in outputs)
    assert all(bool(((t >= 0) & (t <= 1)).all()) for t in outputs)


def test_bf16_stage_two_close_to_fp32_and_every_parameter_gets_a_gradient():
    for fused in (True, False):
        module, data = setup_module(fused)
        def stage_two(m=module, fused=fused, data=data):
            return m.objective.stage_two(m.net, *data, chain_steps=m.gen_steps, fused=fused)

        loss32, stats32 = stage_two()
        with bf16():
            loss16, stats16 = stage_two()
        assert loss16.dtype == torch.float32
        loss16_value, loss32_value = float(loss16.detach()), float(loss32.detach())
        for key in ("loss_ce", "loss_bce", "energy_real", "energy_fake", "joint_energy_real", "joint_energy_fake"):
            assert stats16[key].dtype == torch.float32, key
            assert math.isclose(stats16[key], stats32[key], rel_tol=2e-2, abs_tol=2e-2), (key, stats16[key], stats32[key])
        assert math.isclose(loss16_value, loss32_value, rel_tol=1e-2)
        module.net.zero_grad(set_to_none=True)
        loss16.backward()
        for name, p in module.net.named_parameters():
            assert p.requires_grad and p.grad is not None, f"{name} got no gradient (fused={fused})"
            assert p.grad.dtype == torch.float32 and bool(torch.isfinite(p.grad).all()), name
        assert sum(float(p.grad.abs().sum()) for p in module.net.parameters()) > 0


def test_bf16_mixed_training_run(tmp_path):
    cfg = compose_config(tmp_path, ["trainer.precision=bf16-mixed", "stage1_epochs=1", "stage2_epochs=1",
                                    "trainer.limit_train_batches=2", "callbacks.sample_grid=null", *NO_FID])
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.precision == "bf16-mixed" and trainer.global_step > 0
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and math.isfinite(float(metrics["val/acc_robust"]))
    assert all(bool(torch.isfinite(p).all()) and p.dtype == torch.float32 for p in module.net.parameters())
