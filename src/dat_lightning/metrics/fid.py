"""FID of generated samples with torchmetrics, real statistics computed once and cached."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from dat_lightning.reliability.checkpoint_io import atomic_torch_save

_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def make_fid(extractor: nn.Module, **metric_kwargs) -> FrechetInceptionDistance:
    """A torchmetrics FID over ``extractor`` features that keeps real statistics across resets.

    ``metric_kwargs`` go to torchmetrics' ``Metric`` (e.g. ``sync_on_compute=False``).
    """
    return FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False,
                                    **metric_kwargs)


def fill_real_statistics(
    fid: FrechetInceptionDistance, real_batches: Iterable[Tensor], cache: str | Path | None = None
) -> None:
    """Feed real images into ``fid`` once; with ``cache`` set, reuse (or write) the statistics file.

    The cache holds feature sums only (tensors), so it loads with ``weights_only=True``.
    """
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        for name in _REAL_STATES:
            getattr(fid, name).copy_(saved[name])
        return
    for images in real_batches:
        fid.update(images.to(fid.device), real=True)
    if cache is not None:
        atomic_torch_save({name: getattr(fid, name).cpu() for name in _REAL_STATES}, cache)
