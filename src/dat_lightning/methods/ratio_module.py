"""RATIO as a LightningModule: adversarial training plus adversarial OOD images pushed to uniform
confidence (docs/methods.md, section 4; the loss is :func:`~dat_lightning.methods.ratio.ratio_loss`).

Per step: ``x_adv`` by DAT's training PGD (``clf_attack``, the same attack as AT and DAT's stage
one, so the three differ only in their losses), ``o_adv`` by PGD maximising ``KL(U || softmax f)``
around the step's OOD batch (``ood_attack``; RATIO: L2 eps 1.0, 20 steps of 0.1), then one joint
forward of both (BatchNorm statistics over the two, as RATIO's interleaved batch). RATIO's
ArgminPGD (momentum, best iterate) is replaced by our PGD: docs/methods.md, section 8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from dat_lightning.attacks import PGDSettings, from_config, pgd_attack, pgd_maximize
from dat_lightning.methods.ratio import ratio_loss, uniform_kl
from dat_lightning.module import DATModule


class RatioModule(DATModule):
    """RATIO (Augustin, Meinke and Hein, 2020) in one stage (``stage2_epochs=0``).

    Args beyond :class:`~dat_lightning.module.DATModule`'s:
        ood_attack: the OOD images' PGD (:class:`~dat_lightning.attacks.PGDSettings` fields).
        ood_weight: lambda, the weight of the OOD term (RATIO: 1).
    """

    def __init__(self, *, ood_attack: Mapping[str, Any], ood_weight: float = 1.0, **dat: Any) -> None:
        super().__init__(**dat)
        self.ood_attack = from_config(PGDSettings, "ood_attack", ood_attack)
        self.ood_weight = float(ood_weight)

    def step_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.stage != 1:
            raise RuntimeError("RatioModule trains in one stage: set stage2_epochs=0")
        x, y = batch["clf"]
        ood = batch["ood"]
        x_adv = pgd_attack(self.net, x, y, self.objective.attack)
        o_adv = pgd_maximize(lambda z: uniform_kl(self.net(z)), ood, self.ood_attack)
        logits = self.net(torch.cat([x_adv, o_adv]))
        return ratio_loss(logits[: len(x)], y, logits[len(x):], self.ood_weight)
