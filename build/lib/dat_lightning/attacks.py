"""Projected gradient methods on images in [0, 1] (paper Eq. 10-11; ``docs/algorithm.md``, "PGD").

Every input gradient is taken with ``torch.autograd.grad(loss, x)``: parameter ``.grad``
fields are never written, and each step starts from a detached tensor so no autograd
graph survives across steps (memory does not grow with the number of steps).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

NORMS = ("l2", "linf")
T = TypeVar("T")
_TINY = 1e-12


def _per_sample_l2(t: Tensor) -> Tensor:
    """L2 norm over all non-batch dims, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def l2_normalized(g: Tensor) -> Tensor:
    """``g / (||g||_2 + tiny)`` per sample: the direction of an L2 steepest-ascent step."""
    return g / (_per_sample_l2(g) + _TINY)


def ascent_step(x: Tensor, g: Tensor, step_size: float, norm: str) -> Tensor:
    """One steepest-ascent step: ``x + step * g/||g||_2`` (L2) or ``x + step * sign(g)`` (Linf)."""
    if norm == "l2":
        return x + step_size * l2_normalized(g)
    if norm == "linf":
        return x + step_size * g.sign()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def project(x: Tensor, x_orig: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``x`` onto the eps-ball around ``x_orig`` then clamp to the image box [0, 1].

    L2 rescales ``delta = x - x_orig`` to norm <= eps; Linf clips each pixel of ``delta``.
    """
    delta = x - x_orig
    if norm == "l2":
        factor = torch.clamp(eps / (_per_sample_l2(delta) + _TINY), max=1.0)
        delta = delta * factor
    elif norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return (x_orig + delta).clamp(0.0, 1.0)


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """A uniform point of the eps-ball around ``x`` (Linf: per pixel; L2: uniform in the ball)."""
    noise = torch.empty_like(x)
    if norm == "linf":
        noise.uniform_(-eps, eps, generator=generator)
    elif norm == "l2":
        noise.normal_(generator=generator)
        dims = x[0].numel()
        radius = torch.rand(x.shape[0], device=x.device, generator=generator) ** (1.0 / dims)
        noise = l2_normalized(noise) * eps * radius.view(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return (x + noise).clamp(0.0, 1.0)


def input_gradient(objective: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``d objective(x).sum() / dx`` without touching any parameter's ``.grad``.

    The objective is evaluated in float32 (its value decides the step direction), and
    the gradient is taken with respect to ``x`` alone.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value = objective(x).float().sum()
        (grad,) = torch.autograd.grad(value, x)
    return grad.detach()


def check_positive(**values: float) -> None:
    """Raise a ValueError naming every argument that is not > 0 (attacks, chains, configs)."""
    bad = {k: v for k, v in values.items() if not v > 0}
    if bad:
        listing = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise ValueError(f"must be positive: {listing}")


def from_config(cls: type[T], name: str, value: T | Mapping[str, Any]) -> T:
    """A settings dataclass (:class:`PGDSettings`, ``ChainSettings``) from a config node, its
    errors prefixed by the node's ``name`` (e.g. ``clf_attack: must be positive: eps=0``)."""
    if isinstance(value, cls):
        return value
    try:
        return cls(**dict(value))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: {err}") from None


@dataclass(frozen=True)
class PGDSettings:
    """One eps-ball attack (Eq. 10-11), checked once when it is made.

    ``norm`` is ``"l2"`` or ``"linf"``; ``eps`` and ``step_size`` are in pixel units and must be
    positive when ``steps`` > 0; ``steps`` = 0 leaves the input unchanged; ``random_init`` starts
    from a uniform point of the ball.
    """

    norm: str
    eps: float
    step_size: float
    steps: int
    random_init: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps}")
        if self.steps > 0:
            check_positive(eps=self.eps, step_size=self.step_size)
        for name, cast in (("eps", float), ("step_size", float), ("steps", int), ("random_init", bool)):
            object.__setattr__(self, name, cast(getattr(self, name)))



def _settings(settings: PGDSettings | None, fields: dict[str, Any]) -> PGDSettings:
    if settings is not None and fields:
        raise TypeError(f"give the attack as PGDSettings or as keywords, not both (got {sorted(fields)})")
    return settings if settings is not None else PGDSettings(**fields)


def pgd_attack(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    settings: PGDSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    **fields: Any,
) -> Tensor:
    """Untargeted PGD maximizing cross-entropy inside an eps-ball (Eq. 10-11).

    Args:
        model: maps images in [0, 1] to logits.
        x: clean images in [0, 1], shape (B, C, H, W).
        y: true labels, shape (B,).
        settings: the attack; or give its fields as keywords (``norm="l2", eps=0.5,
            step_size=0.1, steps=10``), see :class:`PGDSettings`.
        generator: RNG of the random start.

    Returns:
        Adversarial images in the eps-ball around ``x`` and in [0, 1], detached.
    """

    def objective(z: Tensor) -> Tensor:
        return F.cross_entropy(model(z).float(), y, reduction="sum")

    return pgd_maximize(objective, x, _settings(settings, fields), generator=generator)


def pgd_maximize(
    objective: Callable[[Tensor], Tensor],
    x: Tensor,
    settings: PGDSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    **fields: Any,
) -> Tensor:
    """Projected gradient ascent of ``objective(x).sum()`` inside the eps-ball around ``x``.

    The loop of every eps-ball attack (paper Eq. 11: step, then project; 0 steps returns ``x``):
    untargeted PGD on CE, targeted counterfactuals (ascend ``f(x)[y']``), adversarial OOD (ascend
    a confidence score). ``objective`` maps a batch to per-sample values.
    """
    s = _settings(settings, fields)
    if s.steps == 0:
        return x.detach()
    x_orig = x.detach()
    x_adv = random_start(x_orig, s.eps, s.norm, generator) if s.random_init else x_orig
    for _ in range(s.steps):
        g = input_gradient(objective, x_adv)
        x_adv = project(ascent_step(x_adv, g, s.step_size, s.norm), x_orig, s.eps, s.norm)
    return x_adv.detach()
