"""JEM (Grathwohl et al., 2019): a classifier trained as ``log p(y|x) + log p(x)``.

The gradient of ``log p(x) = -E(x) - log Z`` with respect to the parameters is estimated by
contrasting data with samples of the model (their Eq. 10-11): minimizing
``mean E(x_data) - mean E(x_sample)`` (:func:`maximum_likelihood_loss`) lowers the energy of data
and raises that of the SGLD samples, which come from a replay buffer
(:mod:`dat_lightning.replay_buffer`, :mod:`dat_lightning.sgld`). The whole loss is
``CE(f(x), y) + w_px * (mean E(x) - mean E(x_q))`` (:func:`jem_loss`; JEM: ``w_px = 1``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from dat_lightning.energy import marginal_energy

Stats = dict[str, Tensor]


def maximum_likelihood_loss(logits_data: Tensor, logits_samples: Tensor) -> Tensor:
    """``mean_x E(x) - mean_q E(x_q)`` with ``E = -logsumexp f``: the contrastive estimate of
    ``-log p(x)`` up to the constant ``log Z`` (its gradient is the maximum-likelihood one)."""
    return marginal_energy(logits_data).mean() - marginal_energy(logits_samples).mean()


def jem_loss(logits_data: Tensor, logits_samples: Tensor, logits_labelled: Tensor, y: Tensor,
             ce_weight: float = 1.0, px_weight: float = 1.0) -> tuple[Tensor, Stats]:
    """``w_ce CE(f(x_l), y) + w_px (mean E(x_d) - mean E(x_q))``, with what is logged.

    JEM draws two independent train batches per step: ``x_d`` (unlabelled) for ``p(x)`` and
    ``(x_l, y)`` for ``p(y|x)``; pass the same logits twice for one batch."""
    loss_ce = F.cross_entropy(logits_labelled.float(), y)
    loss_px = maximum_likelihood_loss(logits_data, logits_samples)
    stats = {"loss_ce": loss_ce.detach(), "loss_px": loss_px.detach(),
             "acc": (logits_labelled.argmax(1) == y).float().mean(),
             "energy_real": marginal_energy(logits_data).mean().detach(),
             "energy_fake": marginal_energy(logits_samples).mean().detach()}
    return ce_weight * loss_ce + px_weight * loss_px, stats
