"""The evaluation suite (``docs/algorithm.md``, "How it is measured"): every number ``evaluate`` reports.

One :class:`Evaluation` per checkpoint holds what its metrics share (the classifier, the data,
the test logits, the feature extractor, the real images' features) and computes each metric as
a method named after it: ``clean`` accuracy on the test split, ``autoattack`` robust accuracy
(pyautoattack) with its threat model, ``fid`` (FID and IS of class-balanced samples, the
extractor's name on every score), ``counterfactual`` (class-wise FID and target confidence per
eps, grid picture), ``ood`` (AUROC of ``max_y p(y|x)`` and ``-E(x)``, clean and adversarial),
``calibration`` (ECE, reliability diagram).

Over several processes (:class:`~dat_lightning.sharding.Shards`) every metric shares its work in
fixed chunks and brings the parts together, so each process ends with the numbers one process
alone would have computed; only the main process draws the pictures.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.utils import save_image
from tqdm.auto import tqdm

from dat_lightning.checkpoints.loading import LoadedRun, build_datamodule, load_run
from dat_lightning.data.datamodule import TransformedDataset
from dat_lightning.data.faults import worker_settings
from dat_lightning.data.generated import UniformNoise
from dat_lightning.generation import (
    SamplingSettings,
    draw_shard,
    sample_grid,
    seed_images,
    seed_source,
)
from dat_lightning.metrics import calibration, counterfactual, ood, robustness
from dat_lightning.metrics.extractors import build_feature_extractor
from dat_lightning.metrics.quality import (
    classwise_fid,
    extractor_name,
    features_of,
    judged_classes,
    real_feature_set,
    sample_quality,
)
from dat_lightning.metrics.sample_stats import saturation_of
from dat_lightning.sharding import Shards

GRID_PER_CLASS = 10


class Evaluation:
    """State shared by the metrics of one run: model, data, test predictions, the extractor.

    Args:
        cfg: the ``evaluate`` config.
        device: where the classifier runs.
        shards: this process's share of the work (one process: all of it).
        autocast: a context for the network's forward passes (e.g. Fabric's, for bf16).
    """

    def __init__(self, cfg: DictConfig, device: torch.device | str = "cpu", shards: Shards | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.cfg, self.device, self.autocast = cfg, torch.device(device), autocast
        self.shards = shards or Shards()
        self.run: LoadedRun = load_run(cfg.ckpt, ema=bool(cfg.ema), config=cfg.get("config"),
                                       format=cfg.get("format", "auto"), net_overrides=cfg.get("net_overrides"))
        self.net: nn.Module = self.run.net.to(self.device)
        self.num_classes = int(self.net.num_classes)
        self.dm = build_datamodule(self.run, cfg.get("data_overrides"), batch_size=int(cfg.batch_size),
                                   num_workers=int(cfg.num_workers))
        self.out_dir = Path(cfg.paths.output_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.pictures: dict[str, Path] = {}
        self._test: tuple[Tensor, Tensor] | None = None
        self._extractors: dict[str | None, nn.Module] = {}
        self._real: dict[str | None, tuple[Tensor, Tensor]] = {}

    # -- shared pieces -----------------------------------------------------------------------
    def progress(self, iterable, desc: str):
        return tqdm(iterable, desc=desc, leave=False, disable=not self.shards.is_main)

    def test_set(self, n: int | None = None) -> Dataset:
        """The first ``n`` images of the test split (all when None), ``(x, y)`` in [0, 1]."""
        total = len(self.dm.val_set)
        indices = range(total if n is None else min(int(n), total))
        return TransformedDataset(Subset(self.dm.val_set, indices), self.dm.val_transform)

    def first_test_images(self, n: int) -> tuple[Tensor, Tensor]:
        loader = DataLoader(self.test_set(n), batch_size=int(self.cfg.batch_size), num_workers=0)
        xs, ys = zip(*loader, strict=True)
        return torch.cat(xs), torch.cat(ys)

    def logits_of(self, x: Tensor) -> Tensor:
        """The classifier's float32 logits of ``x`` (in batches), on the CPU."""
        bs = int(self.cfg.batch_size)
        with torch.no_grad(), self.autocast():
            return torch.cat([self.net(b.to(self.device)).float().cpu() for b in torch.split(x, bs)])

    def test_logits(self) -> tuple[Tensor, Tensor]:
        """Logits and labels over the test split (``test_size`` images; null = all), computed once;
        each process reads and scores only its own chunks."""
        if self._test is None:
            test = self.test_set(self.cfg.test_size)
            bs = int(self.cfg.batch_size)
            chunks = self.shards.chunks(len(test), bs)
            mine = [i for _, rows in chunks for i in rows]  # whole chunks in order: one batch each
            loader = DataLoader(Subset(test, mine), batch_size=bs, num_workers=int(self.cfg.num_workers),
                                **worker_settings(int(self.cfg.num_workers)))
            logits, labels = [], []
            for (_, rows), (x, y) in zip(chunks, self.progress(loader, "test split"), strict=True):
                logits.append((rows, self.logits_of(x)))
                labels.append((rows, y))
            self._test = (self.shards.collect(len(test), logits, (self.num_classes,)),
                          self.shards.collect(len(test), labels, dtype=torch.long))
        return self._test

    def fid_config(self, extra: str | None = None) -> DictConfig:
        """``fid``, or for one of ``fid.extra_extractors`` the same with that extractor (and no
        reference statistics, which belong to the main extractor)."""
        if extra is None:
            return self.cfg.fid
        return OmegaConf.merge(self.cfg.fid, {"extractor": extra, "weights_path": None, "reference": None})

    def extractor(self, extra: str | None = None) -> nn.Module:
        if extra not in self._extractors:
            channels = int(self.run.config.data.channels)
            self._extractors[extra] = build_feature_extractor(self.fid_config(extra), channels).to(self.device)
        return self._extractors[extra]

    def real_features(self, extra: str | None = None) -> tuple[Tensor, Tensor]:
        """Extractor features and labels of the ``fid.num_real`` real train images (cached file),
        shared by FID, precision/recall, KID and the class-wise FID of counterfactuals."""
        if extra not in self._real:
            self._real[extra] = real_feature_set(self.fid_config(extra), self.extractor(extra), self.dm,
                                                 int(self.cfg.num_workers), self.shards, who="evaluate")
        return self._real[extra]

    def sample_quality(self, parts: list[tuple[range, Tensor]], n: int, extra: str | None = None,
                       conditional: bool = True) -> dict[str, Any]:
        """The scores of the samples ``parts`` with the main extractor or one of the extra ones; with
        class agreement when the extractor classifies this data's classes."""
        cfg = self.fid_config(extra)
        real = None if cfg.get("reference") else self.real_features(extra)[0]
        extractor = self.extractor(extra)
        judged = judged_classes(extractor, self.run.config.data.get("name"), self.num_classes, conditional)
        return sample_quality(cfg, extractor, real, judged).score(parts, n, self.shards)

    def picture(self, key: str, path: Path) -> str:
        self.pictures[key] = path
        return str(path)

    # -- metrics -------------------------------------------------------------------------------
    def clean(self) -> dict[str, Any]:
        logits, labels = self.test_logits()
        return {"accuracy": float((logits.argmax(1) == labels).float().mean()), "n_examples": len(labels),
                "split": "test" if self.cfg.test_size is None else f"test (first {len(labels)})"}

    def calibration(self) -> dict[str, Any]:
        logits, labels = self.test_logits()
        n_bins = int(self.cfg.calibration.n_bins)
        ece = calibration.expected_calibration_error(logits, labels, n_bins)
        bins = calibration.reliability_bins(logits, labels, n_bins)
        path = self.out_dir / "reliability.png"
        if self.shards.is_main:
            calibration.plot_reliability_diagram(bins, ece, path, title=self.run.path.name)
        return {"ece": ece, "n_bins": n_bins, "n_examples": len(labels),
                "reliability_diagram": self.picture("calibration/reliability", path)}

    def autoattack(self) -> dict[str, Any]:
        aa = self.cfg.autoattack
        val_attack = OmegaConf.select(self.run.config, "model.val_attack") or {}
        norm = aa.norm if aa.norm is not None else val_attack.get("norm")
        eps = aa.eps if aa.eps is not None else val_attack.get("eps")
        if norm is None or eps is None:
            raise ValueError("autoattack.norm / autoattack.eps are not set and the checkpoint's config has no "
                             "model.val_attack to take them from: give autoattack.norm=l2 autoattack.eps=0.5")
        x, y = self.first_test_images(int(aa.n_examples))
        with self.autocast():
            return robustness.autoattack(
                self.net, x, y, eps=float(eps), norm=norm, version=aa.version,
                attacks=list(aa.attacks) if aa.attacks else None, n_restarts=aa.n_restarts, n_iter=aa.n_iter,
                batch_size=int(aa.batch_size), seed=int(aa.seed), shards=self.shards)

    def fid(self) -> dict[str, Any]:
        settings = SamplingSettings.resolve(self.cfg.sampling, self.run)
        source = seed_source(self.run, settings.seeds, settings.seed_offset + settings.num_samples,
                             settings.seeds_from_checkpoint)
        with self.autocast():
            parts = draw_shard(self.net, source, settings, self.num_classes, self.shards)
        n, k = settings.num_samples, self.num_classes
        data = self.run.config.data
        grid = self.shards.head(parts, min(GRID_PER_CLASS * k, n), (int(data.channels), *[int(data.image_size)] * 2))
        path = self.out_dir / "samples_grid.png"
        if self.shards.is_main:
            labels = torch.arange(len(grid)) % k
            save_image(sample_grid(grid, labels, k, GRID_PER_CLASS, settings.conditional), path)
        scores = self.sample_quality(parts, n, conditional=settings.conditional)
        extras = {name: self.sample_quality(parts, n, name, settings.conditional)
                  for name in self.cfg.fid.get("extra_extractors") or []}
        scores |= saturation_of((x for _, x in parts), self.shards.sum)
        return scores | ({"extra": extras} if extras else {}) | {"sampling": asdict(settings) | {"seed_source": repr(source)},
                         "samples_grid": self.picture("fid/samples_grid", path)}

    def counterfactual(self) -> dict[str, Any]:
        cf = self.cfg.counterfactual
        x, y = self.first_test_images(int(cf.n_examples))
        generator = torch.Generator().manual_seed(int(cf.seed))
        targets = counterfactual.counterfactual_targets(y, self.num_classes, generator)
        extractor = self.extractor()
        name = extractor_name(extractor)
        real_feats, real_labels = self.real_features()
        per_eps, grid_rows, grid_conf = [], [], []
        rows, n = int(cf.grid_rows), len(x)
        chunks = self.shards.chunks(n, int(self.cfg.batch_size))
        for eps in [float(e) for e in cf.eps]:
            images, confidences, features = [], [], []
            for _, r in self.progress(chunks, f"counterfactuals eps={eps:g}"):
                xb, tb = x[r.start : r.stop].to(self.device), targets[r.start : r.stop]
                with self.autocast():
                    xb_cf = counterfactual.counterfactuals(self.net, xb, tb, eps=eps, steps=int(cf.steps),
                                                           step_size=cf.step_size)
                    with torch.no_grad():
                        confidences.append((r, counterfactual.target_confidence(self.net(xb_cf), tb).cpu()))
                images.append((r, xb_cf.cpu()))
                features.append((r, next(features_of(extractor, [xb_cf])).cpu()))
            conf = self.shards.collect(n, confidences)
            fake_feats = self.shards.collect(n, features, (int(extractor.num_features),))
            by_class = classwise_fid(real_feats, real_labels, fake_feats, targets)
            if not by_class:
                raise ValueError(f"no target class has 2 counterfactuals to score: raise counterfactual.n_examples "
                                 f"(now {n})")
            per_eps.append({
                "eps": eps,
                "mean_target_confidence": float(conf.mean()),
                f"fid_classwise_mean_{name}": sum(by_class.values()) / len(by_class),
                f"fid_classwise_{name}": {str(c): v for c, v in sorted(by_class.items())},
                "classes_scored": len(by_class),
            })
            grid_rows.append(self.shards.head(images, min(rows, n), tuple(x.shape[1:])))
            grid_conf.append(conf[:rows])
        path = self.out_dir / "counterfactuals.png"
        if self.shards.is_main:
            counterfactual.plot_counterfactual_grid(
                x[:rows], grid_rows, [float(e) for e in cf.eps], y[:rows], targets[:rows], path,
                confidences=grid_conf, class_names=getattr(self.dm.val_set, "classes", None))
        return {"extractor": name, "n_examples": n, "steps": int(cf.steps),
                "step_size": "2.5 * eps / steps" if cf.step_size is None else float(cf.step_size),
                "targets": "(y + randint(1, K)) mod K", "norm": "L2",
                "per_eps": {f"eps_{p['eps']:g}": p for p in per_eps},
                "grid": self.picture("counterfactual/grid", path)}

    def ood_sets(self) -> dict[str, Tensor]:
        """The OOD images: uniform noise and every configured dataset, ``n_ood`` each."""
        o, n = self.cfg.ood, int(self.cfg.ood.n_ood)
        data = self.run.config.data
        sets: dict[str, Dataset] = {}
        if o.uniform:
            sets["uniform"] = UniformNoise(channels=int(data.channels), size=int(data.image_size), length=n,
                                           seed=int(self.cfg.seed))
        for name, node in (o.datasets or {}).items():
            dataset = hydra.utils.instantiate(node)
            if getattr(dataset, "generated", False) and getattr(dataset, "length", 0) is None:
                dataset.length = n
            sets[str(name)] = dataset
        out = {}
        expected = (int(data.channels), int(data.image_size), int(data.image_size))
        for name, dataset in sets.items():
            x = seed_images(dataset, range(min(n, len(dataset))))
            if tuple(x.shape[1:]) != expected:
                raise ValueError(f"OOD set {name!r} gives images of shape {tuple(x.shape[1:])}, the model takes "
                                 f"{expected}: add a transform to ood.datasets.{name}")
            robustness.check_unit_interval(x, f"OOD set {name!r}")
            out[name] = x
        return out

    def ood(self) -> dict[str, Any]:
        o = self.cfg.ood
        logits_in, _ = self.test_logits()
        scores = {s: ood.SCORES[s] for s in o.scores}
        adv = o.adversarial
        result: dict[str, Any] = {"n_in": len(logits_in), "threat_model": (
            {"norm": adv.norm, "eps": float(adv.eps), "steps": int(adv.steps), "step_size": float(adv.step_size)}
            if adv.enabled else None)}
        for name, x_out in self.ood_sets().items():
            n = len(x_out)
            chunks = self.shards.chunks(n, int(self.cfg.batch_size))
            logits_out = self.shards.collect(n, [(r, self.logits_of(x_out[r.start : r.stop])) for _, r in chunks],
                                             (self.num_classes,))
            entry: dict[str, Any] = {"n_out": n}
            for s, score in scores.items():
                entry[s] = {"auroc": ood.auroc(score(logits_in), score(logits_out))}
                if adv.enabled:
                    parts = []
                    for _, r in self.progress(chunks, f"adversarial OOD ({name}, {s})"):
                        with self.autocast():
                            x_adv = ood.adversarial_ood(self.net, x_out[r.start : r.stop].to(self.device), score,
                                                        eps=float(adv.eps), step_size=float(adv.step_size),
                                                        steps=int(adv.steps), norm=adv.norm)
                        parts.append((r, self.logits_of(x_adv)))
                    logits_adv = self.shards.collect(n, parts, (self.num_classes,))
                    entry[s]["auroc_adversarial"] = ood.auroc(score(logits_in), score(logits_adv))
            result[name] = entry
        return result
