"""Robust accuracy under AutoAttack (``pyautoattack``), with guards on how it is called.

Two mistakes silently inflate robust accuracy: attacking a model left in train mode (BatchNorm
and dropout change the function under attack) and attacking inputs that are not in [0, 1]
(then eps is not in pixel units). Both raise here instead of producing a number.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyautoattack
import torch
from torch import Tensor, nn

from dat_lightning.sharding import Shards

NORM_NAMES = {"l2": "L2", "linf": "Linf", "l1": "L1"}
ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")


def check_eval_mode(model: nn.Module) -> None:
    """Raise if any submodule of ``model`` is in train mode."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:5]) + (f" ... ({len(training)} in all)" if len(training) > 5 else "")
        raise RuntimeError(
            f"the model is in train mode ({shown}): BatchNorm/dropout would change the function under "
            "attack and the robust accuracy would be wrong. Call model.eval() first (load_classifier "
            "returns an eval-mode model)."
        )


def check_unit_interval(x: Tensor, what: str = "inputs") -> None:
    """Raise unless every value of ``x`` is finite and in [0, 1] (eps is in pixel units of [0, 1])."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf values")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"{what} lie in [{low:.3f}, {high:.3f}], not in [0, 1]: AutoAttack's eps is in pixel units "
            "of images in [0, 1]. Do not normalize the inputs (the model normalizes them itself)."
        )


def normalized_norm(norm: str) -> str:
    """``l2`` / ``L2`` -> ``L2`` (pyautoattack's spelling)."""
    key = str(norm).lower()
    if key not in NORM_NAMES:
        raise ValueError(f"norm must be one of {sorted(NORM_NAMES)}, got {norm!r}")
    return NORM_NAMES[key]


def perturbation_norms(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    """Per-sample size of ``x_adv - x`` in the threat model's norm."""
    delta = (x_adv - x).flatten(1).double()
    return {"L2": delta.norm(dim=1), "Linf": delta.abs().amax(dim=1), "L1": delta.abs().sum(dim=1)}[norm]


@torch.no_grad()
def predictions(model: nn.Module, x: Tensor, batch_size: int = 250) -> Tensor:
    """Argmax predictions of ``model`` over ``x`` in batches (on the model's device), on CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "L2",
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    n_restarts: int | None = None,
    n_iter: int | None = None,
    batch_size: int = 250,
    seed: int = 0,
    shards: Shards | None = None,
) -> dict[str, Any]:
    """Robust accuracy of ``model`` on ``(x, y)`` under AutoAttack.

    The examples are attacked in fixed chunks of ``batch_size``, chunk ``c`` with the seed
    ``seed + c``, so each example's result does not depend on how many processes (``shards``)
    share the chunks; every process gets the same numbers.

    Args:
        model: eval-mode classifier on images in [0, 1] (checked).
        x, y: images in [0, 1] (checked) and labels.
        eps: radius in pixel units; ``norm``: ``L2``, ``Linf`` or ``L1``.
        version: ``standard`` (APGD-CE, APGD-T, FAB-T, Square) or ``plus`` / ``rand``; giving
            ``attacks`` (e.g. ``["apgd-ce"]``) runs that custom list instead (for quick runs).
        n_restarts, n_iter: override APGD's restarts / iterations (custom runs only).

    Returns:
        ``robust_accuracy``, ``clean_accuracy`` (same examples) and a ``threat_model`` block.
    """
    check_eval_mode(model)
    check_unit_interval(x)
    norm = normalized_norm(norm)
    if attacks:
        unknown = sorted(set(attacks) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown AutoAttack attacks {unknown}; choose from {list(ATTACKS)}")
        version = "custom"
    elif version == "custom":
        raise ValueError("version=custom needs a list of attacks, e.g. attacks=[apgd-ce]")
    elif n_restarts is not None or n_iter is not None:
        raise ValueError(f"n_restarts / n_iter only apply to a custom attack list, not version={version}")
    device = next(model.parameters()).device
    shards = shards or Shards()

    def adversary_for(chunk: int):
        adversary = pyautoattack.AutoAttack(model, attacks=list(attacks) if attacks else None, device=device,
                                            eps=float(eps), norm=norm, seed=seed + chunk, version=version)
        for attack in (adversary.apgd, adversary.apgd_targeted):
            if n_restarts is not None:
                attack.n_restarts = int(n_restarts)
            if n_iter is not None:
                attack.n_iter = int(n_iter)
        return adversary

    logging.getLogger("auto-attack").setLevel(logging.DEBUG)  # its progress lines are debug messages
    y = y.cpu()
    robust, clean, norms = [], [], []
    for chunk, rows in shards.chunks(len(x), batch_size):
        xb, yb = x[rows.start : rows.stop].cpu(), y[rows.start : rows.stop]
        x_adv, _ = adversary_for(chunk).run_standard_evaluation(xb.to(device), yb.to(device), batch_size=batch_size)
        x_adv = x_adv.cpu()
        check_unit_interval(x_adv, "adversarial examples")
        norms.append((rows, perturbation_norms(x_adv, xb, norm)))
        robust.append((rows, predictions(model, x_adv, batch_size) == yb))
        clean.append((rows, predictions(model, xb, batch_size) == yb))
    # The attack must have stayed inside the threat model, or the number means nothing.
    worst = float(shards.collect(len(x), norms).max())
    if worst > eps * (1 + 1e-4) + 1e-6:
        raise RuntimeError(f"AutoAttack returned a perturbation of {norm} norm {worst:.5f} > eps={eps}")
    check_eval_mode(model)  # nothing in the attack may have switched the model to train mode
    reference = adversary_for(0)
    return {
        "robust_accuracy": float(shards.collect(len(x), robust, dtype=torch.bool).float().mean()),
        "clean_accuracy": float(shards.collect(len(x), clean, dtype=torch.bool).float().mean()),
        "threat_model": {
            "norm": norm,
            "eps": float(eps),
            "units": "pixels of images in [0, 1]",
            "n_examples": len(x),
            "version": version,
            "attacks": list(reference.attacks_to_run),
            "apgd_restarts": reference.apgd.n_restarts,
            "apgd_iterations": reference.apgd.n_iter,
            "seed": seed,
            "seeds": f"seed + c for chunk c of {batch_size} examples",
            "max_perturbation": worst,
            "library": f"pyautoattack {pyautoattack.__version__}",
        },
    }
