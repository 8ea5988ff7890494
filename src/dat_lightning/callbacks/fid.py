"""FID of class-conditional samples during training (torchmetrics, pluggable extractor)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from dat_lightning.callbacks.ema import evaluation_net
from dat_lightning.generate import generate_batches
from dat_lightning.metrics.fid import fill_real_statistics, make_fid


class FIDCallback(Callback):
    """Every ``every_n_epochs`` epochs, FID of ``num_samples`` class-balanced samples against
    ``num_real`` training images (statistics computed once, cached under ``cache_dir``).

    The logged key names the extractor (``fid_<extractor>``), because an offline extractor's
    FID is not Inception FID and must never be reported as one. Monitor it with a
    ModelCheckpoint (mode ``min``, ``save_on_train_epoch_end=True``) to keep the best model.
    """

    def __init__(self, extractor: nn.Module, step_size: float, steps: int, num_samples: int = 1000,
                 num_real: int = 5000, every_n_epochs: int = 1, batch_size: int = 250,
                 cache_dir: str | None = None, stage2_only: bool = True) -> None:
        self.extractor = extractor
        self.step_size = step_size
        self.steps = steps
        self.num_samples = num_samples
        self.num_real = num_real
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.stage2_only = stage2_only
        self.metric_name = f"fid_{getattr(extractor, 'name', type(extractor).__name__)}"
        self._fid = None
        self.last_value: float | None = None

    def _real_batches(self, trainer: Trainer):
        dm = trainer.datamodule
        real = dm.real_eval_dataset(self.num_real)
        for x, _ in DataLoader(real, batch_size=self.batch_size, num_workers=0):
            yield x

    def _cache_file(self, trainer: Trainer) -> Path | None:
        if self.cache_dir is None:
            return None
        name = getattr(trainer.datamodule, "name", type(trainer.datamodule).__name__)
        return Path(self.cache_dir) / f"{name}_train_{self.metric_name}_{self.num_real}.pt"

    def compute(self, trainer: Trainer, pl_module: LightningModule, num_samples: int | None = None,
                progress: bool = False) -> float:
        if self._fid is None:
            self._fid = make_fid(self.extractor).to(pl_module.device)
            fill_real_statistics(self._fid, self._real_batches(trainer), self._cache_file(trainer))
        self._fid.reset()
        net = evaluation_net(trainer, pl_module)
        k = pl_module.net.num_classes
        # Seeds start past the sample grid's, over the whole seed source.
        for x, _ in generate_batches(net, trainer.datamodule.ood, num_samples or self.num_samples, k,
                                     step_size=self.step_size, steps=self.steps,
                                     batch_size=self.batch_size, seed_offset=10_000,
                                     progress=progress):
            self._fid.update(x.to(pl_module.device), real=False)
        value = float(self._fid.compute())
        self.last_value = value
        return value

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if self.stage2_only and getattr(pl_module, "stage", 2) != 2:
            return
        value = self.compute(trainer, pl_module)
        pl_module.log(self.metric_name, torch.tensor(value), prog_bar=True, sync_dist=False)
