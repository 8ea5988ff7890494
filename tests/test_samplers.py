"""The sampler registry: one signature for DAT's chain, SGLD and PYLD; per-item SGLD noise; the
replay buffer's refusal of diverged samples and its informative starts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dat_lightning.generation import generate
from dat_lightning.methods.jempp import ClassGaussians, pyld_sample
from dat_lightning.replay_buffer import ReplayBuffer
from dat_lightning.samplers import SamplerSpec, run_sampler
from dat_lightning.sampling import pgd_sample
from dat_lightning.sgld import sgld_sample, standard_normal


class Quadratic(nn.Module):
    """Logits ``-||x - c_k||^2``: smooth, with a different input gradient per class."""

    def __init__(self, classes: int = 3, shape=(1, 4, 4)) -> None:
        super().__init__()
        self.num_classes = classes
        self.centres = nn.Parameter(torch.rand(classes, *shape, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return -((x.unsqueeze(1) - self.centres) ** 2).flatten(2).sum(2)


@pytest.mark.parametrize("spec, direct", [
    (SamplerSpec("pgd"), lambda m, x0, y: pgd_sample(m, x0, y, step_size=0.3, steps=4)),
    (SamplerSpec("pyld", clip=0.05), lambda m, x0, y: pyld_sample(m, x0, y, step_size=0.3, steps=4, clip=0.05)),
    (SamplerSpec("sgld", noise=0.0), lambda m, x0, y: sgld_sample(m, x0, y, step_size=0.3, steps=4)),
])
def test_every_sampler_is_its_function_behind_one_signature(spec, direct):
    model, x0, y = Quadratic(), torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    got = run_sampler(spec, model, x0, y, step_size=0.3, steps=4)
    torch.testing.assert_close(got, direct(model, x0, y))
    assert not torch.equal(got, x0)


def test_spec_from_names_nodes_and_bad_values():
    assert SamplerSpec.of(None) == SamplerSpec("pgd")
    assert SamplerSpec.of("sgld") == SamplerSpec("sgld")
    assert SamplerSpec.of({"name": "sgld", "noise": 0.01, "clip": None}) == SamplerSpec("sgld", noise=0.01)
    with pytest.raises(ValueError, match="sampler must be one of"):
        SamplerSpec("langevin")
    with pytest.raises(ValueError, match="noise must be >= 0"):
        SamplerSpec("sgld", noise=-1.0)
    with pytest.raises(ValueError, match="clip must be > 0"):
        SamplerSpec("pyld", clip=0.0)


def test_sgld_noise_of_an_item_does_not_depend_on_its_batch():
    model, source = Quadratic(), torch.rand(12, 1, 4, 4)
    spec = SamplerSpec("sgld", noise=0.1)
    whole, _ = generate(model, source, range(0, 6), 3, step_size=0.2, steps=3, sampler=spec)
    parts = [generate(model, source, r, 3, step_size=0.2, steps=3, sampler=spec)[0] for r in (range(0, 2), range(2, 6))]
    torch.testing.assert_close(whole, torch.cat(parts))
    noiseless, _ = generate(model, source, range(0, 6), 3, step_size=0.2, steps=3, sampler=SamplerSpec("sgld"))
    assert (whole - noiseless).abs().max() > 0.01  # the noise is there


def test_per_row_generators_give_each_row_its_own_stream():
    like = torch.zeros(3, 2, 2)
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7)]
    noise = standard_normal(like, gens)
    torch.testing.assert_close(noise[1], torch.randn(2, 2, generator=torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        standard_normal(like, gens[:2])


def test_buffer_refuses_non_finite_samples_and_keeps_those_slots():
    buffer = ReplayBuffer(6, (1, 2, 2), generator=torch.Generator().manual_seed(0))
    before = buffer.images.clone()
    x = torch.full((3, 1, 2, 2), 0.5)
    x[1, 0, 0, 0] = float("nan")
    refused = buffer.store(torch.tensor([0, 2, 4]), x)
    assert refused == 1
    assert torch.equal(buffer.images[0], x[0]) and torch.equal(buffer.images[4], x[2])
    assert torch.equal(buffer.images[2], before[2]) and buffer.images.isfinite().all()


def test_buffer_restarts_from_the_given_starts_and_fill_checks_the_shape():
    buffer = ReplayBuffer(4, (1, 2, 2), reinit_prob=1.0)
    x0, _ = buffer.draw(3, fresh_starts=lambda n: torch.full((n, 1, 2, 2), 0.25))
    assert torch.equal(x0, torch.full((3, 1, 2, 2), 0.25))
    with pytest.raises(ValueError, match="fill needs images of shape"):
        buffer.fill(torch.zeros(3, 1, 2, 2))


def test_class_gaussian_samples_are_the_mean_plus_the_cholesky_factor_times_noise():
    images = torch.rand(40, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(40) % 2
    gaussians = ClassGaussians(images, labels, 2)
    classes = torch.tensor([1, 0, 1, 1])
    got = gaussians.sample(classes, generator=torch.Generator().manual_seed(3))
    z = torch.randn(4, 9, generator=torch.Generator().manual_seed(3))
    expected = torch.stack([gaussians.means[c] + gaussians.cholesky[c] @ z[i] for i, c in enumerate(classes)])
    torch.testing.assert_close(got, expected.clamp(0, 1).view(4, 1, 3, 3))
