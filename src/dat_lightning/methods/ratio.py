"""RATIO (Augustin, Meinke and Hein, 2020): adversarial robustness on in- and out-distribution.

``L = 0.5 * CE(f(x_adv), y) + 0.5 * lambda * KLU(f(o_adv))`` (docs/methods.md, section 4): the
in-distribution term is adversarial training (L2 eps 0.5 on CIFAR-10), the out-distribution term
pushes the prediction on adversarially perturbed OOD images (80M Tiny Images, L2 eps 1.0) to the
uniform distribution, ``KLU(z) = KL(U || softmax z)``; the OOD attack maximises the same KLU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Stats = dict[str, Tensor]


def uniform_kl(logits: Tensor) -> Tensor:
    """Per sample ``KL(U || softmax z) = -log K - mean_k log softmax(z)_k`` (>= 0, zero for uniform
    predictions): how far a prediction on an OOD image is from "no idea"."""
    k = logits.shape[1]
    return -math.log(k) - F.log_softmax(logits.float(), dim=1).mean(dim=1)


def ratio_loss(logits_adv: Tensor, y: Tensor, logits_ood_adv: Tensor, ood_weight: float = 1.0) -> tuple[Tensor, Stats]:
    """``0.5 CE(f(x_adv), y) + 0.5 * ood_weight * mean KLU(f(o_adv))`` (RATIO: ``ood_weight = 1``)."""
    loss_ce = F.cross_entropy(logits_adv.float(), y)
    loss_ood = uniform_kl(logits_ood_adv).mean()
    stats = {"loss_ce": loss_ce.detach(), "loss_ood": loss_ood.detach(),
             "acc_adv": (logits_adv.argmax(1) == y).float().mean(),
             "ood_confidence": torch.softmax(logits_ood_adv.float(), 1).amax(1).mean().detach()}
    return 0.5 * loss_ce + 0.5 * ood_weight * loss_ood, stats
