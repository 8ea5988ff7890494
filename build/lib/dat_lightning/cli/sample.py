"""``python -m dat_lightning.sample ckpt=PATH [sampling.num_samples=N sampling.steps=T ...]``: draw samples.

Class-conditional (labels ``i % K``) or unconditional (marginal) chains from the configured seed
source, batched with a progress bar. Writes to the run directory: ``grid.png`` (rows = classes),
``samples.npz`` and/or ``png/``, and ``settings.json``. With ``sweep=[T1,T2,...]`` it scores FID
(and IS) against the chain length T instead (``sweep.json``, ``fid_vs_steps.png``), the same seeds
for every T. Config: ``conf/sample.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch import seed_everything
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision.utils import save_image

from dat_lightning.checkpoints.loading import LoadedRun, build_datamodule, load_run, resolve_device
from dat_lightning.cli.app import in_run_directory, launch
from dat_lightning.cli.instantiate import make_loggers
from dat_lightning.cli.settings_checks import check_sample_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.figures import plot_curve
from dat_lightning.generation import (
    SamplingSettings,
    draw_samples,
    predict_classes,
    sample_grid,
    save_samples,
    seed_source,
)
from dat_lightning.metrics.extractors import build_feature_extractor
from dat_lightning.metrics.quality import sample_quality
from dat_lightning.reporting import close_loggers, log_numbers, log_pictures, write_json

register_resolvers()


def run_sweep(cfg: DictConfig, run: LoadedRun, settings: SamplingSettings, source: Dataset,
              device: torch.device, out_dir: Path) -> dict[str, Any]:
    """FID (and IS) of the same seeds for every chain length in ``cfg.sweep``."""
    steps_list = [int(t) for t in cfg.sweep]
    extractor = build_feature_extractor(cfg.fid).to(device)
    dm = build_datamodule(run, cfg.get("data_overrides"), num_workers=int(cfg.num_workers))
    scorer = sample_quality(cfg.fid, extractor, dm)
    k = run.net.num_classes
    rows, loggers = [], make_loggers(cfg.get("logger"))
    for steps in steps_list:
        x, y = draw_samples(run.net, source, settings, k, steps=steps)
        save_image(sample_grid(x, y, k, int(cfg.grid_per_class), settings.conditional),
                   out_dir / f"grid_steps_{steps:03d}.png")
        row = {"steps": steps} | scorer(torch.split(x, int(cfg.fid.batch_size)))
        rows.append(row)
        write_json(out_dir / "sweep.json", {"rows": rows})  # each T's result is kept before logging it
        log_numbers(loggers, {f"sweep/{key}": v for key, v in row.items() if isinstance(v, (int, float))}, step=steps)
        print(f"T={steps}: " + ", ".join(f"{key}={v:.4f}" for key, v in row.items() if isinstance(v, float)),
              flush=True)
    fid_key = f"fid_{scorer.name}"
    curve = plot_curve(steps_list, [r[fid_key] for r in rows], f"FID ({scorer.name})", out_dir / "fid_vs_steps.png",
                       title=f"step size {settings.step_size:g}, {settings.num_samples} samples")
    log_pictures(loggers, {"sweep/fid_vs_steps": curve})
    close_loggers(loggers)
    best = min(rows, key=lambda r: r[fid_key])
    return {"extractor": scorer.name, "rows": rows, "best_steps": best["steps"], f"best_{fid_key}": best[fid_key],
            "curve": str(curve)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample (or sweep) as ``cfg`` says; returns the settings written to ``settings.json``."""
    started = time.time()
    check_sample_settings(cfg)
    seed_everything(int(cfg.seed), workers=True)
    device = resolve_device(cfg.device)
    loaded = load_run(cfg.ckpt, ema=bool(cfg.ema), config=cfg.get("config"), format=cfg.get("format", "auto"))
    loaded.net.to(device)
    settings = SamplingSettings.resolve(cfg.sampling, loaded)
    source = seed_source(loaded, settings.seeds, settings.seed_offset + settings.num_samples)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = loaded.net.num_classes
    info: dict[str, Any] = {
        "checkpoint": str(loaded.path), "ema": bool(cfg.ema), "config": cfg.get("config"),
        "checkpoint_gen_steps": loaded.gen_steps, "num_classes": k, "seed": int(cfg.seed),
        "device": str(device), "seed_source": repr(source), "sampling": asdict(settings),
    }
    if cfg.get("sweep"):
        info["sweep"] = run_sweep(cfg, loaded, settings, source, device, out_dir)
    else:
        x, y = draw_samples(loaded.net, source, settings, k)
        save_image(sample_grid(x, y, k, int(cfg.grid_per_class), settings.conditional), out_dir / "grid.png")
        predicted = predict_classes(loaded.net, x)
        labels = y if settings.conditional else None
        save_samples(x, labels, predicted, out_dir, npz=bool(cfg.save_npz), png=bool(cfg.save_png))
        if labels is not None:
            info["target_class_accuracy"] = float((predicted == labels).float().mean())
        info["outputs"] = {"grid": str(out_dir / "grid.png"),
                           "npz": str(out_dir / "samples.npz") if cfg.save_npz else None,
                           "png_dir": str(out_dir / "png") if cfg.save_png else None}
    info["wall_time_s"] = round(time.time() - started, 2)
    write_json(out_dir / "settings.json", info)  # before any logger can fail
    if not cfg.get("sweep"):
        loggers = make_loggers(cfg.get("logger"))
        log_pictures(loggers, {"samples/grid": out_dir / "grid.png"})
        if "target_class_accuracy" in info:
            log_numbers(loggers, {"samples/target_class_accuracy": info["target_class_accuracy"]})
        close_loggers(loggers)
    print(f"samples written to {out_dir}", flush=True)
    return info


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def hydra_main(cfg: DictConfig) -> None:
    in_run_directory(cfg, run)


def main() -> None:
    """The CLI: overrides, values and the checkpoint file checked first, then the sampling."""
    launch("sample", hydra_main, validate=check_sample_settings, checkpoints=("ckpt",))
