"""Sample quality: FID and Inception Score over a named feature extractor (torchmetrics).

Every score is labelled with its extractor (``fid_<name>``, ``is_<name>``): only the ``inception``
extractor gives Inception FID / IS; the offline ``cifar10_resnet18`` scores are a different scale.
Features are computed once per image and fed to torchmetrics through :class:`PrecomputedFeatures`,
so FID and IS share one pass, and class-wise FID reuses the same real features.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.image.inception import InceptionScore

from dat_lightning.checkpoints.writing import atomic_torch_save
from dat_lightning.data.faults import ignore_preemption_signals
from dat_lightning.metrics.fid import FAKE_STATES, checked_fid, fill_real_statistics, make_fid
from dat_lightning.sharding import Shards


class PrecomputedFeatures(nn.Module):
    """The identity as a torchmetrics "feature extractor": its inputs already are features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        return features.flatten(1)


def extractor_name(extractor: nn.Module) -> str:
    """The label that every score of ``extractor`` carries (its ``name``, else its class name)."""
    return str(getattr(extractor, "name", type(extractor).__name__))


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def features_of(extractor: nn.Module, batches: Iterable[Tensor]) -> Iterator[Tensor]:
    """``extractor(x)`` for each batch of images in [0, 1], on the extractor's device."""
    device = _device_of(extractor)
    with torch.no_grad():
        for x in batches:
            yield extractor(x.to(device)).float()


def statistics_cache(cache_dir: str | Path | None, dataset: str, split: str, extractor: str,
                     size: int, kind: str = "fid") -> Path | None:
    """``<cache_dir>/<dataset>_<split>_<kind>_<extractor>_<size>.pt``; the ``fid`` kind is the file
    the training FID callback writes too, so both share real statistics."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{dataset}_{split}_{kind}_{extractor}_{size}.pt"


def fid_from_features(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torchmetrics' FID):
    ``||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``. Needs >= 2 rows in each."""
    fid = make_fid(PrecomputedFeatures(real.shape[1])).to(real.device)
    fid.update(real, real=True)
    fid.update(fake.to(real.device), real=False)
    return checked_fid(fid)


def inception_score(logits: Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` of class ``logits`` (torchmetrics): mean and
    std over ``splits`` random splits, drawn with ``seed`` (the same splits whatever ran before)."""
    if len(logits) < splits:
        raise ValueError(f"the Inception Score over {splits} splits needs >= {splits} samples, got {len(logits)}")
    with warnings.catch_warnings():  # "will save all extracted features": these are just logits
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = InceptionScore(feature=nn.Identity(), splits=splits, sync_on_compute=False)
    metric.update(logits.float().cpu())
    with torch.random.fork_rng(devices=[]):  # torchmetrics shuffles with the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def check_extractor(extractor: nn.Module, inception_score: bool) -> None:
    """Fail before any sampling if the extractor cannot give what was asked for."""
    name = extractor_name(extractor)
    if not isinstance(getattr(extractor, "num_features", None), int):
        raise ValueError(f"feature extractor {name} needs an int attribute num_features (the feature size)")
    if inception_score and not hasattr(extractor, "logits_from_features"):
        raise ValueError(
            f"the Inception Score needs class logits, but feature extractor {name} has no "
            "logits_from_features(features) method: add one, or set fid.inception_score=false"
        )


class SampleQuality:
    """FID (and IS) of batches of generated images against real statistics computed once.

    Args:
        extractor: images in [0, 1] -> features; has ``num_features``, ``name`` and, for IS,
            ``logits_from_features``.
        real_features: batches of the real images' features, e.g. ``features_of(extractor,
            images)`` (only read when ``cache`` does not exist yet).
        cache: file for the real statistics (see :func:`statistics_cache`).
        inception_score: also compute IS from the extractor's logits.
        splits: IS splits (10 in the protocol).
    """

    def __init__(self, extractor: nn.Module, real_features: Iterable[Tensor], cache: str | Path | None = None,
                 inception_score: bool = True, splits: int = 10) -> None:
        check_extractor(extractor, inception_score)
        self.extractor = extractor
        self.name = extractor_name(extractor)
        self.with_is = inception_score
        self.splits = splits
        device = _device_of(extractor)
        self.fid = make_fid(PrecomputedFeatures(extractor.num_features)).to(device)
        fill_real_statistics(self.fid, (f.to(device) for f in real_features), cache)

    def __call__(self, fake_batches: Iterable[Tensor]) -> dict[str, float | int | str]:
        """Scores of the generated images, all in this process."""
        parts, start = [], 0
        for batch in fake_batches:
            parts.append((range(start, start + len(batch)), batch))
            start += len(batch)
        return self.score(parts, start)

    def score(self, parts: Iterable[tuple[range, Tensor]], n: int,
              shards: Shards | None = None) -> dict[str, float | int | str]:
        """Scores of ``n`` generated images, which the processes of ``shards`` hold in ``parts``
        (item indices, images): feature moments are summed over the processes, IS logits
        collected in item order, so the scores do not depend on how the items were shared."""
        shards = shards or Shards()
        self.fid.reset()  # keeps the real statistics (reset_real_features=False)
        logit_parts = []
        for rows, images in parts:
            (features,) = features_of(self.extractor, [images])
            self.fid.update(features, real=False)
            if self.with_is:
                logit_parts.append((rows, self.extractor.logits_from_features(features).float().cpu()))
        for name in FAKE_STATES:
            state = getattr(self.fid, name)
            state.copy_(shards.sum(state.cpu()).to(state.device))
        out: dict[str, float | int | str] = {
            "extractor": self.name,
            f"fid_{self.name}": checked_fid(self.fid, f"FID ({self.name})"),
            "num_samples": int(self.fid.fake_features_num_samples),
            "num_real": int(self.fid.real_features_num_samples),
        }
        if self.with_is:
            probe = torch.zeros(1, self.extractor.num_features, device=_device_of(self.extractor))
            width = self.extractor.logits_from_features(probe).shape[1]
            mean, std = inception_score(shards.collect(n, logit_parts, (width,)), self.splits)
            out[f"is_{self.name}"], out[f"is_{self.name}_std"] = mean, std
            out["is_splits"] = self.splits
        return out


def real_features(extractor: nn.Module, labelled_batches: Iterable[tuple[Tensor, Tensor]],
                  cache: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Features and labels of real images, cached (tensors only, weights-only loadable)."""
    cache = Path(cache) if cache else None
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return saved["features"], saved["labels"]
    feats, labels = [], []
    device = _device_of(extractor)
    with torch.no_grad():
        for x, y in labelled_batches:
            feats.append(extractor(x.to(device)).float().cpu())
            labels.append(y.cpu())
    out = torch.cat(feats), torch.cat(labels)
    if cache is not None:
        atomic_torch_save({"features": out[0], "labels": out[1]}, cache)
    return out


def classwise_fid(real: Tensor, real_labels: Tensor, fake: Tensor, fake_labels: Tensor,
                  min_count: int = 2) -> dict[int, float]:
    """FID of the fakes of each class ``c`` to the real images of class ``c``, for every class with
    at least ``min_count`` (>= 2) images on both sides."""
    if min_count < 2:
        raise ValueError(f"min_count must be >= 2 (a covariance needs two samples), got {min_count}")
    out = {}
    for c in torch.unique(fake_labels).tolist():
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) >= min_count and len(f) >= min_count:
            out[int(c)] = fid_from_features(r, f)
    return out


def real_images(datamodule, num_real: int, batch_size: int, num_workers: int = 0) -> DataLoader:
    """``num_real`` evenly spaced train images ``(x, y)``, no augmentation: the real side of FID."""
    return DataLoader(datamodule.real_eval_dataset(int(num_real)), batch_size=int(batch_size),
                      num_workers=int(num_workers), worker_init_fn=ignore_preemption_signals)


def sample_quality(fid_cfg: Mapping[str, Any], extractor: nn.Module, datamodule,
                   real_feature_batches: Iterable[Tensor] | None = None, num_workers: int = 0) -> SampleQuality:
    """FID/IS scorer against ``fid.num_real`` train images (statistics cached by dataset, split,
    extractor and size); ``real_feature_batches`` reuses features computed elsewhere."""
    loader = real_images(datamodule, fid_cfg["num_real"], fid_cfg["batch_size"], num_workers)
    n_real = len(loader.dataset)
    cache = statistics_cache(fid_cfg.get("cache_dir"), datamodule.name, "train", extractor_name(extractor), n_real)
    if real_feature_batches is None:
        real_feature_batches = features_of(extractor, (x for x, _ in loader))
    return SampleQuality(extractor, real_feature_batches, cache,
                         inception_score=bool(fid_cfg["inception_score"]), splits=int(fid_cfg["splits"]))
