"""JEM++ (Yang and Ji, 2021): JEM with an informative start for its chains and a short, noiseless,
clipped sampler (docs/methods.md, section 2).

- :class:`ClassGaussians`: one full-covariance Gaussian per class, fitted to the training images;
  the replay buffer's fresh chains start from a sample of a random class's Gaussian (clamped to
  [0, 1]) instead of uniform noise.
- :func:`pyld_step`: ``p <- clip(p + clip(-alpha * dE/dp, -c, c), 0, 1)`` (JEM++'s proximal step
  collapses to this; published: 10 steps, ``alpha = 0.25``, ``c = 0.5`` in [0, 1] pixel units).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dat_lightning.attacks import input_gradient
from dat_lightning.energy import joint_energy, marginal_energy

JITTER = 2.5e-5  # JEM++'s 1e-4 on [-1, 1] images, on [0, 1] pixels


class ClassGaussians(nn.Module):
    """Per-class mean and covariance of flattened images, for drawing informative chain starts.

    Args:
        images: training images in [0, 1], (N, C, H, W).
        labels: their classes (N,).
        num_classes: K; every class needs at least two images.
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        super().__init__()
        flat = images.flatten(1).double()
        means, factors = [], []
        for c in range(num_classes):
            members = flat[labels == c]
            if len(members) < 2:
                raise ValueError(f"class {c} has {len(members)} images; a covariance needs at least 2")
            mean = members.mean(0)
            centred = members - mean
            cov = centred.T @ centred / len(members) + JITTER * torch.eye(flat.shape[1], dtype=flat.dtype)
            means.append(mean)
            factors.append(torch.linalg.cholesky(cov))
        self.image_shape = tuple(images.shape[1:])
        # not saved with a module that holds them: refitted from the data (CIFAR: 10 x 3072^2 floats)
        self.register_buffer("means", torch.stack(means).float(), persistent=False)
        self.register_buffer("cholesky", torch.stack(factors).float(), persistent=False)

    def sample(self, classes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One image per entry of ``classes``, drawn from its Gaussian and clamped to [0, 1]."""
        z = torch.randn(len(classes), self.means.shape[1], generator=generator).to(self.means)
        classes = classes.to(self.means.device).long()
        x = torch.empty_like(z)
        # class by class: gathering one D x D factor per sample would take n * D^2 memory
        for c in classes.unique().tolist():
            rows = classes == c
            x[rows] = self.means[c] + z[rows] @ self.cholesky[c].T
        return x.clamp(0, 1).view(len(classes), *self.image_shape)


def pyld_step(x: Tensor, energy_grad: Tensor, step_size: float = 0.25, clip: float = 0.5) -> Tensor:
    """``clip(x + clip(-step_size * dE/dx, -clip, clip), 0, 1)``: a per-pixel-bounded, noiseless step
    down the energy."""
    return (x + (-step_size * energy_grad).clamp(-clip, clip)).clamp(0, 1)


def pyld_sample(model: Callable[[Tensor], Tensor], x0: Tensor, y: Tensor | None = None, *, step_size: float,
                steps: int, clip: float = 0.5) -> Tensor:
    """JEM++'s sampler for ``steps`` steps down ``E(x)`` (or ``E(x, y)`` with ``y``); input gradients only."""
    x = x0.detach()
    for _ in range(steps):
        def energy(z: Tensor) -> Tensor:
            logits = model(z)
            return marginal_energy(logits) if y is None else joint_energy(logits, y)

        x = pyld_step(x, input_gradient(energy, x), step_size, clip)
    return x.detach()
