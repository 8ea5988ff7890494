"""Stochastic gradient Langevin dynamics: the sampler of JEM and its successors (Grathwohl et al.,
2019, "Your classifier is secretly an energy based model", Eq. 11).

``x_{t+1} = x_t + alpha * d(-E(x_t))/dx_t + sigma * n_t``, ``n_t ~ N(0, I)``, with ``E(x)`` the
marginal energy ``-logsumexp f(x)`` or, class-conditionally, ``E(x, y) = -f(x)[y]``. Unlike DAT's
chain (:mod:`dat_lightning.sampling`) the gradient is not normalized, noise is added and nothing
clamps the images to [0, 1] (as in JEM).

Units: JEM's images are in [-1, 1]; ours are in [0, 1] (the classifier normalizes inside). A step
of size ``alpha`` on ``x = 2p - 1`` moves ``p`` by ``alpha / 4`` times the gradient in ``p``, and noise
``sigma`` on ``x`` is ``sigma / 2`` on ``p``: JEM's defaults (``alpha = 1``, ``sigma = 0.01``) are
``step_size = 0.25``, ``noise = 0.005`` here (:data:`JEM_DEFAULTS`).

:func:`sgld_sample` takes the arguments of :func:`~dat_lightning.sampling.pgd_sample` (model,
seeds, targets, ``step_size``, ``steps``) plus its noise, so either sampler can draw from any
checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dat_lightning.attacks import check_positive, input_gradient
from dat_lightning.sampling import chain_objective


@dataclass(frozen=True)
class SGLDSettings:
    """One SGLD chain: ``step_size`` (alpha, pixel units of [0, 1] images), ``noise`` (sigma >= 0),
    ``steps`` and whether it follows ``f(x)[y]`` (``conditional``) or ``logsumexp f(x)``."""

    step_size: float
    noise: float
    steps: int
    conditional: bool = False

    def __post_init__(self) -> None:
        check_positive(step_size=self.step_size)
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


# JEM's published chain (20 steps, alpha 1, sigma 0.01 on [-1, 1] images) in our pixel units.
JEM_DEFAULTS = SGLDSettings(step_size=0.25, noise=0.005, steps=20)


Generators = torch.Generator | Sequence[torch.Generator] | None


def standard_normal(like: Tensor, generator: Generators = None) -> Tensor:
    """``N(0, I)`` noise shaped like ``like``: from one generator, or row ``i`` from ``generator[i]``
    (CPU generators; the noise is moved to ``like``'s device)."""
    if isinstance(generator, Sequence):
        if len(generator) != len(like):
            raise ValueError(f"{len(generator)} generators for a batch of {len(like)}")
        rows = [torch.randn(like.shape[1:], generator=g) for g in generator]
        return torch.stack(rows).to(like)
    device = generator.device if generator is not None else like.device
    return torch.randn(like.shape, generator=generator, device=device).to(like)


def sgld_step(x: Tensor, grad: Tensor, step_size: float, noise: float, generator: Generators = None) -> Tensor:
    """``x + step_size * grad + noise * n`` with ``n ~ N(0, I)`` drawn from ``generator``
    (one, or one per row: :func:`standard_normal`)."""
    if noise == 0:
        return x + step_size * grad
    return x + step_size * grad + noise * standard_normal(x, generator)


def sgld_sample(
    model: Callable[[Tensor], Tensor],
    x0: Tensor,
    y: Tensor | None = None,
    *,
    step_size: float,
    steps: int,
    noise: float = 0.0,
    generator: Generators = None,
) -> Tensor:
    """Run SGLD for ``steps`` steps from ``x0`` on ``f(x)[y]`` (``y`` given) or ``logsumexp f(x)``.

    Input gradients only (:func:`~dat_lightning.attacks.input_gradient`): no parameter's ``.grad``
    changes. The caller chooses the network's mode (JEM samples in eval mode). Returns ``x_T``,
    detached, not clamped.
    """
    SGLDSettings(step_size=step_size, noise=noise, steps=steps)  # the same checks
    x = x0.detach()
    for _ in range(steps):
        g = input_gradient(lambda z: chain_objective(model(z), y), x)
        x = sgld_step(x, g, step_size, noise, generator)
    return x.detach()
