"""Stage-two losses and the curriculum's signal (paper Eq. 9, SPEC "Stage 2")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from dat_lightning.energy import joint_energy, marginal_energy


def bce_energy_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Eq. 9: BCE on ``logsumexp f(x)`` with real images labelled 1 and chain samples 0.

    The mean runs over all 2B logits, which equals the mean of ``softplus(E(x_hat))``
    and ``softplus(-E(x_T))``. No bias, no temperature.
    """
    scores = torch.cat([-marginal_energy(logits_real), -marginal_energy(logits_fake)])
    targets = torch.cat([torch.ones(len(logits_real)), torch.zeros(len(logits_fake))]).to(scores)
    return F.binary_cross_entropy_with_logits(scores, targets)


def conditional_auc(logits_real: Tensor, y_real: Tensor, logits_fake: Tensor, y_fake: Tensor) -> Tensor:
    """AUROC separating real ``f(x_hat)[y_hat]`` (positive) from generated ``f(x_T)[y']``.

    This is the curriculum's signal: near 1 when the classifier still tells its own
    samples from data, near 0.5 when the chain has caught up.
    """
    scores = torch.cat([-joint_energy(logits_real, y_real), -joint_energy(logits_fake, y_fake)])
    targets = torch.cat([torch.ones(len(logits_real)), torch.zeros(len(logits_fake))])
    return binary_auroc(scores.detach().cpu(), targets.long())
