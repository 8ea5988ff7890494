import itertools

import torch
import torch.nn.functional as F

from dat_lightning.energy import marginal_energy
from dat_lightning.losses import bce_energy_loss, conditional_auc


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
