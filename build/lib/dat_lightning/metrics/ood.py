"""Out-of-distribution detection: confidence scores, AUROC, and adversarial OOD inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from dat_lightning.attacks import pgd_maximize
from dat_lightning.energy import marginal_energy

Score = Callable[[Tensor], Tensor]


def max_softmax(logits: Tensor) -> Tensor:
    """``max_y p(y|x)``: the classifier's confidence."""
    return logits.float().softmax(dim=1).max(dim=1).values


def negative_energy(logits: Tensor) -> Tensor:
    """``-E(x) = logsumexp_y f(x)[y]`` (Eq. 4): high for in-distribution inputs."""
    return -marginal_energy(logits)


SCORES: dict[str, Score] = {"max_softmax": max_softmax, "neg_energy": negative_energy}


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """AUROC of separating in-distribution (positive) from OOD by the score (torchmetrics):
    the probability that a random ID sample scores higher than a random OOD one (ties count half)."""
    preds = torch.cat([scores_in.float().cpu(), scores_out.float().cpu()])
    target = torch.cat([torch.ones(len(scores_in)), torch.zeros(len(scores_out))]).long()
    return float(binary_auroc(preds, target))


def adversarial_ood(model: Callable[[Tensor], Tensor], x: Tensor, score: Score, *, eps: float,
                    step_size: float, steps: int, norm: str = "l2") -> Tensor:
    """OOD inputs moved inside the eps-ball to *maximize* the ID score (the worst case for the
    detector; the paper: CIFAR L2 eps 1.0, 20 steps x 0.1)."""
    return pgd_maximize(lambda z: score(model(z)), x, norm=norm, eps=eps, step_size=step_size, steps=steps)
