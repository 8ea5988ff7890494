"""Batched class-conditional (or marginal) generation from a seed source, for grids and FID."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dat_lightning.batchnorm import eval_mode
from dat_lightning.sampling import class_balanced_labels, pgd_sample


def seed_images(source: Dataset, indices: Sequence[int]) -> Tensor:
    """Stack the seed images ``source[i]`` (a tensor, or the first element of a tuple)."""
    items = [source[int(i)] for i in indices]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def generate_batches(
    net: nn.Module,
    source: Dataset,
    num_samples: int,
    num_classes: int,
    *,
    step_size: float,
    steps: int,
    batch_size: int = 100,
    conditional: bool = True,
    seed_offset: int = 0,
    progress: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(samples, labels)`` batches: labels ``i % K`` (class-balanced), seeds
    ``source[seed_offset + i]`` (wrapping around the source), net in eval mode throughout.
    """
    device = next(net.parameters()).device
    labels = class_balanced_labels(num_samples, num_classes)
    n_source = len(source)
    with eval_mode(net):
        starts = range(0, num_samples, batch_size)
        for start in tqdm(starts, desc=f"sampling T={steps}", disable=not progress, unit="batch"):
            idx = range(start, min(start + batch_size, num_samples))
            x0 = seed_images(source, [(seed_offset + i) % n_source for i in idx]).to(device)
            y = labels[start : start + len(idx)].to(device)
            x = pgd_sample(net, x0, y if conditional else None, step_size=step_size, steps=steps)
            yield x.cpu(), y.cpu()
