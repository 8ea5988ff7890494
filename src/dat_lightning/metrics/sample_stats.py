"""What generated images show without a reference set: how many of their pixels are pinned to the
ends of the range, and how often a classifier of the data recognises the class they were drawn for.

Saturation is counted on the 8-bit images the samples are saved as (``round(255 x)``): real
Fashion-MNIST test images have 0.8% of their pixels at 255, while a chain that crosses the [0, 1]
box leaves nearly binary samples. Agreement is the share of class-conditional samples (item ``i``
drawn for class ``i % K``) that a judge of the data's classes assigns to that class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def saturation_counts(x: Tensor) -> Tensor:
    """``[pixels at 255, pixels at 0, all pixels]`` of images in [0, 1] quantized to 8 bits (int64)."""
    q = (x.detach().float().clamp(0, 1) * 255).round()
    return torch.tensor([int((q == 255).sum()), int((q == 0).sum()), q.numel()], dtype=torch.long)


def saturation(counts: Tensor) -> dict[str, float]:
    """Shares from :func:`saturation_counts` (summed over batches or processes)."""
    at_max, at_min, total = (int(v) for v in counts)
    return {"pixels_at_max": at_max / total, "pixels_at_min": at_min / total}


def saturation_of(images: Iterable[Tensor], reduce: Callable[[Tensor], Tensor] = lambda t: t) -> dict[str, float]:
    """:func:`saturation` of all ``images`` batches; ``reduce`` sums the counts over processes."""
    return saturation(reduce(sum((saturation_counts(x) for x in images), torch.zeros(3, dtype=torch.long))))


def class_agreement(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose predicted class is the class they were drawn for."""
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} predictions for {len(labels)} labels")
    return float((logits.argmax(1).cpu() == labels.cpu()).float().mean())
