"""FID of class-conditional samples during training (torchmetrics, pluggable extractor)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from tqdm.auto import tqdm

from dat_lightning.batchnorm import eval_mode
from dat_lightning.callbacks.ema import evaluation_net
from dat_lightning.callbacks.protocol import staged
from dat_lightning.energy import marginal_energy
from dat_lightning.generation import generate_batches
from dat_lightning.metrics.fid import (
    FAKE_STATES,
    NonFiniteFeatures,
    checked_fid,
    fill_real_statistics,
    make_fid,
)
from dat_lightning.metrics.quality import real_images, statistics_cache
from dat_lightning.samplers import SamplerSpec


def shard_range(num_samples: int, rank: int, world_size: int, multiple: int) -> range:
    """Rank ``rank``'s contiguous share of the sample indices ``0 .. num_samples-1``.

    Shards start at multiples of ``multiple`` (the number of classes), so the labels ``i % K`` of a
    shard equal its local ``j % K``; the shards of all ranks partition the indices exactly.
    """
    per_rank = math.ceil(num_samples / (world_size * multiple)) * multiple
    start = min(num_samples, rank * per_rank)
    return range(start, min(num_samples, start + per_rank))


# Under trainer.fast_dev_run, FID is a check that the measurement runs, not a measurement: this many
# samples and real images (about 25 s less per fast_dev_run of the default on 2 cores).
FAST_DEV_RUN_IMAGES = 50


class FIDCallback(Callback):
    """Every ``every_n_epochs`` epochs and after the last, FID of ``num_samples`` class-balanced samples against
    ``num_real`` training images (statistics computed once, cached under ``cache_dir``).

    The logged key names the extractor (``fid_<extractor>``), because an offline extractor's
    FID is not Inception FID and must never be reported as one. With ``best_ckpt_path`` set,
    each new lowest FID rewrites that checkpoint (the paper keeps the best-FID model); the best
    value is part of the callback state, so it survives a resume.

    Next to the FID it logs ``val/energy_samples``, the mean marginal energy of the same
    samples, to read against ``val/energy`` (real images): test-time samples far below the real
    energy mean the chain runs where stage two's loss never looked (a training chain much
    shorter than the sampling chain).
    """

    def __init__(self, extractor: nn.Module, step_size: float, steps: int, num_samples: int = 1000,
                 num_real: int = 5000, every_n_epochs: int = 1, batch_size: int = 250,
                 cache_dir: str | None = None, stage2_only: bool = True,
                 best_ckpt_path: str | None = None,
                 sampler: SamplerSpec | Mapping[str, Any] | str | None = None) -> None:
        self.extractor = extractor
        self.sampler = SamplerSpec.of(sampler)
        self.step_size = step_size
        self.steps = steps
        self.num_samples = num_samples
        self.num_real = num_real
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.stage2_only = stage2_only
        self.best_ckpt_path = best_ckpt_path
        self.best_value = float("inf")
        self.metric_name = f"fid_{getattr(extractor, 'name', type(extractor).__name__)}"
        self._fid = None
        self.last_value: float | None = None
        self.last_sample_energy: float | None = None
        self.last_samples: list[tuple[range, torch.Tensor]] = []  # this process's, with keep_samples

    def _num_real(self, trainer: Trainer) -> int:
        return min(self.num_real, FAST_DEV_RUN_IMAGES) if trainer.fast_dev_run else self.num_real

    def _real_batches(self, trainer: Trainer):
        dm = trainer.datamodule
        loader = real_images(dm, self._num_real(trainer), self.batch_size, getattr(dm, "num_workers", 0))
        return (x for x, _ in tqdm(loader, desc="FID real statistics", leave=False, disable=not trainer.is_global_zero))

    def _cache_file(self, trainer: Trainer) -> Path | None:
        if self.cache_dir is None:
            return None
        name = getattr(trainer.datamodule, "name", type(trainer.datamodule).__name__)
        extractor = self.metric_name.removeprefix("fid_")
        return statistics_cache(self.cache_dir, name, "train", extractor, self._num_real(trainer))

    def compute(self, trainer: Trainer, pl_module: LightningModule, num_samples: int | None = None,
                progress: bool = False, distributed: bool = False, keep_samples: bool = False,
                net: nn.Module | None = None) -> float:
        """FID of ``num_samples`` samples (labels ``i % K``, seeds ``ood[10_000 + i]``).

        ``distributed=True`` must be called on every rank at once: each rank generates its
        :func:`shard_range` of the samples and the feature statistics are summed over ranks, so
        every rank gets the FID of all samples. Otherwise this process generates them all.
        ``keep_samples``: keep this process's samples in ``last_samples`` as ``(item indices, images)``
        on the CPU, for more scores of the same images (the run's final summary).
        ``net``: the classifier to sample from (default: the run's evaluation net, EMA when it runs),
        e.g. the stage-one model, drawn with the same seeds and T.
        """
        distributed = distributed and trainer.world_size > 1
        if self._fid is None:
            self._fid = make_fid(self.extractor).to(pl_module.device)  # reduced explicitly below
            # Rank 0 first, so the other ranks read its cache instead of racing to write it.
            if distributed and not trainer.is_global_zero:
                trainer.strategy.barrier("fid_real_statistics")
            fill_real_statistics(self._fid, self._real_batches(trainer), self._cache_file(trainer))
            if distributed and trainer.is_global_zero:
                trainer.strategy.barrier("fid_real_statistics")
        self._fid.reset()
        net = evaluation_net(trainer, pl_module) if net is None else net
        k = pl_module.net.num_classes
        total = num_samples or self.num_samples
        share = shard_range(total, trainer.global_rank, trainer.world_size, k) if distributed else range(total)
        energy_sum = 0.0
        self.last_samples, start = [], share.start
        # Seeds start past the sample grid's, over the whole seed source.
        batches = generate_batches(net, trainer.datamodule.ood, len(share), k, step_size=self.step_size,
                                   steps=self.steps, batch_size=self.batch_size,
                                   seed_offset=10_000 + share.start, progress=progress, sampler=self.sampler)
        with eval_mode(net):  # the energy of the samples as the chain saw them
            for x, _ in batches:
                x = x.to(pl_module.device)
                self._fid.update(x, real=False)
                if keep_samples:
                    self.last_samples.append((range(start, start + len(x)), x.cpu()))
                    start += len(x)
                with torch.no_grad():
                    energy_sum += float(marginal_energy(net(x)).sum())
        if distributed:
            for name in FAKE_STATES:
                state = getattr(self._fid, name)
                state.copy_(trainer.strategy.reduce(state.clone(), reduce_op="sum"))
            energy_sum = float(trainer.strategy.reduce(torch.tensor(energy_sum, device=pl_module.device),
                                                       reduce_op="sum"))
        self.last_sample_energy = energy_sum / total
        value = checked_fid(self._fid, f"{self.metric_name} at epoch {trainer.current_epoch}")
        self.last_value = value
        return value

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = trainer.current_epoch + 1 == trainer.max_epochs  # the final model is always a candidate
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last:
            return
        if self.stage2_only and staged(pl_module).stage != 2:
            return
        num_samples = None
        if trainer.fast_dev_run:
            num_samples = min(self.num_samples, FAST_DEV_RUN_IMAGES)
            rank_zero_info(f"fast_dev_run: {self.metric_name} of {num_samples} samples against "
                           f"{self._num_real(trainer)} real images, a check that it runs, not a measurement.")
        try:
            value = self.compute(trainer, pl_module, num_samples, distributed=True, progress=trainer.is_global_zero)
        except NonFiniteFeatures as err:  # every rank sees the same reduced statistics
            rank_zero_warn(f"{err} The measurement is skipped (no {self.metric_name} logged, the best-FID "
                           "checkpoint kept); training goes on under the divergence guard.")
            self.last_value = None
            return
        pl_module.log(self.metric_name, torch.tensor(value), prog_bar=True, sync_dist=False)
        pl_module.log("val/energy_samples", torch.tensor(self.last_sample_energy), sync_dist=False)
        if value < self.best_value:
            self.best_value = value
            if self.best_ckpt_path:
                trainer.save_checkpoint(self.best_ckpt_path, weights_only=False)  # resumable: full state

    def state_dict(self) -> dict:
        return {"best_value": self.best_value}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best_value = float(state_dict["best_value"])
