"""Generation from a classifier at test time: batched class-conditional (or marginal) chains from
a seed source, the settings they use, and what is made of the samples (grids, files, predictions).

Training-time grids and FID (:mod:`dat_lightning.callbacks`), ``sample`` and ``evaluate`` all
draw through :func:`generate_batches`: labels ``i % K``, seeds ``source[seed_offset + i]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from dat_lightning.batchnorm import eval_mode
from dat_lightning.checkpoints.loading import LoadedRun
from dat_lightning.checkpoints.reading import read_checkpoint
from dat_lightning.checkpoints.stored_config import build_data
from dat_lightning.data.generated import UniformNoise
from dat_lightning.replay_buffer import CHECKPOINT_KEY
from dat_lightning.samplers import SamplerSpec, run_sampler
from dat_lightning.sampling import class_balanced_labels
from dat_lightning.sharding import Shards


def seed_images(source: Dataset, indices: Sequence[int]) -> Tensor:
    """Stack the seed images ``source[i]`` (a tensor, or the first element of a tuple)."""
    items = [source[int(i)] for i in indices]
    return torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items])


def generate(net: nn.Module, source: Dataset, indices: range, num_classes: int, *, step_size: float,
             steps: int, conditional: bool = True, seed_offset: int = 0,
             sampler: SamplerSpec | None = None) -> tuple[Tensor, Tensor]:
    """The samples of item ``indices``: item ``i`` has label ``i % K`` (class-balanced), seed
    ``source[(seed_offset + i) % len(source)]`` and (SGLD) noise seeded with ``seed_offset + i``, so
    it is the same whoever draws it, with what. ``sampler``: DAT's chain when None
    (:mod:`dat_lightning.samplers`). Returns ``(samples, labels)`` on the CPU; the net runs in eval mode."""
    device = next(net.parameters()).device
    n_source = len(source)
    x0 = seed_images(source, [(seed_offset + i) % n_source for i in indices]).to(device)
    y = class_balanced_labels(indices.stop, num_classes)[indices.start : indices.stop].to(device)
    with eval_mode(net):
        x = run_sampler(SamplerSpec.of(sampler), net, x0, y if conditional else None, step_size=step_size,
                        steps=steps, item_indices=[seed_offset + i for i in indices])
    return x.cpu(), y.cpu()


def generate_batches(
    net: nn.Module,
    source: Dataset,
    num_samples: int,
    num_classes: int,
    *,
    step_size: float,
    steps: int,
    batch_size: int = 100,
    conditional: bool = True,
    seed_offset: int = 0,
    progress: bool = False,
    sampler: SamplerSpec | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(samples, labels)`` of items ``0 .. num_samples-1`` in batches (:func:`generate`)."""
    for start in tqdm(range(0, num_samples, batch_size), desc=f"sampling T={steps}", disable=not progress,
                      unit="batch"):
        yield generate(net, source, range(start, min(start + batch_size, num_samples)), num_classes,
                       step_size=step_size, steps=steps, conditional=conditional, seed_offset=seed_offset,
                       sampler=sampler)


@dataclass(frozen=True)
class SamplingSettings:
    """A test-time chain (``sampling.*`` of every CLI) and the samples it draws."""

    steps: int
    step_size: float
    num_samples: int
    conditional: bool = True
    seeds: str | dict = "ood"  # "ood", "uniform", "buffer" or a node with _target_
    seeds_from_checkpoint: bool = False  # a node from the checkpoint's config: built as stored config
    seed_offset: int = 0
    batch_size: int = 100
    sampler: SamplerSpec = SamplerSpec()

    @classmethod
    def resolve(cls, sampling: Mapping[str, Any], run: LoadedRun) -> SamplingSettings:
        """Explicit values, else the chain the checkpoint's own config uses for its grids and FID."""
        own = run.config.get("sampling") or {}

        def pick(key: str) -> Any:
            return sampling.get(key) if sampling.get(key) is not None else own.get(key)

        steps, step_size = pick("steps"), pick("step_size")
        if steps is None or step_size is None:
            raise ValueError("the checkpoint's config has no sampling.steps / sampling.step_size: give "
                             "sampling.steps=T and sampling.step_size=S")
        # explicit, else where the checkpoint's method starts its test-time chains, else OOD images
        seeds = pick("seeds") or "ood"
        seeds_from_checkpoint = sampling.get("seeds") is None and own.get("seeds") is not None
        # explicit, else the sampler the checkpoint's method samples with, else DAT's chain
        sampler = SamplerSpec.of({"name": pick("sampler") or "pgd", "noise": pick("noise"), "clip": pick("clip")})
        return cls(steps=int(steps), step_size=float(step_size), num_samples=int(sampling["num_samples"]),
                   conditional=bool(sampling.get("conditional", True)),
                   seeds=OmegaConf.to_container(seeds) if isinstance(seeds, DictConfig) else seeds,
                   seeds_from_checkpoint=seeds_from_checkpoint,
                   seed_offset=int(sampling.get("seed_offset", 0)),
                   batch_size=int(sampling.get("batch_size", 100)), sampler=sampler)


def seed_source(run: LoadedRun, seeds: str | Mapping[str, Any], num_images: int,
                from_checkpoint: bool = False) -> Dataset:
    """The chain's seeds: ``"ood"`` (the checkpoint's ``data.ood``, built as stored config, see
    :mod:`dat_lightning.checkpoints.stored_config`), ``"uniform"`` (uniform noise in the model's
    input shape), ``"buffer"`` (the replay buffer a JEM-family checkpoint saved) or a node with
    ``_target_`` (the user's, or ``from_checkpoint``: the checkpoint's, built only as stored config
    is); generated sources with no length get ``num_images``."""
    data = run.config.get("data") or {}
    if seeds == "uniform":
        if "channels" not in data or "image_size" not in data:
            raise ValueError("uniform seeds need data.channels and data.image_size in the checkpoint's config")
        source = UniformNoise(channels=int(data["channels"]), size=int(data["image_size"]), length=num_images)
    elif seeds == "ood":
        if data.get("ood") is None:
            raise ValueError("the checkpoint's config has no data.ood seed source: use sampling.seeds=uniform "
                             "or a node with _target_")
        source = build_data(run.config.data.ood, "data.ood", run.config_source, stored=run.config_stored)
    elif seeds == "buffer":
        source = stored_buffer(run.path)
    elif isinstance(seeds, Mapping) and "_target_" in seeds:
        source = (build_data(seeds, "sampling.seeds", run.config_source, stored=run.config_stored)
                  if from_checkpoint else hydra.utils.instantiate(seeds))
    else:
        raise ValueError(f"sampling.seeds must be 'ood', 'uniform', 'buffer' or a node with _target_, got {seeds!r}")
    if getattr(source, "generated", False) and getattr(source, "length", 0) is None:
        source.length = num_images
    if len(source) == 0:
        raise ValueError(f"the seed source {source!r} is empty")
    return source


def stored_buffer(path: Path) -> Dataset:
    """The replay buffer saved in the checkpoint ``path``: the last states of a JEM-family method's
    training chains, the images its papers score (JEM, JEM++ and EB-JDAT report the FID of their
    buffer). Starting the test-time chain there gives these methods their own protocol."""
    saved = read_checkpoint(path, mmap=True).get(CHECKPOINT_KEY)  # the weights are not needed
    if saved is None:
        raise ValueError(f"sampling.seeds=buffer: {path} holds no replay buffer (the checkpoints of method=jem, "
                         "jempp and eb_jdat do); use sampling.seeds=ood or uniform")
    images = saved["images"].float()
    if not bool(saved.get("filled", True)) or not images.isfinite().all():
        raise ValueError(f"sampling.seeds=buffer: the replay buffer in {path} was never filled or holds "
                         "non-finite pixels; use sampling.seeds=ood or uniform")
    return TensorDataset(images.clamp(0, 1))


def draw_shard(net: nn.Module, source: Dataset, settings: SamplingSettings, num_classes: int,
               shards: Shards | None = None, steps: int | None = None,
               progress: bool = True) -> list[tuple[range, Tensor]]:
    """This process's chunks of the samples of ``settings`` (optionally another chain length T),
    as ``(item indices, samples)``; the labels are ``indices % K``."""
    shards = shards or Shards()
    chunks = shards.chunks(settings.num_samples, settings.batch_size)
    t = settings.steps if steps is None else steps
    return [(rows, generate(net, source, rows, num_classes, step_size=settings.step_size, steps=t,
                            conditional=settings.conditional, seed_offset=settings.seed_offset,
                            sampler=settings.sampler)[0])
            for _, rows in tqdm(chunks, desc=f"sampling T={t}", disable=not progress or not shards.is_main,
                                unit="batch")]


def draw_samples(net: nn.Module, source: Dataset, settings: SamplingSettings, num_classes: int,
                 steps: int | None = None, progress: bool = True) -> tuple[Tensor, Tensor]:
    """All samples of ``settings`` in this process, as ``(x, labels i % K)``."""
    parts = draw_shard(net, source, settings, num_classes, steps=steps, progress=progress)
    x = torch.cat([x for _, x in parts])
    return x, class_balanced_labels(len(x), num_classes)


def sample_grid(x: Tensor, labels: Tensor, num_classes: int, per_class: int, conditional: bool) -> Tensor:
    """A grid image: rows = classes (``per_class`` samples each) when conditional, else square.
    Classes without samples (fewer samples than classes) have no row."""
    if conditional:
        rows = [x[labels == c][:per_class] for c in range(num_classes) if bool((labels == c).any())]
        per_class = min(per_class, min(len(r) for r in rows))
        images = torch.cat([r[:per_class] for r in rows])
        return make_grid(images, nrow=per_class, padding=1, pad_value=1.0)
    n = min(len(x), per_class * num_classes)
    return make_grid(x[:n], nrow=max(1, math.isqrt(n)), padding=1, pad_value=1.0)


def save_samples(x: Tensor, indices: Tensor, labels: Tensor | None, predicted: Tensor, path: Path | None,
                 png_dir: Path | None) -> None:
    """Samples with their item ``indices``: an ``.npz`` at ``path`` (uint8 images, indices, labels,
    predictions) and/or one PNG per sample in ``png_dir``, named by item index (and label)."""
    if path is not None:
        images = (x * 255).round().to(torch.uint8).numpy()
        arrays = {"images": images, "indices": indices.numpy(), "predicted": predicted.numpy()}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez_compressed(path, **arrays)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        for j, (i, image) in enumerate(zip(indices.tolist(), x, strict=True)):
            tag = f"_class{int(labels[j])}" if labels is not None else ""
            save_image(image, png_dir / f"{i:06d}{tag}.png")


@torch.no_grad()
def predict_classes(net: nn.Module, x: Tensor, batch_size: int = 250) -> Tensor:
    device = next(net.parameters()).device
    return torch.cat([net(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
