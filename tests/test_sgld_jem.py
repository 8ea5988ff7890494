"""JEM's pieces (issue 19, point 2): the SGLD step and chain against hand computations, the
replay buffer (re-initialisation rate, class blocks, store, resume), and JEM's loss against a
plain-PyTorch computation on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dat_lightning.methods.jem import jem_loss, maximum_likelihood_loss
from dat_lightning.replay_buffer import ReplayBuffer
from dat_lightning.sgld import JEM_DEFAULTS, SGLDSettings, sgld_sample, sgld_step


class Linear(nn.Module):
    """f(x) = W x.flatten(): the class-conditional input gradient is the row W[y], a constant."""

    def __init__(self, dims: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(classes, dims, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x.flatten(1) @ self.w.T


def test_one_step_is_the_gradient_step_plus_scaled_gaussian_noise():
    x, g = torch.rand(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    n = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    stepped = sgld_step(x, g, 0.25, 0.1, torch.Generator().manual_seed(7))
    torch.testing.assert_close(stepped, x + 0.25 * g + 0.1 * n)


def test_a_conditional_chain_on_a_linear_model_moves_along_the_class_row():
    model, x0, y = Linear(), torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    step, steps, noise = 0.3, 4, 0.02
    generator = torch.Generator().manual_seed(1)
    noises = sum(torch.randn(x0.shape, generator=generator) for _ in range(steps))
    expected = x0 + steps * step * model.w.detach()[y].view_as(x0) + noise * noises
    got = sgld_sample(model, x0, y, step_size=step, steps=steps, noise=noise, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected)
    assert model.w.grad is None and not got.requires_grad  # input gradients only


def test_the_marginal_chain_ascends_logsumexp_and_is_not_clamped():
    model, x0 = Linear(), torch.rand(3, 3, 2, 2)
    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch.logsumexp(model(x), 1).sum(), x)
    torch.testing.assert_close(sgld_sample(model, x0, step_size=5.0, steps=1), x0 + 5.0 * grad)
    assert sgld_sample(model, x0, step_size=50.0, steps=3).abs().max() > 1  # no clamp, as JEM


def test_jem_defaults_are_the_papers_chain_in_our_pixel_units():
    # JEM: 20 steps, alpha 1, sigma 0.01 on x in [-1, 1]; x = 2p - 1 => alpha/4 and sigma/2 on p
    assert (JEM_DEFAULTS.steps, JEM_DEFAULTS.step_size, JEM_DEFAULTS.noise) == (20, 1 / 4, 0.01 / 2)
    with pytest.raises(ValueError, match="noise"):
        SGLDSettings(step_size=1.0, noise=-1.0, steps=1)
    with pytest.raises(ValueError, match="step_size"):
        sgld_sample(Linear(), torch.rand(1, 3, 2, 2), step_size=0.0, steps=1)


def test_the_buffer_restarts_chains_at_the_reinit_rate():
    buffer = ReplayBuffer(1000, (1, 2, 2), reinit_prob=0.05, generator=torch.Generator().manual_seed(0))
    buffer.images.fill_(2.0)  # stored images are recognisable; noise is in [0, 1)
    x0, _ = buffer.draw(2000, generator=torch.Generator().manual_seed(1))
    restarted = (x0.flatten(1) < 1).all(1).float().mean().item()
    assert restarted == pytest.approx(0.05, abs=0.015)
    never = ReplayBuffer(10, (1, 2, 2), reinit_prob=0.0)
    x0, slots = never.draw(6)
    assert torch.equal(x0, never.images[slots])


def test_class_conditional_draws_stay_in_their_block_and_store_puts_samples_back():
    buffer = ReplayBuffer(30, (1, 1, 1), reinit_prob=0.0, num_classes=3)
    y = torch.tensor([0, 1, 2, 2, 1])
    _, slots = buffer.draw(5, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(slots // 10, y)
    buffer.store(slots, torch.full((5, 1, 1, 1), -1.0))
    assert (buffer.images[slots] == -1).all() and (buffer.images == -1).sum() == len(set(slots.tolist()))
    with pytest.raises(ValueError, match="multiple"):
        ReplayBuffer(31, (1, 1, 1), num_classes=3)


def test_a_restored_buffer_continues_the_same_chains():
    first = ReplayBuffer(50, (1, 2, 2), generator=torch.Generator().manual_seed(0))
    first.store(torch.arange(10), torch.zeros(10, 1, 2, 2))
    second = ReplayBuffer(50, (1, 2, 2), generator=torch.Generator().manual_seed(99))
    second.load_state_dict(first.state_dict())
    a, sa = first.draw(8, generator=torch.Generator().manual_seed(5))
    b, sb = second.draw(8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(sa, sb)
    with pytest.raises(ValueError, match="model.buffer.size"):
        ReplayBuffer(40, (1, 2, 2)).load_state_dict(first.state_dict())


def test_jem_loss_equals_the_plain_computation():
    logits, y, logits_q = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1]), torch.randn(5, 4)
    logits_l = torch.randn(6, 4)
    loss, stats = jem_loss(logits, logits_q, logits_l, y, ce_weight=1.0, px_weight=0.5)
    fp, fq = torch.logsumexp(logits, 1).mean(), torch.logsumexp(logits_q, 1).mean()
    torch.testing.assert_close(loss, F.cross_entropy(logits_l, y) - 0.5 * (fp - fq))
    assert stats["acc"] == (logits_l.argmax(1) == y).float().mean()
    torch.testing.assert_close(maximum_likelihood_loss(logits, logits_q), -(fp - fq))
    assert stats["energy_real"] == pytest.approx(-fp.item())
