"""FID of generated samples with torchmetrics, real statistics computed once and cached."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from dat_lightning.checkpoints.writing import atomic_torch_save

_REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")
# The generated side's moments: sums, so processes that each scored some samples add them up.
FAKE_STATES = ("fake_features_sum", "fake_features_cov_sum", "fake_features_num_samples")
_SUMS = {"real": ("real_features_sum", "real_features_cov_sum"),
         "generated": ("fake_features_sum", "fake_features_cov_sum")}


class NonFiniteFeatures(ValueError):
    """Images or features holding NaN or inf: no Frechet distance can be computed from them."""


def checked_fid(fid: FrechetInceptionDistance, what: str = "FID") -> float:
    """``fid.compute()`` once its feature statistics are known to be finite.

    The matrix square root inside FID runs an eigenvalue routine that crashes the interpreter
    (a segmentation fault, no message) on NaN input; here such statistics raise
    :class:`NonFiniteFeatures` instead, saying which side holds them.
    """
    for side, names in _SUMS.items():
        if not all(bool(torch.isfinite(getattr(fid, name)).all()) for name in names):
            cause = ("the model produced NaN/inf samples (it has diverged, or its chain overflows)"
                     if side == "generated" else "the real images or the extractor are broken")
            raise NonFiniteFeatures(f"{what}: the {side} images' features hold NaN or inf, so no FID "
                                    f"can be computed: {cause}.")
    return float(fid.compute())


def make_fid(extractor: nn.Module) -> FrechetInceptionDistance:
    """A torchmetrics FID over ``extractor`` features that keeps real statistics across resets.

    It never syncs by itself: the callers sum the generated side over processes explicitly
    (:data:`FAKE_STATES`), and torchmetrics' own sync would also sum the real side, which every
    process holds in full.
    """
    return FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False,
                                    sync_on_compute=False)


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


def fill_reference_statistics(fid: FrechetInceptionDistance, mu: Tensor, sigma: Tensor) -> None:
    """Make ``(mu, sigma)`` the real side of ``fid``: the feature sums of two samples whose mean is
    ``mu`` and unbiased covariance ``sigma`` (what torchmetrics turns back into ``mu`` and ``sigma``)."""
    n = 2
    mu, sigma = mu.double().to(fid.device), sigma.double().to(fid.device)
    fid.real_features_sum.copy_(n * mu)
    fid.real_features_cov_sum.copy_((n - 1) * sigma + n * torch.outer(mu, mu))
    fid.real_features_num_samples.fill_(n)

