"""EB-JDAT (CVPR 2026, "Your Classifier Can Do More"), on top of JEM++, as its code trains it
(docs/methods.md, section 3; where the code and the paper differ, the code is followed).

Per step: ``L = L1 + CE(f(x_l), y) + w2 * L2 + CE(f(x_adv), y)`` with
``L1 = mean E(x_d) - mean E(x_q)`` (JEM++'s term, SGLD samples ``x_q``),
``L2 = mean E(x_d) - mean E(x_adv)`` (``w2 = 0.1`` in the published script; the paper says 1), and
``x_adv`` from :func:`adversarial_examples`: sign steps that raise the true-class logit while
turning the logit vector away from the clean image's (random start, box clamp, no eps projection).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dat_lightning.attacks import input_gradient
from dat_lightning.energy import marginal_energy

Stats = dict[str, Tensor]


def logit_direction_distance(logits_a: Tensor, logits_b: Tensor, tiny: float = 1e-10) -> Tensor:
    """Per sample ``|| a / ||a|| - b / ||b|| ||^2`` over the logit vectors."""
    a = logits_a.float() / (logits_a.float().norm(dim=1, keepdim=True) + tiny)
    b = logits_b.float() / (logits_b.float().norm(dim=1, keepdim=True) + tiny)
    return (a - b).pow(2).sum(dim=1)


def adversarial_examples(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *, start: float = 4 / 255,
                         step_size: float = 1 / 255, steps: int = 5,
                         generator: torch.Generator | None = None) -> Tensor:
    """EB-JDAT's inner loop: from ``x + U(-start, start)``, ``steps`` sign steps ascending
    ``f(x')[y] + logit_direction_distance(f(x), f(x'))``, clamped to [0, 1] (published: 5 steps of
    1/255 from a 4/255 start, i.e. its 2/255 and 8/255 on [-1, 1] images). Input gradients only."""
    with torch.no_grad():
        logits_clean = model(x).float()
    noise = torch.empty(x.shape).uniform_(-start, start, generator=generator).to(x)
    x_adv = (x.detach() + noise).clamp(0, 1)
    for _ in range(steps):
        def objective(z: Tensor) -> Tensor:
            logits = model(z).float()
            return logits.gather(1, y.view(-1, 1)).squeeze(1) + logit_direction_distance(logits_clean, logits)

        x_adv = (x_adv + step_size * input_gradient(objective, x_adv).sign()).clamp(0, 1)
    return x_adv.detach()


def eb_jdat_loss(logits_data: Tensor, logits_samples: Tensor, logits_labelled: Tensor, y: Tensor,
                 logits_adv: Tensor, adv_energy_weight: float = 0.1) -> tuple[Tensor, Stats]:
    """``[mean E(x_d) - mean E(x_q)] + CE(f(x_l), y) + w2 [mean E(x_d) - mean E(x_adv)] + CE(f(x_adv), y)``."""
    energy_data = marginal_energy(logits_data).mean()
    loss_px = energy_data - marginal_energy(logits_samples).mean()
    loss_adv_energy = energy_data - marginal_energy(logits_adv).mean()
    loss_ce = F.cross_entropy(logits_labelled.float(), y)
    loss_ce_adv = F.cross_entropy(logits_adv.float(), y)
    stats = {"loss_px": loss_px.detach(), "loss_adv_energy": loss_adv_energy.detach(), "loss_ce": loss_ce.detach(),
             "loss_ce_adv": loss_ce_adv.detach(), "acc": (logits_labelled.argmax(1) == y).float().mean(),
             "acc_adv": (logits_adv.argmax(1) == y).float().mean()}
    return loss_px + loss_ce + adv_energy_weight * loss_adv_energy + loss_ce_adv, stats
