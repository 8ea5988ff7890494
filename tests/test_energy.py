import math

import torch

from dat_lightning.energy import joint_energy, marginal_energy


def test_joint_energy_is_negative_class_logit():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]])
    assert torch.equal(joint_energy(logits, torch.tensor([2, 1])), torch.tensor([-3.0, 1.0]))


def test_marginal_energy_is_negative_logsumexp():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    expected = -math.log(math.e + math.e**2 + math.e**3)
    assert abs(marginal_energy(logits).item() - expected) < 1e-6


def test_energies_are_float32_under_bf16():
    logits = torch.randn(5, 10).bfloat16()
    assert marginal_energy(logits).dtype == torch.float32
    assert joint_energy(logits, torch.zeros(5, dtype=torch.long)).dtype == torch.float32
