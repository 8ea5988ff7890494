import pytest
import torch
import torch.nn.functional as F

from dat_lightning.attacks import ascent_step, pgd_attack, project, random_start


def reference_pgd(model, x, y, eps, step, steps, norm):
    """Plain loop with .backward() on a clone of the input, written independently."""
    x_adv = x.clone()
    for _ in range(steps):
        z = x_adv.clone().requires_grad_(True)
        F.cross_entropy(model(z), y, reduction="sum").backward()
        g = z.grad
        if norm == "l2":
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            z2 = x_adv + step * g / norms
            d = z2 - x
            dn = d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            d = d * torch.clamp(eps / (dn + 1e-12), max=1.0)
        else:
            d = (x_adv + step * g.sign() - x).clamp(-eps, eps)
        x_adv = (x + d).clamp(0, 1).detach()
    return x_adv


@pytest.mark.parametrize("norm,eps,step", [("l2", 0.5, 0.2), ("linf", 0.05, 0.02)])
def test_pgd_equals_plain_loop(linear_model, images, norm, eps, step):
    y = torch.tensor([0, 1, 2, 0])
    ours = pgd_attack(linear_model, images, y, norm=norm, eps=eps, step_size=step, steps=5)
    linear_model.zero_grad()
    ref = reference_pgd(linear_model, images, y, eps, step, 5, norm)
    assert torch.allclose(ours, ref, atol=1e-10)


@pytest.mark.parametrize("norm,eps", [("l2", 0.3), ("linf", 0.03)])
def test_pgd_stays_in_ball_and_box(linear_model, images, norm, eps):
    y = torch.tensor([0, 1, 2, 0])
    x_adv = pgd_attack(linear_model, images, y, norm=norm, eps=eps, step_size=eps, steps=7, random_init=True)
    delta = (x_adv - images).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert (size <= eps + 1e-9).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_increases_loss(linear_model, images):
    y = torch.tensor([0, 1, 2, 0])
    x_adv = pgd_attack(linear_model, images, y, norm="l2", eps=0.5, step_size=0.1, steps=10)
    before = F.cross_entropy(linear_model(images), y)
    after = F.cross_entropy(linear_model(x_adv), y)
    assert after > before


def test_pgd_zero_steps_returns_input(linear_model, images):
    y = torch.zeros(4, dtype=torch.long)
    assert torch.equal(pgd_attack(linear_model, images, y, norm="l2", eps=1, step_size=1, steps=0), images)


def test_pgd_leaves_parameter_grads_untouched(linear_model, images):
    sentinel = [torch.full_like(p, 7.0) for p in linear_model.parameters()]
    for p, s in zip(linear_model.parameters(), sentinel, strict=True):
        p.grad = s.clone()
    pgd_attack(linear_model, images, torch.zeros(4, dtype=torch.long), norm="l2", eps=1, step_size=0.1, steps=3)
    for p, s in zip(linear_model.parameters(), sentinel, strict=True):
        assert torch.equal(p.grad, s)


def test_pgd_keeps_no_graph_across_steps(linear_model, images):
    """Each step's input is a fresh leaf: no autograd history accumulates with the step count."""
    seen = []

    def model(x):
        seen.append(x.grad_fn is None and x.is_leaf)
        return linear_model(x)

    out = pgd_attack(model, images, torch.zeros(4, dtype=torch.long), norm="linf", eps=0.1, step_size=0.01, steps=6)
    assert len(seen) == 6 and all(seen)
    assert out.grad_fn is None and not out.requires_grad


def test_l2_step_and_projection_hand_values():
    x = torch.full((1, 1, 2, 2), 0.5)
    g = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]])  # ||g|| = 5
    stepped = ascent_step(x, g, 1.0, "l2")
    assert torch.allclose(stepped, torch.tensor([[[[1.1, 1.3], [0.5, 0.5]]]]))
    projected = project(stepped, x, eps=0.5, norm="l2")  # delta (0.6, 0.8) rescaled to norm 0.5
    assert torch.allclose(projected, torch.tensor([[[[0.8, 0.9], [0.5, 0.5]]]]))


def test_linf_projection_clips_then_clamps():
    x = torch.tensor([[[[0.98, 0.5]]]])
    out = project(torch.tensor([[[[1.2, 0.1]]]]), x, eps=0.1, norm="linf")
    assert torch.allclose(out, torch.tensor([[[[1.0, 0.4]]]]))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_start_inside_ball(norm):
    x = torch.rand(16, 3, 4, 4)
    z = random_start(x, 0.25, norm, torch.Generator().manual_seed(0))
    d = (z - x).flatten(1)
    size = d.norm(dim=1) if norm == "l2" else d.abs().amax(dim=1)
    assert (size <= 0.25 + 1e-6).all() and (size > 0).all()


@pytest.mark.parametrize("kwargs", [dict(eps=0.0), dict(eps=-1.0), dict(step_size=0.0)])
def test_bad_attack_arguments_raise(linear_model, images, kwargs):
    args = dict(norm="l2", eps=0.5, step_size=0.1, steps=3) | kwargs
    with pytest.raises(ValueError, match="must be positive"):
        pgd_attack(linear_model, images, torch.zeros(4, dtype=torch.long), **args)
    with pytest.raises(ValueError, match="norm"):
        pgd_attack(linear_model, images, torch.zeros(4, dtype=torch.long), **(args | dict(norm="l1", eps=1, step_size=1)))
