"""The DAT objective, whole (paper Eq. 9-12; ``docs/algorithm.md``, "Stage one" and "Stage two").

Each equation is a small function; :class:`DATObjective` is the one callable the training step
calls for either stage. Stage one is adversarial training, ``L_AT-CE = CE(f(x_adv), y)`` with
``x_adv`` from PGD (Eq. 10-11). Stage two adds the energy loss: ``L = w_ce L_AT-CE + w_bce L_BCE``
(Eq. 12), ``L_BCE`` (Eq. 9) contrasting real images with chain samples through ``logsumexp f(x)``. The fused
and the separate passes (:mod:`dat_lightning.fused`) make the same three batches of logits, and
both end in :func:`stage_two_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from dat_lightning.attacks import PGDSettings, pgd_attack
from dat_lightning.energy import joint_energy, marginal_energy
from dat_lightning.fused import fused_attack_and_chain, fused_logits
from dat_lightning.sampling import ChainSettings, pgd_sample

Stats = dict[str, Tensor]


def adversarial_ce(logits_adv: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
    """Eq. 11 for one batch: ``CE(f(x_adv), y)`` in float32, and the adversarial accuracy."""
    loss_ce = F.cross_entropy(logits_adv.float(), y)
    return loss_ce, {"loss_ce": loss_ce.detach(), "acc_adv": (logits_adv.argmax(1) == y).float().mean()}


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


def stage_two_loss(logits_adv: Tensor, y: Tensor, logits_real: Tensor, y_hat: Tensor, logits_fake: Tensor,
                   ce_weight: float = 1.0, bce_weight: float = 1.0) -> tuple[Tensor, Stats]:
    """Eq. 12 from the three batches' logits: ``w_ce L_AT-CE + w_bce L_BCE``, with what is logged
    (energies of real and generated images, and the curriculum's AUC; chain targets ``y' = y_hat``)."""
    loss_ce, stats = adversarial_ce(logits_adv, y)
    loss_bce = bce_energy_loss(logits_real, logits_fake)
    stats |= {
        "loss_bce": loss_bce.detach(),
        "energy_real": marginal_energy(logits_real).mean().detach(),
        "energy_fake": marginal_energy(logits_fake).mean().detach(),
        "joint_energy_real": joint_energy(logits_real, y_hat).mean().detach(),
        "joint_energy_fake": joint_energy(logits_fake, y_hat).mean().detach(),
        "auc": conditional_auc(logits_real, y_hat, logits_fake, y_hat),
    }
    return ce_weight * loss_ce + bce_weight * loss_bce, stats


@dataclass(frozen=True)
class DATObjective:
    """The loss of a training step, for either stage.

    Args:
        attack: the discriminative PGD of training (Eq. 10-11).
        chain: the generative chain (Eq. 8 / 14); its length T is passed per step.
        ce_weight, bce_weight: the weights of L_AT-CE and L_BCE in stage two (1:1 in the paper).
    """

    attack: PGDSettings
    chain: ChainSettings
    ce_weight: float = 1.0
    bce_weight: float = 1.0

    def stage_one(self, net: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Stats]:
        """``w_ce L_AT-CE`` on PGD examples of ``(x, y)``."""
        loss_ce, stats = adversarial_ce(net(pgd_attack(net, x, y, self.attack)), y)
        return self.ce_weight * loss_ce, stats

    def stage_two(self, net: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, x_hat: Tensor, y_hat: Tensor,
                  x0: Tensor, chain_steps: int, fused: bool) -> tuple[Tensor, Stats]:
        """Eq. 12 on the three batches: ``(x, y)`` attacked, real ``(x_hat, y_hat)``, chain seeds ``x0``
        run ``chain_steps`` steps towards ``y' = y_hat`` (ancestral sampling). ``fused`` runs the
        attack and the chain as one batch per inner step (same results for per-sample networks)."""
        target = y_hat if self.chain.conditional else None
        if fused:
            x_adv, x_fake = fused_attack_and_chain(net, x, y, x0, target, attack=self.attack, chain=self.chain,
                                                   chain_steps=chain_steps)
            logits_adv, logits_real, logits_fake = fused_logits(net, x_adv, x_hat, x_fake)
        else:
            x_adv = pgd_attack(net, x, y, self.attack)
            x_fake = pgd_sample(net, x0, target, step_size=self.chain.step_size, steps=chain_steps)
            logits_adv, logits_real, logits_fake = net(x_adv), net(x_hat), net(x_fake)
        return stage_two_loss(logits_adv, y, logits_real, y_hat, logits_fake, self.ce_weight, self.bce_weight)
