"""Fused stage-two passes: the attack and the chain share one forward/backward per inner step.

A stage-two step runs K discriminative PGD steps on the batch ``x`` and T chain steps on the seeds
``x0`` (``docs/algorithm.md``, "Stage two"), then three forwards (``x_adv``, ``x_hat``, ``x_T``) for the loss. When every
layer treats samples independently (BatchNorm frozen in eval mode, LayerNorm, GroupNorm, ...), the
input gradient of a sum of per-sample objectives over a concatenated batch is, sample by sample,
the gradient each loop would have computed on its own. So both loops can run as one batch of up to
2B images per inner step, and the three loss forwards as one batch of 3B: the same results with
``max(K, T) + 1`` large passes instead of ``K + T + 3`` small ones, which keeps an accelerator busy.

When one loop is done (usually the attack, K < T), its samples leave the batch and the other loop
continues alone: their values stop changing exactly where the separate loop would have stopped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dat_lightning.attacks import PGDSettings, ascent_step, input_gradient, project, random_start
from dat_lightning.sampling import ChainSettings, chain_objective

_STAT_BUFFERS = ("running_mean", "running_var")


def batch_coupling_layers(module: nn.Module) -> list[str]:
    """Names of submodules whose output for one sample depends on the rest of the batch.

    Any layer in training mode that keeps running statistics (BatchNorm and its SyncBN / timm
    subclasses, EvoNorm-B, InstanceNorm with ``track_running_stats``) computes or updates them
    from the whole batch, so concatenating batches would change its result. Frozen (eval-mode)
    BatchNorm, LayerNorm and GroupNorm are per-sample.
    """
    return [
        name or type(m).__name__
        for name, m in module.named_modules()
        if m.training and any(getattr(m, b, None) is not None for b in _STAT_BUFFERS)
    ]


def fusion_blocker(module: nn.Module) -> str | None:
    """Why fused passes would differ from the separate ones for ``module``, or None when they match."""
    layers = batch_coupling_layers(module)
    if not layers:
        return None
    shown = ", ".join(layers[:3]) + (f" ... ({len(layers)} in all)" if len(layers) > 3 else "")
    return f"layers that use batch statistics in training mode ({shown}) couple the samples of a batch"


def fused_attack_and_chain(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    x0: Tensor,
    y_chain: Tensor | None,
    *,
    attack: PGDSettings,
    chain: ChainSettings,
    chain_steps: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``pgd_attack(model, x, y, attack)`` and ``pgd_sample(model, x0, y_chain, ...)`` in one loop.

    Each inner step evaluates ``model`` once on ``cat([x_adv, x_t])`` (only the loops still running)
    and takes one input gradient of ``CE_sum(adv part) + sum(-E(chain part))``; with a per-sample
    model (see :func:`fusion_blocker`) this equals the two separate loops.

    Args:
        model: maps images in [0, 1] to logits; must treat samples independently.
        x, y: the classification batch and its labels (the PGD attack of Eq. 10-11).
        x0, y_chain: chain seeds and target classes (None: the marginal chain of Eq. 8).
        attack: the PGD attack (:class:`~dat_lightning.attacks.PGDSettings`).
        chain, chain_steps: eta (``chain.step_size``) and T of the chain (:func:`pgd_sample`).
        generator: RNG of the attack's random start (as in :func:`pgd_attack`).

    Returns:
        ``(x_adv, x_T)``, both detached.
    """
    norm, eps, step_size, steps = attack.norm, attack.eps, attack.step_size, attack.steps
    if chain_steps < 0:
        raise ValueError(f"chain steps must be >= 0, got {chain_steps}")
    x_orig = x.detach()
    x_adv = random_start(x_orig, eps, norm, generator) if steps > 0 and attack.random_init else x_orig
    x_gen = x0.detach()
    n_adv_total = len(x_adv)
    for i in range(max(steps, chain_steps)):
        adv_on, gen_on = i < steps, i < chain_steps
        n_adv = n_adv_total if adv_on else 0
        batch = torch.cat([t for t, on in ((x_adv, adv_on), (x_gen, gen_on)) if on])

        def objective(z: Tensor, n_adv: int = n_adv, gen_on: bool = gen_on) -> Tensor:
            logits = model(z)
            total = logits.new_zeros((), dtype=torch.float32)
            if n_adv:
                total = total + F.cross_entropy(logits[:n_adv].float(), y, reduction="sum")
            if gen_on:
                total = total + chain_objective(logits[n_adv:], y_chain).sum()
            return total

        g = input_gradient(objective, batch)
        if adv_on:
            x_adv = project(ascent_step(x_adv, g[:n_adv], step_size, norm), x_orig, eps, norm)
        if gen_on:
            x_gen = ascent_step(x_gen, g[n_adv:], chain.step_size, "l2").clamp(0.0, 1.0)
    return x_adv.detach(), x_gen.detach()


def fused_logits(model: Callable[[Tensor], Tensor], *batches: Tensor) -> tuple[Tensor, ...]:
    """``tuple(model(b) for b in batches)`` computed as one forward of the concatenated batches."""
    logits = model(torch.cat(batches))
    return tuple(logits.split([len(b) for b in batches]))
