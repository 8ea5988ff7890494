"""The numbers a finished run reports: clean and robust accuracy, FID, and what a classifier of the
data's own classes (the judge) and the pixels say of the same samples; where things were saved."""

from __future__ import annotations

import copy
from functools import cached_property
from typing import Any

import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from dat_lightning.attacks import PGDSettings, pgd_attack
from dat_lightning.batchnorm import eval_mode
from dat_lightning.callbacks import FIDCallback, SampleGrid, StageOneCheckpoint
from dat_lightning.checkpoints.loading import load_weights
from dat_lightning.data.faults import worker_settings
from dat_lightning.metrics.extractors import EXTRACTORS, build_extractor
from dat_lightning.metrics.fid import NonFiniteFeatures
from dat_lightning.metrics.inception import InceptionFeatures
from dat_lightning.metrics.quality import (
    SampleQuality,
    extractor_name,
    extractor_source,
    judged_classes,
    real_feature_set,
    sample_quality,
)
from dat_lightning.metrics.sample_stats import saturation_of
from dat_lightning.sharding import Shards

INCEPTION = InceptionFeatures.name  # the label of every Inception-v3 score


def accuracy(net, dataset: Dataset, attack: PGDSettings, batch_size: int, shards: Shards | None = None,
             num_workers: int = 0, desc: str = "test") -> tuple[float, float, int]:
    """Clean and PGD-robust accuracy of ``net`` over ``dataset``: (clean, robust, n).

    The processes of ``shards`` share the dataset in fixed chunks and add up their counts, so the
    numbers are those of one process alone.
    """
    shards = shards or Shards()
    device = next(net.parameters()).device
    mine = [i for _, rows in shards.chunks(len(dataset), batch_size) for i in rows]
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=num_workers,
                        **worker_settings(num_workers))
    counts = torch.zeros(2, dtype=torch.long)
    with eval_mode(net):
        for x, y in tqdm(loader, desc=desc, leave=False, disable=not shards.is_main):
            x, y = x.to(device), y.to(device)
            x_adv = pgd_attack(net, x, y, attack)
            with torch.no_grad():
                counts += torch.stack([(net(x).argmax(1) == y).sum(), (net(x_adv).argmax(1) == y).sum()]).cpu()
    correct, robust = shards.sum(counts).tolist()
    return correct / len(dataset), robust / len(dataset), len(dataset)


def data_judge(spec: str | None, data_name: str | None, weights: str | None = None):
    """``summary.judge``: the extractor whose head classifies this data's classes (``auto``: the
    registry's, e.g. ``fmnist_cnn`` for Fashion-MNIST), a registry name, or None. Returns
    ``(extractor or None, why not)``: missing weights are a reason, not an error."""
    if spec is None:
        return None, None
    if spec == "auto":
        names = [name for name, cls in EXTRACTORS.items() if getattr(cls, "classifies", None) == data_name]
        if not names:
            return None, f"no judge of the data {data_name!r} in the extractor registry"
        spec = names[0]
    try:
        return build_extractor(spec, weights_path=weights), None
    except FileNotFoundError as err:
        return None, f"not measured: {err}"


def first_items(parts, m: int) -> list[tuple[range, torch.Tensor]]:
    """The items with index < ``m`` of ``parts`` (item indices, images), as parts again."""
    kept = []
    for rows, images in parts:
        stop = min(rows.stop, m)
        if stop > rows.start:
            kept.append((range(rows.start, stop), images[: stop - rows.start]))
    return kept


class SampleScorers:
    """The scores a summary gives the FID callback's last samples: pixel saturation; with a judge,
    its FID and class agreement (item ``i`` drawn for class ``i % K``); the Inception FID of the
    first ``summary.inception_samples``. The extractors and their real-image features are made on
    first use and kept, so that every model the summary scores (final, stage one) shares them."""

    def __init__(self, cfg: DictConfig, fid: FIDCallback, datamodule, num_classes: int, shards: Shards,
                 device: torch.device) -> None:
        self.cfg, self.fid, self.datamodule, self.num_classes = cfg, fid, datamodule, num_classes
        self.shards, self.device = shards, device

    @cached_property
    def scorers(self) -> tuple[list[tuple[SampleQuality, int]], dict[str, Any]]:
        """``([(scorer, number of samples it scores)], labels)``; labels say what was not measured."""
        cfg, fid = self.cfg, self.fid
        data_name = getattr(self.datamodule, "name", None)
        n = int(cfg.summary.fid_samples)
        scorers, labels = [], {}
        judge, why_not = data_judge(OmegaConf.select(cfg, "summary.judge"), data_name,
                                    OmegaConf.select(cfg, "summary.judge_weights"))
        if judge is not None:
            labels["judge"] = extractor_source(judge)
            scorers.append((self._scorer(judge, fid.num_real), n))
        elif why_not:
            labels["judge"] = why_not
        n_inception = min(n, int(OmegaConf.select(cfg, "summary.inception_samples", default=0) or 0))
        if n_inception and extractor_name(fid.extractor) != INCEPTION:  # else the callback's FID already is
            try:
                inception = build_extractor("inception")
            except (FileNotFoundError, RuntimeError) as err:
                return scorers, labels | {f"fid_{INCEPTION}": f"not measured: {err}"}
            num_real = int(cfg.summary.inception_real)
            scorers.append((self._scorer(inception, num_real), n_inception))
            labels["inception_fid_of"] = f"first {n_inception} samples vs {num_real} train images"
        return scorers, labels

    def _scorer(self, extractor, num_real: int) -> SampleQuality:
        """FID (and agreement, when its head classifies this data) under ``extractor`` against
        ``num_real`` train images (features cached under the FID callback's cache_dir)."""
        extractor = extractor.to(self.device)
        fid_cfg = {"num_real": num_real, "batch_size": self.fid.batch_size, "cache_dir": self.fid.cache_dir,
                   "inception_score": False, "splits": 1}
        real, _ = real_feature_set(fid_cfg, extractor, self.datamodule, self.datamodule.num_workers, self.shards,
                                   who="summary")
        classes = judged_classes(extractor, getattr(self.datamodule, "name", None), self.num_classes)
        return sample_quality(fid_cfg, extractor, real, classes)

    def __call__(self) -> dict[str, Any]:
        """The scores of the FID callback's current ``last_samples``."""
        samples = self.fid.last_samples
        out: dict[str, Any] = saturation_of((x for _, x in samples), self.shards.sum)
        scorers, labels = self.scorers
        out |= labels
        for quality, n in scorers:
            parts = tqdm(first_items(samples, n), desc=f"summary: {quality.name} features", leave=False,
                         disable=not self.shards.is_main)
            scores = quality.score(parts, n, self.shards)
            out |= {key: scores[key] for key in (f"fid_{quality.name}", f"agreement_{quality.name}") if key in scores}
        return out


def judged_samples(cfg: DictConfig, fid: FIDCallback, datamodule, num_classes: int, shards: Shards,
                   device: torch.device) -> dict[str, Any]:
    """The :class:`SampleScorers` scores of the FID callback's last samples, scorers made afresh."""
    return SampleScorers(cfg, fid, datamodule, num_classes, shards, device)()


def scored_samples(cfg: DictConfig, fid: FIDCallback, trainer: Trainer, module, shards: Shards,
                   scorers: SampleScorers, net: torch.nn.Module | None = None) -> dict[str, Any]:
    """The FID callback's score of ``summary.fid_samples`` samples of ``net`` (default: the final
    model), then the ``scorers``' scores of the same images."""
    try:
        value = fid.compute(trainer, module, num_samples=int(cfg.summary.fid_samples), progress=shards.is_main,
                            distributed=True, keep_samples=True, net=net)
    except NonFiniteFeatures as err:
        value = f"not measured: {err}"
    out: dict[str, Any] = {fid.metric_name: value}
    if fid.last_samples and isinstance(value, float):  # not of non-finite samples
        out |= scorers()
    fid.last_samples = []
    return out


def stage_one_model(cfg: DictConfig, trainer: Trainer, module) -> tuple[torch.nn.Module | None, str | None]:
    """The model stage two started from, for a two-stage run: this run's ``stage1.ckpt`` or, when
    stage two started from ``init_ckpt``, that checkpoint (EMA weights when it has them)."""
    if not cfg.stage2_epochs:
        return None, None
    path = next((cb.path for cb in trainer.callbacks if isinstance(cb, StageOneCheckpoint) and cb.path.is_file()),
                None) or OmegaConf.select(cfg, "init_ckpt")
    if path is None:
        return None, None
    net = copy.deepcopy(module.net)
    load_weights(net, path, format=OmegaConf.select(cfg, "model.init_ckpt_format", default="auto"), ema=True)
    return net.eval(), str(path)


def final_summary(cfg: DictConfig, trainer: Trainer, module, datamodule) -> dict[str, Any]:
    """Measure the final (EMA, when enabled) model on the test split and its samples, shared by
    every process of the run (call it on all of them)."""
    shards = Shards.of_trainer(trainer)
    test = datamodule.test_dataset()
    if cfg.summary.test_size:
        test = Subset(test, range(min(int(cfg.summary.test_size), len(test))))
    attack = module.val_attack
    clean, robust, n = accuracy(module.net, test, attack, datamodule.batch_size, shards, datamodule.num_workers)
    out: dict[str, Any] = {
        "method": OmegaConf.select(cfg, "method.name", default="dat"),
        "test_examples": n,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "threat_model": f"PGD-{attack.steps} {attack.norm.upper()} eps={attack.eps} (pixel units)",
        # the chain length T the curriculum reached (DAT's stage two; None for one-stage methods)
        "final_gen_steps": module.gen_steps if cfg.stage2_epochs else None,
        "checkpoint": (trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
        if trainer.checkpoint_callback else None,
        "processes": shards.world,
    }
    for cb in trainer.callbacks:
        if isinstance(cb, FIDCallback) and cfg.summary.fid_samples:
            scorers = SampleScorers(cfg, cb, datamodule, module.net.num_classes, shards, module.device)
            out |= scored_samples(cfg, cb, trainer, module, shards, scorers)
            out["fid_samples"] = int(cfg.summary.fid_samples)
            out["fid_sampling"] = f"{cb.sampler.name} T={cb.steps} step={cb.step_size}"
            reference, source = stage_one_model(cfg, trainer, module)
            if reference is not None:  # the same seeds and T: what stage two added
                out["stage1_model"] = source
                out |= {f"stage1_{key}": value for key, value in
                        scored_samples(cfg, cb, trainer, module, shards, scorers, net=reference).items()
                        if key not in ("judge", "inception_fid_of")}
        if isinstance(cb, SampleGrid) and cb.last_path is not None:
            out["sample_grid"] = str(cb.last_path)
    return out


def print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    lines = ["", "DAT run summary" + ("" if summary.get("method", "dat") == "dat" else f" (method={summary['method']})"),
             "-" * (width + 40)]
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key.ljust(width)}  {shown}")
    print("\n".join(lines), flush=True)
