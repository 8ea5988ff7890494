"""The objective (Eq. 9-11): each equation against a hand computation, and the whole stage losses
of a real module against the plain-PyTorch computation from the public attack and chain."""

import copy
import itertools

import torch
import torch.nn.functional as F

from dat_lightning.attacks import pgd_attack
from dat_lightning.batchnorm import freeze_batchnorm
from dat_lightning.energy import marginal_energy
from dat_lightning.losses import bce_energy_loss, conditional_auc
from dat_lightning.sampling import pgd_sample
from helpers import fake_images, grads, tiny_module


def test_bce_is_mean_of_softplus_energies():
    real = torch.randn(5, 4)
    fake = torch.randn(5, 4)
    expected = torch.cat([F.softplus(marginal_energy(real)), F.softplus(-marginal_energy(fake))]).mean()
    assert torch.allclose(bce_energy_loss(real, fake), expected, atol=1e-6)


def test_bce_hand_value():
    # logsumexp of [0, 0] is log 2: -log(sigmoid(log 2)) = log(1.5); -log(1 - sigmoid(log 2)) = log 3
    z = torch.zeros(1, 2)
    expected = (torch.log(torch.tensor(1.5)) + torch.log(torch.tensor(3.0))) / 2
    assert torch.allclose(bce_energy_loss(z, z), expected)


def test_conditional_auc_equals_pairwise_count():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    r = real.gather(1, y[:, None]).squeeze(1)
    f = fake.gather(1, y[:, None]).squeeze(1)
    pairs = [(a > b) + 0.5 * (a == b) for a, b in itertools.product(r.tolist(), f.tolist())]
    assert abs(conditional_auc(real, y, fake, y).item() - sum(pairs) / len(pairs)) < 1e-6


def test_auc_is_one_when_real_logits_dominate():
    y = torch.tensor([0, 1])
    assert conditional_auc(torch.eye(2) * 10, y, torch.zeros(2, 2), y).item() == 1.0


def test_stage_one_loss_gradient_comes_only_from_its_backward(tmp_path):
    module = tiny_module(tmp_path, "model.clf_attack.steps=3", "model.ce_weight=0.5")
    net = module.net.train()  # stage one: BatchNorm trains (batch statistics in the forward)
    reference = copy.deepcopy(net)
    x, y = fake_images(8, seed=0)

    loss, _ = module.objective.stage_one(net, x, y)
    assert all(p.grad is None for p in net.parameters()), "the attack left parameter gradients"
    loss.backward()

    x_adv = pgd_attack(reference, x, y, module.objective.attack)
    assert (x_adv - x).flatten(1).norm(dim=1).min() > 0  # the attack did move the images
    (0.5 * F.cross_entropy(reference(x_adv), y)).backward()
    for got, want in zip(grads(net), grads(reference), strict=True):
        torch.testing.assert_close(got, want)


def test_stage_two_loss_is_weighted_ce_plus_bce_on_logsumexp(tmp_path):
    module = tiny_module(tmp_path, "model.clf_attack.steps=2", "model.ce_weight=0.5",
                         "model.bce_weight=2.0", "model.gen_attack.step_size=0.3")
    net = module.net.train()
    freeze_batchnorm(net)
    x, y = fake_images(6, seed=1)
    x_hat, y_hat = fake_images(6, seed=2)
    x0, _ = fake_images(6, seed=3)

    loss, stats = module.objective.stage_two(net, x, y, x_hat, y_hat, x0, chain_steps=3, fused=module.use_fused())
    assert all(p.grad is None for p in net.parameters()), "attack or chain left parameter gradients"
    loss.backward()
    got_grads = grads(net)
    net.zero_grad(set_to_none=True)

    # Eq. 9-11 by hand, from the public attack and chain.
    x_adv = pgd_attack(net, x, y, module.objective.attack)
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
