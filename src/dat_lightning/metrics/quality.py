"""Sample quality: FID, Inception Score, precision/recall and KID over a named feature extractor.

Every score is labelled with its extractor (``fid_<name>``, ``is_<name>``, ...) and the report
with the extractor's source: only the ``inception`` extractor gives Inception FID / IS / KID; the
offline ``cifar10_resnet18`` scores are a different scale. Features are computed once per image
and shared by every score (FID through torchmetrics with :class:`PrecomputedFeatures`); class-wise
FID reuses the same real features.
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
from tqdm.auto import tqdm

from dat_lightning.checkpoints.writing import atomic_torch_save
from dat_lightning.data.faults import worker_settings
from dat_lightning.metrics.feature_sets import (
    kernel_inception_distance,
    precision_recall,
    read_reference,
)
from dat_lightning.metrics.fid import (
    FAKE_STATES,
    checked_fid,
    fill_real_statistics,
    fill_reference_statistics,
    make_fid,
)
from dat_lightning.metrics.sample_stats import class_agreement
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
    """``<cache_dir>/<dataset>_<split>_<kind>_<extractor>_<size>.pt``: kind ``fid`` holds the feature
    moments the training FID callback needs, kind ``features`` the features themselves (``sample``
    and ``evaluate``: precision/recall and KID need them)."""
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


def has_head(extractor: nn.Module) -> bool:
    """Whether ``extractor`` gives class logits (``logits_from_features``), which IS needs."""
    return callable(getattr(extractor, "logits_from_features", None))


def extractor_source(extractor: nn.Module) -> str:
    """Where the extractor's weights come from (``source``), for reports."""
    return str(getattr(extractor, "source", extractor_name(extractor)))


def check_extractor(extractor: nn.Module) -> None:
    """Fail before any sampling if the extractor cannot give features."""
    if not isinstance(getattr(extractor, "num_features", None), int):
        raise ValueError(f"feature extractor {extractor_name(extractor)} needs an int attribute num_features "
                         "(the feature size)")


class SampleQuality:
    """Scores of generated images against a real side fixed once: FID, and on request IS (when the
    extractor has a head), improved precision/recall and KID, all on the same features.

    Args:
        extractor: images in [0, 1] -> features; has ``num_features``, ``name``, optionally
            ``source`` and, for IS, ``logits_from_features``.
        real: the real images' features (``N x num_features``), or None with ``reference``.
        reference: ``(mu, sigma)`` of real features computed elsewhere (FID only).
        reference_name: how the report names that reference.
        inception_score, splits: IS over ``splits`` splits (10 in the protocol).
        precision_recall, neighborhood: improved precision/recall with k = ``neighborhood``.
        kid, kid_subsets, kid_subset_size: KID over random subsets.
        judged_classes: K when the extractor's head classifies the data's K classes and item ``i``
            was drawn for class ``i % K``: reports the share its head assigns to that class.
    """

    def __init__(self, extractor: nn.Module, real: Tensor | None = None,
                 reference: tuple[Tensor, Tensor] | None = None, reference_name: str | None = None, *,
                 inception_score: bool = True, splits: int = 10, precision_recall: bool = False,
                 neighborhood: int = 3, kid: bool = False, kid_subsets: int = 100,
                 kid_subset_size: int = 1000, judged_classes: int | None = None) -> None:
        check_extractor(extractor)
        self.judged_classes = judged_classes if has_head(extractor) else None
        if (real is None) == (reference is None):
            raise ValueError("SampleQuality needs either real features or reference statistics")
        self.extractor, self.name = extractor, extractor_name(extractor)
        self.with_is, self.splits = bool(inception_score), int(splits)
        self.real = real
        self.pr = {"neighborhood": int(neighborhood)} if precision_recall and real is not None else None
        self.kid = {"subsets": int(kid_subsets), "subset_size": int(kid_subset_size)} if kid and real is not None else None
        device = _device_of(extractor)
        self.fid = make_fid(PrecomputedFeatures(extractor.num_features)).to(device)
        if reference is not None:
            fill_reference_statistics(self.fid, *reference)
        else:
            fill_real_statistics(self.fid, (f.to(device) for f in torch.split(real, 1000)))
        self.real_side = reference_name if reference is not None else f"{len(real)} real images"
        self.not_computed: dict[str, str] = {}
        if self.with_is and not has_head(extractor):
            self.not_computed["inception_score"] = (f"{self.name} ({extractor_source(extractor)}) has no "
                                                    "classification head")
        if reference is not None and (precision_recall or kid):
            self.not_computed["precision_recall_kid"] = "fid.reference gives statistics only, no real features"

    def __call__(self, fake_batches: Iterable[Tensor]) -> dict[str, Any]:
        """Scores of the generated images, all in this process."""
        parts, start = [], 0
        for batch in fake_batches:
            parts.append((range(start, start + len(batch)), batch))
            start += len(batch)
        return self.score(parts, start)

    def score(self, parts: Iterable[tuple[range, Tensor]], n: int, shards: Shards | None = None) -> dict[str, Any]:
        """Scores of ``n`` generated images, which the processes of ``shards`` hold in ``parts``
        (item indices, images): feature moments are summed over the processes, IS logits and
        the features of precision/recall and KID collected in item order, so the scores do not
        depend on how the items were shared."""
        shards = shards or Shards()
        self.fid.reset()  # keeps the real statistics (reset_real_features=False)
        with_is = self.with_is and has_head(self.extractor)
        keep_logits = with_is or self.judged_classes is not None
        keep_features = self.pr is not None or self.kid is not None
        logit_parts, feature_parts = [], []
        for rows, images in parts:
            (features,) = features_of(self.extractor, [images])
            self.fid.update(features, real=False)
            if keep_logits:
                logit_parts.append((rows, self.extractor.logits_from_features(features).float().cpu()))
            if keep_features:
                feature_parts.append((rows, features.cpu()))
        for name in FAKE_STATES:
            state = getattr(self.fid, name)
            state.copy_(shards.sum(state.cpu()).to(state.device))
        out: dict[str, Any] = {
            "extractor": self.name, "extractor_source": extractor_source(self.extractor), "real": self.real_side,
            f"fid_{self.name}": checked_fid(self.fid, f"FID ({self.name})"),
            "num_samples": int(self.fid.fake_features_num_samples),
            "num_real": int(self.fid.real_features_num_samples) if self.real is not None else None,
        }
        if keep_logits:
            probe = torch.zeros(1, self.extractor.num_features, device=_device_of(self.extractor))
            width = self.extractor.logits_from_features(probe).shape[1]
            logits = shards.collect(n, logit_parts, (width,))
        if with_is:
            mean, std = inception_score(logits, self.splits)
            out[f"is_{self.name}"], out[f"is_{self.name}_std"] = mean, std
            out["is_splits"] = self.splits
        if self.judged_classes is not None:
            out[f"agreement_{self.name}"] = class_agreement(logits, torch.arange(n) % self.judged_classes)
        if keep_features:
            fake = shards.collect(n, feature_parts, (self.extractor.num_features,))
            out |= self._feature_set_scores(fake)
        return out | {f"{key}_not_computed": why for key, why in self.not_computed.items()}

    def _feature_set_scores(self, fake: Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.pr is not None:
            pr = precision_recall(self.real, fake, self.pr["neighborhood"])
            out |= {f"precision_{self.name}": pr["precision"], f"recall_{self.name}": pr["recall"],
                    "pr_neighborhood": self.pr["neighborhood"]}
        if self.kid is not None:
            kid = kernel_inception_distance(self.real, fake, self.kid["subsets"], self.kid["subset_size"])
            out |= {f"kid_{self.name}": kid["kid"], f"kid_{self.name}_std": kid["kid_std"],
                    "kid_subset_size": kid["kid_subset_size"], "kid_subsets": self.kid["subsets"]}
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
                      num_workers=int(num_workers), **worker_settings(int(num_workers)))


def real_feature_set(fid_cfg: Mapping[str, Any], extractor: nn.Module, datamodule, num_workers: int = 0,
                     shards: Shards | None = None, who: str = "evaluate") -> tuple[Tensor, Tensor]:
    """Features and labels of the ``fid.num_real`` evenly spaced train images, cached by dataset,
    extractor and size under ``fid.cache_dir``. With a cache the main process computes them first
    and the others read its file; the main process says whether they came from the cache."""
    shards = shards or Shards()
    loader = real_images(datamodule, fid_cfg["num_real"], fid_cfg["batch_size"], num_workers)
    n_real = len(loader.dataset)
    cache = statistics_cache(fid_cfg.get("cache_dir"), datamodule.name, "train", extractor_name(extractor), n_real,
                             kind="features")
    if cache is not None and not shards.is_main:
        shards.wait()  # the main process fills the cache first
    cached = cache is not None and cache.is_file()
    status = (f"cached in {cache}" if cached else f"computing (cache file {cache})" if cache
              else "computing (fid.cache_dir is null: not cached)")
    if shards.is_main:
        print(f"[{who}] real-image features of {n_real} train images: {status}; extractor "
              f"{extractor_name(extractor)}", flush=True)
    batches = loader if cached else tqdm(loader, desc="real features", leave=False, disable=not shards.is_main)
    features = real_features(extractor, batches, cache)
    if cache is not None and shards.is_main:
        shards.wait()
    return features


def judged_classes(extractor: nn.Module, data_name: str | None, num_classes: int, conditional: bool = True) -> int | None:
    """``num_classes`` when ``extractor``'s head classifies this data's classes and the samples were
    drawn for classes (then :class:`SampleQuality` reports its agreement), else None."""
    return num_classes if conditional and getattr(extractor, "classifies", None) == data_name else None


def sample_quality(fid_cfg: Mapping[str, Any], extractor: nn.Module, real: Tensor | None = None,
                   judged_classes: int | None = None) -> SampleQuality:
    """The scorer ``fid_cfg`` describes: against ``real`` features (see :func:`real_feature_set`)
    or, with ``fid.reference``, against statistics read from that file; ``judged_classes``: see
    :class:`SampleQuality`."""
    reference = fid_cfg.get("reference")
    if reference:
        stats = read_reference(reference, int(extractor.num_features))
        real, name = None, f"reference statistics {reference}"
    elif real is None:
        raise ValueError("sample_quality needs the real features (real_feature_set) or fid.reference")
    else:
        stats, name = None, None
    return SampleQuality(
        extractor, real, stats, name, inception_score=bool(fid_cfg["inception_score"]), splits=int(fid_cfg["splits"]),
        precision_recall=bool(fid_cfg.get("precision_recall", False)), neighborhood=int(fid_cfg.get("neighborhood", 3)),
        kid=bool(fid_cfg.get("kid", False)), kid_subsets=int(fid_cfg.get("kid_subsets", 100)),
        kid_subset_size=int(fid_cfg.get("kid_subset_size", 1000)), judged_classes=judged_classes)
