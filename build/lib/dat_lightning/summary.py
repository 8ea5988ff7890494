"""The numbers a finished run reports: clean and robust accuracy, FID, where things were saved."""

from __future__ import annotations

from itertools import islice
from typing import Any

import torch
from lightning.pytorch import Trainer
from omegaconf import DictConfig
from tqdm.auto import tqdm

from dat_lightning.attacks import PGDSettings, pgd_attack
from dat_lightning.batchnorm import eval_mode
from dat_lightning.callbacks import FIDCallback, SampleGrid
from dat_lightning.metrics.fid import NonFiniteFeatures


def accuracy(net, loader, attack: PGDSettings, max_batches: int | None = None,
             desc: str = "test") -> tuple[float, float, int]:
    """Clean and PGD-robust accuracy of ``net`` over ``loader``: (clean, robust, n)."""
    device = next(net.parameters()).device
    correct = robust = total = 0
    with eval_mode(net):
        for x, y in tqdm(islice(loader, max_batches), desc=desc, total=max_batches or len(loader), leave=False):
            x, y = x.to(device), y.to(device)
            x_adv = pgd_attack(net, x, y, attack)
            with torch.no_grad():
                correct += (net(x).argmax(1) == y).sum().item()
                robust += (net(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total, robust / total, total


def final_summary(cfg: DictConfig, trainer: Trainer, module, datamodule) -> dict[str, Any]:
    """Measure the final (EMA, when enabled) model on the test split and its samples."""
    loader = datamodule.test_dataloader()
    max_batches = None
    if cfg.summary.test_size:
        max_batches = -(-int(cfg.summary.test_size) // loader.batch_size)
    attack = module.val_attack
    clean, robust, n = accuracy(module.net, loader, attack, max_batches)
    out: dict[str, Any] = {
        "test_examples": n,
        "clean_accuracy": clean,
        "robust_accuracy": robust,
        "threat_model": f"PGD-{attack.steps} {attack.norm.upper()} eps={attack.eps} (pixel units)",
        "final_gen_steps": module.gen_steps,
        "checkpoint": (trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path)
        if trainer.checkpoint_callback else None,
    }
    for cb in trainer.callbacks:
        if isinstance(cb, FIDCallback) and cfg.summary.fid_samples:
            try:
                value = cb.compute(trainer, module, num_samples=int(cfg.summary.fid_samples), progress=True)
            except NonFiniteFeatures as err:
                value = f"not measured: {err}"
            out[cb.metric_name] = value
            out["fid_samples"] = int(cfg.summary.fid_samples)
            out["fid_sampling"] = f"T={cb.steps} step={cb.step_size}"
        if isinstance(cb, SampleGrid) and cb.last_path is not None:
            out["sample_grid"] = str(cb.last_path)
    return out


def print_summary(summary: dict[str, Any]) -> None:
    width = max(len(k) for k in summary)
    lines = ["", "DAT run summary", "-" * (width + 40)]
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key.ljust(width)}  {shown}")
    print("\n".join(lines), flush=True)
