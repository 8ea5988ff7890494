import torch

from dat_lightning.sampling import class_balanced_labels, pgd_sample


def test_conditional_chain_matches_closed_form(linear_model):
    """For f(x) = Wx + b the class-logit gradient is W[y]: each step moves eta along W[y]/||W[y]||."""
    x0 = torch.full((2, 3, 2, 2), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 2])
    eta, steps = 0.01, 3
    out = pgd_sample(linear_model, x0, y, step_size=eta, steps=steps)
    w = linear_model.fc.weight.detach()[y]
    expected = x0.flatten(1).clone()
    for _ in range(steps):
        expected = (expected + eta * w / w.norm(dim=1, keepdim=True)).clamp(0, 1)
    assert torch.allclose(out.flatten(1), expected, atol=1e-12)


def test_marginal_chain_follows_softmax_weighted_rows(linear_model):
    x0 = torch.full((1, 3, 2, 2), 0.5, dtype=torch.float64)
    out = pgd_sample(linear_model, x0, None, step_size=0.01, steps=1)
    p = torch.softmax(linear_model(x0), dim=1)
    g = p @ linear_model.fc.weight.detach()
    expected = (x0.flatten(1) + 0.01 * g / g.norm()).clamp(0, 1)
    assert torch.allclose(out.flatten(1), expected, atol=1e-12)


def test_chain_raises_class_logit_and_stays_in_box(linear_model):
    x0 = torch.rand(8, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 3
    out = pgd_sample(linear_model, x0, y, step_size=0.5, steps=20)
    assert out.min() >= 0 and out.max() <= 1
    before = linear_model(x0).gather(1, y[:, None])
    after = linear_model(out).gather(1, y[:, None])
    assert (after >= before - 1e-12).all() and (after > before).any()


def test_zero_steps_returns_seeds_and_grads_untouched(linear_model):
    x0 = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    assert torch.equal(pgd_sample(linear_model, x0, torch.tensor([0, 1]), step_size=0.1, steps=0), x0)
    pgd_sample(linear_model, x0, torch.tensor([0, 1]), step_size=0.1, steps=4)
    assert all(p.grad is None for p in linear_model.parameters())


def test_class_balanced_labels():
    assert class_balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]
