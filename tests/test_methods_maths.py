"""RATIO's, JEM++'s and EB-JDAT's pieces (issue 19, point 2) against plain-PyTorch computations on
tiny inputs (docs/methods.md has each method as its code trains it)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dat_lightning.methods.eb_jdat import (
    adversarial_examples,
    eb_jdat_loss,
    logit_direction_distance,
)
from dat_lightning.methods.jempp import JITTER, ClassGaussians, pyld_sample, pyld_step
from dat_lightning.methods.ratio import ratio_loss, uniform_kl


class Linear(nn.Module):
    def __init__(self, dims: int = 12, classes: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, dims, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


# ------------------------------------------------------------------------------------------ RATIO
def test_uniform_kl_is_the_kl_divergence_from_uniform():
    logits = torch.randn(5, 4)
    p = torch.softmax(logits, 1)
    direct = (0.25 * (math.log(0.25) - torch.log(p))).sum(1)
    torch.testing.assert_close(uniform_kl(logits), direct)
    assert uniform_kl(torch.zeros(2, 7)).abs().max() < 1e-6  # a uniform prediction: zero


def test_ratio_loss_halves_both_terms():
    logits, y, logits_ood = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(4, 3)
    loss, stats = ratio_loss(logits, y, logits_ood, ood_weight=1.0)
    expected = 0.5 * F.cross_entropy(logits, y) + 0.5 * uniform_kl(logits_ood).mean()
    torch.testing.assert_close(loss, expected)
    assert 1 / 3 <= stats["ood_confidence"] <= 1


# ------------------------------------------------------------------------------------------ JEM++
def test_class_gaussians_fit_each_class_and_sample_clamped_images():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(60, 1, 2, 2, generator=g) * 0.5
    labels = torch.arange(60) % 3
    images[labels == 2] += 0.5  # class 2 is brighter
    gaussians = ClassGaussians(images, labels, num_classes=3)
    members = images[labels == 1].flatten(1).double()
    cov = (members - members.mean(0)).T @ (members - members.mean(0)) / len(members) + JITTER * torch.eye(4, dtype=torch.double)
    torch.testing.assert_close(gaussians.means[1], members.mean(0).float())
    torch.testing.assert_close(gaussians.cholesky[1] @ gaussians.cholesky[1].T, cov.float())
    drawn = gaussians.sample(torch.full((2000,), 2), generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (2000, 1, 2, 2) and drawn.min() >= 0 and drawn.max() <= 1
    assert drawn.mean() > gaussians.sample(torch.zeros(2000, dtype=torch.long)).mean() + 0.3
    with pytest.raises(ValueError, match="class 3"):
        ClassGaussians(images, labels, num_classes=4)


def test_pyld_step_clips_the_move_and_the_image():
    x = torch.tensor([[0.5, 0.5, 0.95, 0.1]])
    grad = torch.tensor([[-1.0, 10.0, -10.0, 0.2]])  # dE/dx
    torch.testing.assert_close(pyld_step(x, grad, 0.25, 0.5), torch.tensor([[0.75, 0.0, 1.0, 0.05]]))


def test_pyld_sample_descends_the_class_energy_of_a_linear_model():
    model, x0, y = Linear(), torch.full((3, 3, 2, 2), 0.5), torch.tensor([0, 1, 2])
    x = pyld_sample(model, x0, y, step_size=0.01, steps=2, clip=0.5)
    # dE(x, y)/dx = -W[y]: each step adds 0.01 * W[y] (small enough to stay unclipped)
    expected = (x0 + 2 * 0.01 * model.w.detach()[y].view_as(x0)).clamp(0, 1)
    torch.testing.assert_close(x, expected)
    assert model.w.grad is None


# ------------------------------------------------------------------------------------------ EB-JDAT
def test_logit_direction_distance_ignores_scale():
    a, b = torch.randn(4, 5), torch.randn(4, 5)
    direct = ((a / a.norm(dim=1, keepdim=True) - b / b.norm(dim=1, keepdim=True)) ** 2).sum(1)
    torch.testing.assert_close(logit_direction_distance(a, b), direct)
    torch.testing.assert_close(logit_direction_distance(a, 3 * a), torch.zeros(4), atol=1e-6, rtol=0)


def test_adversarial_examples_take_sign_steps_from_a_bounded_start_without_projection():
    model, x, y = Linear(), torch.full((4, 3, 2, 2), 0.5), torch.tensor([0, 1, 2, 0])
    start, step, steps = 4 / 255, 1 / 255, 5
    got = adversarial_examples(model, x, y, start=start, step_size=step, steps=steps,
                               generator=torch.Generator().manual_seed(0))
    # the plain loop, with the same random start
    noise = torch.empty(x.shape).uniform_(-start, start, generator=torch.Generator().manual_seed(0))
    x_adv, clean = (x + noise).clamp(0, 1), model(x).detach()
    for _ in range(steps):
        z = x_adv.clone().requires_grad_(True)
        logits = model(z)
        objective = logits.gather(1, y.view(-1, 1)).sum() + logit_direction_distance(clean, logits).sum()
        (grad,) = torch.autograd.grad(objective, z)
        x_adv = (x_adv + step * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(got, x_adv)
    assert (got - x).abs().max() > start  # beyond the start radius: no projection, as the code
    assert (got - x).abs().max() <= start + steps * step + 1e-6 and model.w.grad is None


def test_eb_jdat_loss_equals_the_plain_sum_of_its_terms():
    g = torch.Generator().manual_seed(2)
    d, q, lab, adv = (torch.randn(6, 3, generator=g) for _ in range(4))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, _ = eb_jdat_loss(d, q, lab, y, adv, adv_energy_weight=0.1)

    def energy(z):
        return -torch.logsumexp(z, 1).mean()

    expected = (energy(d) - energy(q)) + F.cross_entropy(lab, y) + 0.1 * (energy(d) - energy(adv)) + F.cross_entropy(adv, y)
    torch.testing.assert_close(loss, expected)
