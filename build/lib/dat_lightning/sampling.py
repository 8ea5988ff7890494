"""The generative PGD chain (paper Eq. 8 and Eq. 14; ``docs/algorithm.md``, "The chain").

``x_{t+1} = clamp(x_t + eta * g / ||g||_2, 0, 1)`` with ``g`` the input gradient of the
class logit ``f(x_t)[y]`` (ancestral, class-conditional) or of ``logsumexp f(x_t)``
(marginal). No eps-ball and no noise: the chain is deterministic given its seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from dat_lightning.attacks import ascent_step, check_positive, input_gradient
from dat_lightning.energy import joint_energy, marginal_energy


@dataclass(frozen=True)
class ChainSettings:
    """The generative chain of training: the L2 length ``step_size`` of each step (pixel units,
    > 0) and whether it ascends the class logit (``conditional``, Eq. 14) or ``logsumexp`` (Eq. 8).
    Its length T is the curriculum's (:class:`~dat_lightning.callbacks.GenStepCurriculum`)."""

    step_size: float
    conditional: bool = True

    def __post_init__(self) -> None:
        check_positive(step_size=self.step_size)
        object.__setattr__(self, "step_size", float(self.step_size))
        object.__setattr__(self, "conditional", bool(self.conditional))


def chain_objective(logits: Tensor, y: Tensor | None) -> Tensor:
    """Per-sample ``-E(x, y) = f(x)[y]`` (Eq. 14) or ``-E(x) = logsumexp f(x)`` (Eq. 8): what the
    chain ascends."""
    return -(joint_energy(logits, y) if y is not None else marginal_energy(logits))


def chain_step(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor | None, step_size: float) -> Tensor:
    """One step of Eq. 14 (``y`` given) or Eq. 8 (``y`` None): descend the energy, clamp to [0, 1]."""
    g = input_gradient(lambda z: chain_objective(model(z), y), x)
    return ascent_step(x, g, step_size, "l2").clamp(0.0, 1.0)


def pgd_sample(
    model: Callable[[Tensor], Tensor],
    x0: Tensor,
    y: Tensor | None = None,
    *,
    step_size: float,
    steps: int,
) -> Tensor:
    """Run the generative chain for ``steps`` steps from seeds ``x0``.

    Args:
        model: maps images in [0, 1] to logits.
        x0: seed images in [0, 1] (OOD crops or uniform noise), shape (B, C, H, W).
        y: target classes (B,) for ancestral sampling; None samples the marginal.
        step_size: eta, the L2 length of every step in pixel units.
        steps: T; 0 returns the seeds unchanged.

    Returns:
        ``x_T``, detached, in [0, 1].
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    x = x0.detach()
    if steps == 0:
        return x
    check_positive(step_size=step_size)
    for _ in range(steps):
        x = chain_step(model, x, y, step_size)
    return x.detach()


def class_balanced_labels(n: int, num_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """Labels ``i % K`` for ``i < n``: the evaluation protocol's class-balanced targets."""
    return torch.arange(n, device=device) % num_classes
