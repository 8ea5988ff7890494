"""The replay buffer of persistent SGLD chains (JEM, Grathwohl et al., 2019, Section 4; Du and
Mordatch, 2019): a store of past samples from which each training step starts its chains.

A draw takes ``n`` stored images at random; each is replaced by fresh uniform noise with
probability ``reinit_prob`` (JEM: 5%), so chains restart now and then. Class-conditional draws
(``num_classes`` given) take an image from its class's block of the buffer (``size / K`` slots per
class). After the chains ran, :meth:`ReplayBuffer.store` puts the samples back in the slots they
came from. The buffer is training state, not a model weight: its owner saves it in the training
checkpoint (:meth:`ReplayBuffer.state_dict`), so a resumed run continues the same chains, while it
stays out of the network's state dict and out of weight averaging (an average of stored samples is
no sample).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

CHECKPOINT_KEY = "dat_replay_buffer"  # where a run's buffer is saved (outside the state dict and EMA)


class ReplayBuffer:
    """Stored SGLD samples, images in [0, 1] of shape ``image_shape``.

    Args:
        size: number of stored images (JEM: 10,000); a multiple of ``num_classes`` when given.
        image_shape: ``(C, H, W)``.
        reinit_prob: chance that a drawn image is replaced by uniform noise (JEM: 0.05).
        num_classes: split the buffer into one block per class for conditional draws.
    """

    def __init__(self, size: int, image_shape: tuple[int, int, int], reinit_prob: float = 0.05,
                 num_classes: int | None = None, generator: torch.Generator | None = None) -> None:
        if size < 1:
            raise ValueError(f"replay buffer size must be >= 1, got {size}")
        if not 0 <= reinit_prob <= 1:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob}")
        if num_classes is not None and size % num_classes:
            raise ValueError(f"replay buffer size {size} must be a multiple of the {num_classes} classes")
        self.reinit_prob = float(reinit_prob)
        self.num_classes = num_classes
        self.images = torch.rand((size, *image_shape), generator=generator)

    @property
    def size(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str) -> ReplayBuffer:
        self.images = self.images.to(device)
        return self

    def state_dict(self) -> dict[str, Tensor]:
        return {"images": self.images.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state["images"].shape != self.images.shape:
            raise ValueError(f"the saved replay buffer holds {tuple(state['images'].shape)} images; this run's "
                             f"is {tuple(self.images.shape)} (model.buffer.size or the data changed)")
        self.images = state["images"].to(self.images.device, self.images.dtype).clone()

    def slots(self, n: int, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """``n`` random slots, each in the block of its class ``y[i]`` when the buffer has blocks."""
        if y is None:
            return torch.randint(0, self.size, (n,), generator=generator)
        if self.num_classes is None:
            raise ValueError("a class-conditional draw needs a buffer made with num_classes")
        block = self.size // self.num_classes
        return y.cpu().long() * block + torch.randint(0, block, (n,), generator=generator)

    def draw(self, n: int, y: Tensor | None = None, generator: torch.Generator | None = None,
             fresh_starts: Callable[[int], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Chain starts ``(x0, slots)``: the stored images of ``n`` random slots, each replaced with
        probability ``reinit_prob`` by a fresh start: uniform noise, or ``fresh_starts(n)`` (JEM++:
        samples of the class Gaussians)."""
        slots = self.slots(n, y, generator)
        stored = self.images[slots.to(self.images.device)]
        if fresh_starts is None:
            fresh = torch.rand(stored.shape, generator=generator).to(stored)
        else:
            fresh = fresh_starts(n).to(stored)
        restart = (torch.rand(n, generator=generator) < self.reinit_prob).to(stored.device)
        return torch.where(restart.view(-1, *[1] * (stored.dim() - 1)), fresh, stored), slots

    @torch.no_grad()
    def store(self, slots: Tensor, x: Tensor) -> int:
        """Put the chains' final samples back into the slots they were drawn from. A sample with a
        non-finite pixel (a diverging chain) is not stored: its slot keeps its image, so one bad
        step cannot poison later chains. Returns how many were refused."""
        finite = x.detach().flatten(1).isfinite().all(1)
        kept = slots.to(self.images.device)[finite.to(self.images.device)]
        self.images[kept] = x.detach()[finite].to(self.images)
        return int((~finite).sum())

    @torch.no_grad()
    def fill(self, images: Tensor) -> None:
        """Replace the whole content (JEM++ starts its buffer from the class Gaussians)."""
        if images.shape != self.images.shape:
            raise ValueError(f"fill needs images of shape {tuple(self.images.shape)}, got {tuple(images.shape)}")
        self.images.copy_(images)
