"""Draw samples from a checkpoint: ``python -m dat_lightning.sample ckpt=PATH [key=value ...]``.

Class-conditional (labels ``i % K``) or unconditional (marginal) chains from the configured seed
source, batched with a progress bar. Writes to the run directory: ``grid.png`` (rows = classes),
``samples.npz`` and/or ``png/``, and ``settings.json``. With ``sweep=[T1,T2,...]`` it scores FID
(and IS) against the chain length T instead (``sweep.json``, ``fid_vs_steps.png``), the same seeds
for every T. Config: ``conf/sample.yaml``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.utils import make_grid, save_image

from dat_lightning.checkpoints.stored_config import build_data
from dat_lightning.cli.app import in_run_directory, launch
from dat_lightning.cli.instantiate import make_loggers
from dat_lightning.cli.settings_checks import check_sample_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.data.ood import UniformNoise
from dat_lightning.figures import save_figure
from dat_lightning.generate import generate_batches
from dat_lightning.loading import LoadedRun, build_datamodule, load_run, resolve_device
from dat_lightning.metrics.extractors import build_extractor
from dat_lightning.metrics.quality import (
    SampleQuality,
    extractor_name,
    features_of,
    statistics_cache,
)
from dat_lightning.report import close_loggers, log_numbers, log_pictures, write_json

register_resolvers()


# ---------------------------------------------------------------------------------- settings
def sampling_settings(sampling: Mapping[str, Any], run: LoadedRun) -> dict[str, Any]:
    """The chain settings actually used: explicit values, else the checkpoint's ``sampling`` config."""
    own = run.config.get("sampling") or {}
    steps = sampling.get("steps") if sampling.get("steps") is not None else own.get("steps")
    step_size = sampling.get("step_size") if sampling.get("step_size") is not None else own.get("step_size")
    if steps is None or step_size is None:
        raise ValueError("the checkpoint's config has no sampling.steps / sampling.step_size: give steps=T "
                         "and step_size=S")
    seeds = sampling.get("seeds", "ood")
    return {
        "steps": int(steps),
        "step_size": float(step_size),
        "conditional": bool(sampling.get("conditional", True)),
        "seeds": OmegaConf.to_container(seeds) if isinstance(seeds, DictConfig) else seeds,
        "seed_offset": int(sampling.get("seed_offset", 0)),
        "num_samples": int(sampling["num_samples"]),
        "batch_size": int(sampling.get("batch_size", 100)),
    }


def seed_source(run: LoadedRun, seeds: str | Mapping[str, Any], num_images: int) -> Dataset:
    """The chain's seeds: ``"ood"`` (the checkpoint's ``data.ood``), ``"uniform"`` (uniform noise in
    the model's input shape) or a config node with ``_target_``; generated sources with no length
    get ``num_images``."""
    data = run.config.get("data") or {}
    if seeds == "uniform":
        if "channels" not in data or "image_size" not in data:
            raise ValueError("uniform seeds need data.channels and data.image_size in the checkpoint's config")
        source = UniformNoise(channels=int(data["channels"]), size=int(data["image_size"]), length=num_images)
    elif seeds == "ood":
        if data.get("ood") is None:
            raise ValueError("the checkpoint's config has no data.ood seed source: use seeds=uniform or a "
                             "node with _target_")
        source = build_data(run.config.data.ood, "data.ood", run.config_source, stored=run.config_stored)
    elif isinstance(seeds, Mapping) and "_target_" in seeds:
        source = hydra.utils.instantiate(seeds)
    else:
        raise ValueError(f"seeds must be 'ood', 'uniform' or a node with _target_, got {seeds!r}")
    if getattr(source, "generated", False) and getattr(source, "length", 0) is None:
        source.length = num_images
    if len(source) == 0:
        raise ValueError(f"the seed source {source!r} is empty")
    return source


def draw_samples(net: nn.Module, source: Dataset, settings: Mapping[str, Any], num_classes: int,
                 steps: int | None = None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """All samples of ``settings`` (optionally with another chain length) as ``(x, labels i % K)``."""
    batches = list(generate_batches(
        net, source, settings["num_samples"], num_classes, step_size=settings["step_size"],
        steps=settings["steps"] if steps is None else steps, batch_size=settings["batch_size"],
        conditional=settings["conditional"], seed_offset=settings["seed_offset"], progress=progress))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


# ---------------------------------------------------------------------------------- outputs
def sample_grid(x: Tensor, labels: Tensor, num_classes: int, per_class: int, conditional: bool) -> Tensor:
    """A grid image: rows = classes (``per_class`` samples each) when conditional, else square."""
    if conditional:
        rows = [x[labels == c][:per_class] for c in range(num_classes)]
        per_class = min(per_class, min(len(r) for r in rows))
        images = torch.cat([r[:per_class] for r in rows])
        return make_grid(images, nrow=per_class, padding=1, pad_value=1.0)
    n = min(len(x), per_class * num_classes)
    return make_grid(x[:n], nrow=max(1, math.isqrt(n)), padding=1, pad_value=1.0)


def save_samples(x: Tensor, labels: Tensor | None, predicted: Tensor, out_dir: Path, npz: bool, png: bool) -> None:
    """``samples.npz`` (uint8 images, labels, predictions) and/or one PNG per sample."""
    if npz:
        images = (x * 255).round().to(torch.uint8).numpy()
        arrays = {"images": images, "predicted": predicted.numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez_compressed(out_dir / "samples.npz", **arrays)
    if png:
        folder = out_dir / "png"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(x):
            tag = f"_class{int(labels[i])}" if labels is not None else ""
            save_image(image, folder / f"{i:06d}{tag}.png")


@torch.no_grad()
def predict_classes(net: nn.Module, x: Tensor, batch_size: int = 250) -> Tensor:
    device = next(net.parameters()).device
    return torch.cat([net(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def plot_curve(steps: list[int], values: list[float], ylabel: str, path: Path, title: str = "") -> Path:
    """A line plot of a score against the chain length T (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(steps, values, "o-")
    best = int(np.argmin(values))
    ax.annotate(f"T={steps[best]}: {values[best]:.2f}", (steps[best], values[best]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set(xlabel="chain steps T", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------- FID
def build_feature_extractor(fid_cfg: Mapping[str, Any]) -> nn.Module:
    """``fid.extractor``: a registry name (with ``fid.weights_path``) or a node with ``_target_``."""
    spec = fid_cfg["extractor"]
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, str):
        kwargs = {"weights_path": fid_cfg["weights_path"]} if fid_cfg.get("weights_path") else {}
        return build_extractor(spec, **kwargs)
    if isinstance(spec, Mapping) and "_target_" in spec:
        return hydra.utils.instantiate(spec)
    raise ValueError(f"fid.extractor must be a name or a node with _target_, got {spec!r}")


def real_images(fid_cfg: Mapping[str, Any], datamodule) -> tuple[DataLoader, int]:
    """``fid.num_real`` evenly spaced train images ``(x, y)`` (the real side of FID) and their number."""
    real = datamodule.real_eval_dataset(int(fid_cfg["num_real"]))
    return DataLoader(real, batch_size=int(fid_cfg["batch_size"]), num_workers=0), len(real)


def sample_quality(fid_cfg: Mapping[str, Any], extractor: nn.Module, datamodule,
                   real_feature_batches: Iterable[Tensor] | None = None) -> SampleQuality:
    """FID/IS scorer against ``fid.num_real`` train images (statistics cached by dataset, split,
    extractor and size); ``real_feature_batches`` reuses features computed elsewhere."""
    loader, n_real = real_images(fid_cfg, datamodule)
    cache = statistics_cache(fid_cfg.get("cache_dir"), datamodule.name, "train", extractor_name(extractor), n_real)
    if real_feature_batches is None:
        real_feature_batches = features_of(extractor, (x for x, _ in loader))
    return SampleQuality(extractor, real_feature_batches, cache,
                         inception_score=bool(fid_cfg["inception_score"]), splits=int(fid_cfg["splits"]))


def run_sweep(cfg: DictConfig, run: LoadedRun, settings: dict[str, Any], source: Dataset, device: torch.device,
              out_dir: Path) -> dict[str, Any]:
    """FID (and IS) of the same seeds for every chain length in ``cfg.sweep``."""
    steps_list = [int(t) for t in cfg.sweep]
    extractor = build_feature_extractor(cfg.fid).to(device)
    dm = build_datamodule(run, cfg.get("data_overrides"), num_workers=int(cfg.num_workers))
    scorer = sample_quality(cfg.fid, extractor, dm)
    k = run.net.num_classes
    rows, loggers = [], make_loggers(cfg.get("logger"))
    for steps in steps_list:
        x, y = draw_samples(run.net, source, settings, k, steps=steps)
        save_image(sample_grid(x, y, k, int(cfg.grid_per_class), settings["conditional"]),
                   out_dir / f"grid_steps_{steps:03d}.png")
        row = {"steps": steps} | scorer(torch.split(x, int(cfg.fid.batch_size)))
        rows.append(row)
        write_json(out_dir / "sweep.json", {"rows": rows})  # each T's result is kept before logging it
        log_numbers(loggers, {f"sweep/{key}": v for key, v in row.items() if isinstance(v, (int, float))}, step=steps)
        print(f"T={steps}: " + ", ".join(f"{key}={v:.4f}" for key, v in row.items() if isinstance(v, float)),
              flush=True)
    fid_key = f"fid_{scorer.name}"
    curve = plot_curve(steps_list, [r[fid_key] for r in rows], f"FID ({scorer.name})", out_dir / "fid_vs_steps.png",
                       title=f"step size {settings['step_size']:g}, {settings['num_samples']} samples")
    log_pictures(loggers, {"sweep/fid_vs_steps": curve})
    close_loggers(loggers)
    best = min(rows, key=lambda r: r[fid_key])
    return {"extractor": scorer.name, "rows": rows, "best_steps": best["steps"], f"best_{fid_key}": best[fid_key],
            "curve": str(curve)}


# ---------------------------------------------------------------------------------- entry
def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample (or sweep) as ``cfg`` says; returns the settings written to ``settings.json``."""
    started = time.time()
    check_sample_settings(cfg)
    seed_everything(int(cfg.seed), workers=True)
    device = resolve_device(cfg.device)
    loaded = load_run(cfg.ckpt, ema=bool(cfg.ema), config=cfg.get("config"), format=cfg.get("format", "auto"))
    loaded.net.to(device)
    settings = sampling_settings(cfg, loaded)
    source = seed_source(loaded, settings["seeds"], settings["seed_offset"] + settings["num_samples"])
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = loaded.net.num_classes
    info: dict[str, Any] = {
        "checkpoint": str(loaded.path), "ema": bool(cfg.ema), "config": cfg.get("config"),
        "checkpoint_gen_steps": loaded.gen_steps, "num_classes": k, "seed": int(cfg.seed),
        "device": str(device), "seed_source": repr(source), **settings,
    }
    if cfg.get("sweep"):
        info["sweep"] = run_sweep(cfg, loaded, settings, source, device, out_dir)
    else:
        x, y = draw_samples(loaded.net, source, settings, k)
        save_image(sample_grid(x, y, k, int(cfg.grid_per_class), settings["conditional"]), out_dir / "grid.png")
        predicted = predict_classes(loaded.net, x)
        labels = y if settings["conditional"] else None
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
    """The CLI: overrides and values checked first, then the sampling in its own directory."""
    launch("sample", hydra_main, validate=check_sample_settings, checkpoints=("ckpt",))


if __name__ == "__main__":
    main()
