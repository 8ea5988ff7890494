"""Log a grid of class-conditional samples (rows = classes) to the logger and to disk."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchvision.utils import save_image

from dat_lightning.callbacks.ema import evaluation_net
from dat_lightning.callbacks.protocol import staged
from dat_lightning.generation import generate_batches, sample_grid
from dat_lightning.reporting import log_image
from dat_lightning.samplers import SamplerSpec


class SampleGrid(Callback):
    """Every ``every_n_epochs`` training epochs (and at the end of training) draw
    ``per_class`` samples of each class from fixed seeds, so grids are comparable over time.

    The PNG lands in ``<log dir>/samples/epoch_XXX.png``; the last one is also ``samples/last.png``.
    """

    def __init__(self, step_size: float, steps: int, per_class: int = 8, every_n_epochs: int = 1,
                 conditional: bool = True, sampler: SamplerSpec | Mapping[str, Any] | str | None = None) -> None:
        self.step_size = step_size
        self.sampler = SamplerSpec.of(sampler)
        self.steps = steps
        self.per_class = per_class
        self.every_n_epochs = every_n_epochs
        self.conditional = conditional
        self.last_path: Path | None = None
        self._last_grid: tuple[int, torch.Tensor] | None = None  # (global step, grid) of the last draw

    @staticmethod
    def _out_dir(trainer: Trainer) -> Path:
        # trainer.log_dir broadcasts rank 0's folder: a collective, so every rank must ask for it
        # (asked on rank 0 alone, it waits forever for the others).
        return Path(trainer.log_dir or trainer.default_root_dir) / "samples"

    def draw(self, trainer: Trainer, pl_module: LightningModule, tag: str) -> Path | None:
        out_dir = self._out_dir(trainer)
        if not trainer.is_global_zero:
            return None
        net = evaluation_net(trainer, pl_module)
        k = staged(pl_module).net.num_classes
        batches = list(generate_batches(
            net, trainer.datamodule.ood, self.per_class * k, k, step_size=self.step_size,
            steps=self.steps, batch_size=max(k, 100), conditional=self.conditional, sampler=self.sampler))
        samples, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        grid = sample_grid(samples, labels, k, self.per_class, self.conditional)
        log_image(trainer, "samples/grid", grid, step=trainer.global_step)
        self._last_grid = (trainer.global_step, grid)
        return self._save(out_dir, grid, tag)

    def _save(self, out_dir: Path, grid: torch.Tensor, tag: str) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{tag}.png"
        save_image(grid, path)
        save_image(grid, out_dir / "last.png")
        self.last_path = path
        return path

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.draw(trainer, pl_module, f"epoch_{trainer.current_epoch:03d}")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # No step since the last epoch-end grid: same weights (EMA or raw), same seeds, so the
        # same grid; save it as final instead of running the chain again.
        if self._last_grid is not None and self._last_grid[0] == trainer.global_step:
            self._save(self._out_dir(trainer), self._last_grid[1], "final")
        else:
            self.draw(trainer, pl_module, "final")
