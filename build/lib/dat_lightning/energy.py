"""Energies of a classifier read as an energy-based model (paper Eq. 1-4).

Both are computed in float32 whatever the autocast dtype: logsumexp over bf16 logits
loses the small differences between energies that the BCE loss and the chain rely on.
"""

from __future__ import annotations

import torch
from torch import Tensor


def joint_energy(logits: Tensor, y: Tensor) -> Tensor:
    """Eq. 1: ``E(x, y) = -f(x)[y]``, one value per sample."""
    return -logits.float().gather(1, y.long().view(-1, 1)).squeeze(1)


def marginal_energy(logits: Tensor) -> Tensor:
    """Eq. 4: ``E(x) = -logsumexp_y f(x)[y]``, one value per sample."""
    return -torch.logsumexp(logits.float(), dim=1)
