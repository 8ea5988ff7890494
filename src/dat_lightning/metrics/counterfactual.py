"""Visual counterfactuals: real images pushed towards another class inside an L2 ball.

docs/algorithm.md, "How it is measured": target ``y' = (y + randint(1, K)) mod K`` (never the true class),
PGD ascending ``f(x)[y']`` inside an L2 ball of radius eps, for a range of eps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from dat_lightning.attacks import pgd_maximize
from dat_lightning.energy import joint_energy
from dat_lightning.figures import pyplot, save_figure


def counterfactual_targets(labels: Tensor, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """``y' = (y + randint(1, K)) mod K``: a uniformly random class other than ``y``."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift) % num_classes


def counterfactuals(model: Callable[[Tensor], Tensor], x: Tensor, targets: Tensor, *, eps: float,
                    steps: int, step_size: float | None = None) -> Tensor:
    """Targeted L2 PGD maximizing the class logit ``f(x)[y'] = -E(x, y')`` inside the eps-ball.

    ``step_size`` defaults to ``2.5 * eps / steps`` (the usual PGD choice: the boundary of the
    ball is reachable with room to move along it).
    """
    step = 2.5 * eps / steps if step_size is None else step_size
    targets = targets.to(x.device)
    return pgd_maximize(lambda z: -joint_energy(model(z), targets), x, norm="l2", eps=eps,
                        step_size=step, steps=steps)


def target_confidence(logits: Tensor, targets: Tensor) -> Tensor:
    """``p(y'|x)`` per sample."""
    return logits.float().softmax(dim=1).gather(1, targets.long().view(-1, 1).to(logits.device)).squeeze(1)


def plot_counterfactual_grid(inputs: Tensor, by_eps: Sequence[Tensor], eps: Sequence[float], labels: Tensor,
                             targets: Tensor, path: str | Path, confidences: Sequence[Tensor] | None = None,
                             class_names: Sequence[str] | None = None) -> Path:
    """A grid: rows = inputs, first column the input, then one column per eps (with p(y'|x))."""
    plt = pyplot()

    def name(c: int) -> str:
        return class_names[c] if class_names else str(c)

    rows, cols = len(inputs), 1 + len(eps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.4 * cols, 1.4 * rows), squeeze=False)
    for i in range(rows):
        images = [inputs[i], *(cf[i] for cf in by_eps)]
        for j, image in enumerate(images):
            ax = axes[i][j]
            shown = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(shown.squeeze(-1) if shown.shape[-1] == 1 else shown, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j == 0 else f"eps={eps[j - 1]:g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{name(int(labels[i]))}->{name(int(targets[i]))}", fontsize=7)
            elif confidences is not None:
                ax.set_xlabel(f"p={float(confidences[j - 1][i]):.2f}", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
