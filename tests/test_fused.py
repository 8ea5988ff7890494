"""Fused stage-two passes equal the separate attack, chain and loss forwards (float64, CPU)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from torch import nn

from dat_lightning.attacks import PGDSettings, pgd_attack
from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.fused import (
    batch_coupling_layers,
    fused_attack_and_chain,
    fused_logits,
    fusion_blocker,
)
from dat_lightning.models import build_classifier
from dat_lightning.module import DATModule
from dat_lightning.sampling import ChainSettings, pgd_sample

B = 4


def tiny_net(name: str = "wrn10_1", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = build_classifier(name, num_classes=5, in_chans=3, mean=[0.5] * 3, std=[0.25] * 3).double()
    freeze_batchnorm(net)  # stage two: BatchNorm frozen, the rest in train mode
    return net


def batches(seed: int = 1, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    def img():
        return torch.rand(B, 3, size, size, generator=g, dtype=torch.float64)
    def lab():
        return torch.randint(0, 5, (B,), generator=g)
    return img(), lab(), img(), lab(), img()


class CallCounter(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.batch_sizes = net, []

    def forward(self, x):
        self.batch_sizes.append(len(x))
        return self.net(x)


ATTACK = {"norm": "l2", "eps": 0.5, "step_size": 0.2, "steps": 3, "random_init": False}


@pytest.mark.parametrize(
    ("name", "attack_steps", "chain_steps", "conditional", "norm"),
    [("wrn10_1", 3, 5, True, "l2"), ("wrn10_1", 4, 2, True, "linf"), ("wrn10_1", 3, 3, False, "l2"),
     ("wrn10_1", 0, 2, True, "l2"), ("wrn10_1", 2, 0, True, "l2"),
     ("test_convnext_convstem", 2, 3, True, "l2")],
)
def test_fused_loops_equal_separate_loops(name, attack_steps, chain_steps, conditional, norm):
    net = tiny_net(name)
    x, y, _, y_hat, x0 = batches(size=32 if "convnext" in name else 16)
    attack = PGDSettings(**dict(ATTACK, steps=attack_steps, norm=norm, eps=0.5 if norm == "l2" else 0.03,
                                step_size=0.2 if norm == "l2" else 0.01))
    target = y_hat if conditional else None
    x_adv_ref = pgd_attack(net, x, y, attack)
    x_gen_ref = pgd_sample(net, x0, target, step_size=0.3, steps=chain_steps)
    counter = CallCounter(net)
    x_adv, x_gen = fused_attack_and_chain(counter, x, y, x0, target, attack=attack,
                                          chain=ChainSettings(0.3), chain_steps=chain_steps)
    assert torch.allclose(x_adv, x_adv_ref) and torch.allclose(x_gen, x_gen_ref)
    # the loops really moved the images (the comparison is not between two copies of the input)
    assert (attack_steps == 0) == torch.equal(x_adv, x) and (chain_steps == 0) == torch.equal(x_gen, x0)
    # one forward per inner step: 2B while both loops run, then B for the longer one
    both, longest = min(attack_steps, chain_steps), max(attack_steps, chain_steps)
    assert counter.batch_sizes == [2 * B] * both + [B] * (longest - both)


def test_fused_random_start_matches_pgd_attack():
    net = tiny_net()
    x, y, _, y_hat, x0 = batches()
    attack = PGDSettings(**dict(ATTACK, random_init=True))
    ref = pgd_attack(net, x, y, attack, generator=torch.Generator().manual_seed(3))
    got, _ = fused_attack_and_chain(net, x, y, x0, y_hat, attack=attack, chain=ChainSettings(0.3),
                                    chain_steps=2, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got, ref)


def test_fused_logits_equal_separate_forwards():
    net = tiny_net()
    x, _, x_hat, _, x0 = batches()
    for got, ref in zip(fused_logits(net, x, x_hat, x0), (net(x), net(x_hat), net(x0)), strict=True):
        assert torch.allclose(got, ref)


def make_module(net: nn.Module, fused: bool, **kwargs) -> DATModule:
    return DATModule(
        net, clf_attack=ATTACK,
        gen_attack={"step_size": 0.3, "conditional": True},
        optimizer_stage1=functools.partial(torch.optim.SGD, lr=0.1),
        optimizer_stage2=functools.partial(torch.optim.SGD, lr=0.1),
        stage2_start_epoch=1, fused=fused, **kwargs,
    )


def loss_and_grads(module: DATModule, data) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    module.net.zero_grad(set_to_none=True)
    loss, stats = module.objective.stage_two(module.net, *data, chain_steps=module.gen_steps,
                                             fused=module.use_fused())
    loss.backward()
    return loss.detach(), stats, {n: p.grad.clone() for n, p in module.net.named_parameters()}


def test_module_fused_stage_two_equals_unfused():
    data = batches()
    fused, unfused = make_module(tiny_net(), True), make_module(tiny_net(), False)
    for m in (fused, unfused):
        m.gen_steps = 5
    loss_f, stats_f, grads_f = loss_and_grads(fused, data)
    loss_u, stats_u, grads_u = loss_and_grads(unfused, data)
    assert fused.use_fused() and not unfused.use_fused()
    assert torch.allclose(loss_f, loss_u)
    assert stats_f.keys() == stats_u.keys()
    assert all(torch.allclose(stats_f[k].double(), stats_u[k].double()) for k in stats_f)
    assert grads_f.keys() == grads_u.keys() and all(torch.allclose(grads_f[k], grads_u[k]) for k in grads_f)


class InstanceStatsNet(nn.Module):
    """Per-sample forward but running statistics updated from the whole batch in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, track_running_stats=True, affine=True)
        self.fc = nn.Linear(4, 5)
        self.num_classes = 5

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).mean((2, 3)))


def test_fusion_guard_names_the_batch_coupling_layers():
    net = tiny_net()
    assert fusion_blocker(net) is None and batch_coupling_layers(net) == []
    net.train()  # BatchNorm back in training mode
    layers = batch_coupling_layers(net)
    assert "backbone.bn1" in layers and len(layers) == 7  # every BatchNorm of WRN-10-1
    assert layers[0] in fusion_blocker(net) and "(7 in all)" in fusion_blocker(net)


def test_module_falls_back_to_unfused_with_one_logged_reason(caplog):
    torch.manual_seed(0)
    net = InstanceStatsNet().double()
    module = make_module(net, fused=True)
    reference = make_module(InstanceStatsNet().double(), fused=False)
    reference.net.load_state_dict(net.state_dict())
    module.gen_steps = reference.gen_steps = 2
    data = batches(size=8)
    with caplog.at_level(logging.WARNING, logger="dat_lightning.module"):
        loss, _, grads = loss_and_grads(module, data)
        loss_and_grads(module, data)
    refusals = [r for r in caplog.records if "run unfused" in r.getMessage()]
    assert len(refusals) == 1 and "norm" in refusals[0].getMessage()
    ref_loss, _, ref_grads = loss_and_grads(reference, data)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads)
