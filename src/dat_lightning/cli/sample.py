"""``python -m dat_lightning.sample ckpt=PATH [sampling.num_samples=N sampling.steps=T ...]``: draw samples.

Class-conditional (labels ``i % K``) or unconditional (marginal) chains from the configured seed
source, batched with a progress bar. Writes to the run directory: ``grid.png`` (rows = classes),
``samples.npz`` and/or ``png/``, and ``settings.json``. With ``sweep=[T1,T2,...]`` it scores FID
(and IS) against the chain length T instead (``sweep.json``, ``fid_vs_steps.png``), the same seeds
for every T. Config: ``conf/sample.yaml``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision.utils import save_image

from dat_lightning.checkpoints.loading import LoadedRun, build_datamodule, load_run
from dat_lightning.cli.instantiate import launch_sharded, make_loggers
from dat_lightning.cli.launcher import in_run_directory, launch
from dat_lightning.cli.settings_checks import check_sample_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.figures import plot_curve
from dat_lightning.generation import (
    SamplingSettings,
    draw_shard,
    predict_classes,
    sample_grid,
    save_samples,
    seed_source,
)
from dat_lightning.metrics.extractors import build_feature_extractor
from dat_lightning.metrics.quality import judged_classes, real_feature_set, sample_quality
from dat_lightning.metrics.sample_stats import saturation_of
from dat_lightning.reporting import close_loggers, log_numbers, log_pictures, write_json
from dat_lightning.sharding import Shards

register_resolvers()


def run_sweep(cfg: DictConfig, run: LoadedRun, settings: SamplingSettings, source: Dataset, device: torch.device,
              shards: Shards, out_dir: Path) -> dict[str, Any]:
    """FID (and IS) of the same seeds for every chain length in ``cfg.sweep``."""
    steps_list = [int(t) for t in cfg.sweep]
    extractor = build_feature_extractor(cfg.fid, image_shape(run)[0]).to(device)
    dm = build_datamodule(run, cfg.get("data_overrides"), num_workers=int(cfg.num_workers))
    real = None if cfg.fid.get("reference") else real_feature_set(
        cfg.fid, extractor, dm, int(cfg.num_workers), shards, who="sample")[0]
    k, n = run.net.num_classes, settings.num_samples
    # a judge of the data's classes also gives the share of samples it assigns to their class
    scorer = sample_quality(cfg.fid, extractor, real, judged_classes(extractor, run.config.data.get("name"), k,
                                                                      settings.conditional))
    rows, loggers = [], make_loggers(cfg.get("logger")) if shards.is_main else []
    for steps in steps_list:
        parts = draw_shard(run.net, source, settings, k, shards, steps=steps)
        grid = shards.head(parts, min(int(cfg.grid_per_class) * k, n), image_shape(run))
        row = {"steps": steps} | scorer.score(parts, n, shards) | saturation_of((x for _, x in parts), shards.sum)
        rows.append(row)
        if not shards.is_main:
            continue
        save_image(sample_grid(grid, torch.arange(len(grid)) % k, k, int(cfg.grid_per_class), settings.conditional),
                   out_dir / f"grid_steps_{steps:03d}.png")
        write_json(out_dir / "sweep.json", {"rows": rows})  # each T's result is kept before logging it
        log_numbers(loggers, {f"sweep/{key}": v for key, v in row.items() if isinstance(v, (int, float))}, step=steps)
        print(f"T={steps}: " + ", ".join(f"{key}={v:.4f}" for key, v in row.items() if isinstance(v, float)),
              flush=True)
    fid_key = f"fid_{scorer.name}"
    curve = out_dir / "fid_vs_steps.png"
    if shards.is_main:
        plot_curve(steps_list, [r[fid_key] for r in rows], f"FID ({scorer.name})", curve,
                   title=f"step size {settings.step_size:g}, {n} samples")
        log_pictures(loggers, {"sweep/fid_vs_steps": curve})
        close_loggers(loggers)
    best = min(rows, key=lambda r: r[fid_key])
    return {"extractor": scorer.name, "rows": rows, "best_steps": best["steps"], f"best_{fid_key}": best[fid_key],
            "curve": str(curve)}


def image_shape(run: LoadedRun) -> tuple[int, int, int]:
    data = run.config.data
    return int(data.channels), int(data.image_size), int(data.image_size)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample (or sweep) as ``cfg`` says; returns the settings written to ``settings.json``."""
    started = time.time()
    check_sample_settings(cfg)
    fabric, shards = launch_sharded(cfg)
    loaded = load_run(cfg.ckpt, ema=bool(cfg.ema), config=cfg.get("config"), format=cfg.get("format", "auto"),
                      net_overrides=cfg.get("net_overrides"))
    loaded.net.to(fabric.device)
    settings = SamplingSettings.resolve(cfg.sampling, loaded)
    source = seed_source(loaded, settings.seeds, settings.seed_offset + settings.num_samples,
                         settings.seeds_from_checkpoint)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = loaded.net.num_classes
    info: dict[str, Any] = {
        "checkpoint": str(loaded.path), "ema": bool(cfg.ema), "config": cfg.get("config"),
        "checkpoint_gen_steps": loaded.gen_steps, "num_classes": k, "seed": int(cfg.seed),
        "device": str(fabric.device), "processes": shards.world, "seed_source": repr(source),
        "sampling": asdict(settings),
    }
    with fabric.autocast():
        if cfg.get("sweep"):
            info["sweep"] = run_sweep(cfg, loaded, settings, source, fabric.device, shards, out_dir)
        else:
            info |= draw_and_save(cfg, loaded, settings, source, shards, out_dir)
    info["wall_time_s"] = round(time.time() - started, 2)
    if not shards.is_main:
        return info
    write_json(out_dir / "settings.json", info)  # before any logger can fail
    if not cfg.get("sweep"):
        loggers = make_loggers(cfg.get("logger"))
        log_pictures(loggers, {"samples/grid": out_dir / "grid.png"})
        if "target_class_accuracy" in info:
            log_numbers(loggers, {"samples/target_class_accuracy": info["target_class_accuracy"]})
        close_loggers(loggers)
    print(f"samples written to {out_dir}", flush=True)
    return info


def draw_and_save(cfg: DictConfig, run: LoadedRun, settings: SamplingSettings, source: Dataset, shards: Shards,
                  out_dir: Path) -> dict[str, Any]:
    """Draw this process's share of the samples and write it (one ``.npz`` per process when there
    are several, ``samples.npz`` alone; PNGs named by item index); the grid by the main process."""
    k, n = run.net.num_classes, settings.num_samples
    parts = draw_shard(run.net, source, settings, k, shards)
    predicted = [(r, predict_classes(run.net, x)) for r, x in parts]
    if parts:
        x = torch.cat([x for _, x in parts])
        indices = torch.cat([torch.arange(r.start, r.stop) for r, _ in parts])
        labels = indices % k if settings.conditional else None
        npz = None if not cfg.save_npz else out_dir / ("samples.npz" if shards.world == 1
                                                       else f"samples_rank{shards.rank:03d}.npz")
        save_samples(x, indices, labels, torch.cat([p for _, p in predicted]), npz,
                     out_dir / "png" if cfg.save_png else None)
    grid = shards.head(parts, min(int(cfg.grid_per_class) * k, n), image_shape(run))
    if shards.is_main:
        save_image(sample_grid(grid, torch.arange(len(grid)) % k, k, int(cfg.grid_per_class), settings.conditional),
                   out_dir / "grid.png")
    out: dict[str, Any] = {"outputs": {
        "grid": str(out_dir / "grid.png"),
        "npz": (str(out_dir / "samples.npz") if shards.world == 1 else str(out_dir / "samples_rank*.npz"))
        if cfg.save_npz else None,
        "png_dir": str(out_dir / "png") if cfg.save_png else None}}
    if settings.conditional:
        all_predicted = shards.collect(n, predicted, dtype=torch.long)
        out["target_class_accuracy"] = float((all_predicted == torch.arange(n) % k).float().mean())
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sample")
def hydra_main(cfg: DictConfig) -> None:
    in_run_directory(cfg, run)


def main() -> None:
    """The CLI: overrides, values and the checkpoint file checked first, then the sampling."""
    launch(sys.argv[1:], "sample", hydra_main, validate=check_sample_settings, checkpoints=("ckpt",))
