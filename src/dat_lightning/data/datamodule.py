"""The DAT datamodule: three independent training streams and a validation split.

Stage 2 of DAT draws, at every iteration, three independent batches of the same size B
(docs/algorithm.md, "Stage two"): ``clf`` = ``(x, y)`` with strong augmentation, ``gen`` = ``(x_hat, y_hat)``
real images with mild augmentation, ``ood`` = ``x0`` seeds for the generative chain.

Data order: each stream has its own :class:`SeededRandomSampler`, whose order is a pure function
of ``(seed, stream, epoch)``; Lightning calls ``set_epoch`` on it at every epoch start. Under DDP
every rank takes its interleaved share of that one order (the datamodule shards, not Lightning,
whose wrapper would reshuffle it and break exact resume), and evaluation splits are sharded in order.

Epoch length: every stream yields ``len(train_set) // B`` batches. Generated OOD sources (with a
``generated`` attribute and ``length=None``) get ``length = len(train_set)`` in :meth:`setup`; any
OOD source's sampler draws exactly ``len(train_set)`` indices per epoch: a fresh random subset
when the source is larger (e.g. 80M Tiny Images), several concatenated permutations when smaller.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from dat_lightning.data.faults import SkipCorrupt, check_policy, worker_settings
from dat_lightning.data.order import (
    STREAM_IDS,
    WORKER_SEED_SLOT,
    SeededItems,
    SeededRandomSampler,
    data_position,
    resume_point,
    stream_seed,
)

ImageTransform = Callable[[Image.Image], torch.Tensor]

def check_name(name: str) -> str:
    """A dataset name is part of cache file names (FID statistics): letters, digits, ``_.-``
    only, so that no name (e.g. from a downloaded checkpoint's config) points outside the cache."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or ".." in name:
        raise ValueError(f"data.name must be letters, digits and _.- (it names cache files), got {name!r}")
    return name


class TransformedDataset(Dataset):
    """``(image, label)`` pairs of ``dataset`` with ``transform`` applied to the image."""

    def __init__(self, dataset: Dataset, transform: ImageTransform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


def _describe(dataset: Any) -> str:
    text = repr(dataset)
    if text.startswith("<"):  # default object repr says nothing useful; try a root/path
        where = getattr(dataset, "root", None) or getattr(dataset, "path", None)
        text = type(dataset).__name__ + (f"(root='{where}')" if where else "")
    return text


class DATDataModule(pl.LightningDataModule):
    """Datasets, augmentations and loaders for DAT (see the module docstring).

    Args:
        train_set: training split, items ``(PIL image, int label)``.
        val_set: test split, same items (DAT validates on the test split, as the paper reports).
        ood: OOD seed source, items float ``(C, H, W)`` tensors in [0, 1].
        clf_transform: strong augmentation of the classification stream (PIL -> tensor).
        gen_transform: mild augmentation of the generative stream (PIL -> tensor).
        val_transform: validation/test transform (PIL -> tensor).
        num_classes, channels, image_size: what the model is built for; checked in ``setup``.
        batch_size: per-device batch size B of each of the three streams.
        num_workers: DataLoader workers *per stream* (so up to 3x this many processes in fit).
        val_size: validate on only N test images (``None``: all); chosen by ``val_subset``.
        val_subset: ``"first"`` takes the first N; ``"spread"`` takes N evenly spaced indices,
            for class-sorted splits such as ImageFolder (where the first N are a few classes).
        seed: seeds the three stream orders (and the worker base seeds).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers alive between epochs; ``None``: when ``num_workers > 0``.
        name: short dataset name (e.g. ``"cifar10"``), used in cache file names such as the FID
            train statistics; default derived from the train set's type and size.
        on_corrupt_image: ``"fail"``: an unreadable image stops the run with its path;
            ``"skip"``: it is replaced by the next readable one, named in a warning and counted
            (:mod:`dat_lightning.data.faults`).

    Exact resume: every training item carries its own augmentation seed, and the datamodule's
    checkpointed state (``state_dict``) records how many batches of the epoch were consumed, so a
    run resumed mid-epoch sees the same remaining batches, augmented the same way
    (:mod:`dat_lightning.data.order`).
    """

    def __init__(
        self,
        train_set: Dataset,
        val_set: Dataset,
        ood: Dataset,
        clf_transform: ImageTransform,
        gen_transform: ImageTransform,
        val_transform: ImageTransform,
        num_classes: int,
        channels: int,
        image_size: int,
        batch_size: int,
        num_workers: int = 0,
        val_size: int | None = None,
        val_subset: Literal["first", "spread"] = "first",
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool | None = None,
        name: str | None = None,
        on_corrupt_image: Literal["fail", "skip"] = "fail",
    ):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if val_subset not in ("first", "spread"):
            raise ValueError(f"val_subset must be 'first' or 'spread', got {val_subset!r}")
        self.train_set, self.val_set, self.ood = train_set, val_set, ood
        self.clf_transform, self.gen_transform = clf_transform, gen_transform
        self.val_transform = val_transform
        self._num_classes, self._channels = int(num_classes), int(channels)
        self._image_size = int(image_size)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_size, self.val_subset = val_size, val_subset
        self.seed, self.pin_memory = int(seed), pin_memory
        self.persistent_workers = (
            self.num_workers > 0 if persistent_workers is None else persistent_workers
        )
        self.name = check_name(name or f"{type(train_set).__name__.lower()}{len(train_set)}")
        self._checked_stages: set[str] = set()
        self.on_corrupt_image = check_policy(on_corrupt_image)
        self._skip_counters: list[SkipCorrupt] = []
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    # -- what the model needs to know ---------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def image_size(self) -> int:
        return self._image_size

    # -- setup: fail early with messages that say which config key to change -------------------

    def setup(self, stage: str | None = None) -> None:
        """Size the OOD source and check every stream's output against the config."""
        stage = stage or "fit"
        if stage in self._checked_stages:
            return
        # The checks run random augmentations; keep them off the global RNG so that calling
        # setup (again, e.g. on resume) does not shift the random state the run sees later.
        with torch.random.fork_rng(devices=[]):
            self._check_stage(stage)
        self._checked_stages.add(stage)

    def _check_stage(self, stage: str) -> None:
        self._require_nonempty(self.val_set, "val_set", "data.val_set")
        self._check_image(
            self.val_transform(self.val_set[0][0]),
            "val_transform(val_set[0])",
            "data.val_transform",
        )
        self._check_class_count()
        if stage == "fit":
            self._require_nonempty(self.train_set, "train_set", "data.train_set")
            if len(self.train_set) < self.batch_size:
                raise ValueError(
                    f"train_set has {len(self.train_set)} images, fewer than batch_size="
                    f"{self.batch_size}; with drop_last every epoch would be empty"
                )
            self._size_ood_source()
            image = self.train_set[0][0]
            self._check_image(
                self.clf_transform(image), "clf_transform(train_set[0])", "data.clf_transform"
            )
            self._check_image(
                self.gen_transform(image), "gen_transform(train_set[0])", "data.gen_transform"
            )
            self._check_image(self.ood[0], f"the OOD source {_describe(self.ood)}", "data.ood")

    def _size_ood_source(self) -> None:
        if getattr(self.ood, "generated", False) and getattr(self.ood, "length", 0) is None:
            self.ood.length = len(self.train_set)  # one epoch of seeds per epoch of data
        if len(self.ood) == 0:
            raise ValueError(
                f"the OOD source {_describe(self.ood)} is empty: no seed images for the "
                "generative chain. Check `data.ood` (its path/root, exclusion list, length), or "
                "use dat_lightning.data.generated.UniformNoise / NaturalPhotoCrops."
            )

    @staticmethod
    def _require_nonempty(dataset: Dataset, name: str, config_key: str) -> None:
        if len(dataset) == 0:
            raise ValueError(f"{name} {_describe(dataset)} is empty; check `{config_key}`")

    def _check_class_count(self) -> None:
        classes = getattr(self.train_set, "classes", None) or getattr(self.val_set, "classes", None)
        if classes is not None and len(classes) != self.num_classes:
            raise ValueError(
                f"the dataset has {len(classes)} classes but `data.num_classes` is "
                f"{self.num_classes}; set `data.num_classes={len(classes)}`"
            )

    def _check_image(self, image: Any, produced_by: str, transform_key: str) -> None:
        expected = (self.channels, self.image_size, self.image_size)
        if not isinstance(image, torch.Tensor) or image.dtype != torch.float32:
            found = f"a {image.dtype} tensor" if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(
                f"{produced_by} gave {found}; expected a float32 tensor in [0, 1]. "
                f"End `{transform_key}` with ToTensor()."
            )
        if tuple(image.shape) != expected:
            raise ValueError(
                f"{produced_by} gave images of shape (C, H, W) = {tuple(image.shape)}, but the data "
                f"config says channels={self.channels}, image_size={self.image_size}, i.e. "
                f"{expected}. Set `data.channels` / `data.image_size` to match the dataset, or "
                f"change `{transform_key}`."
            )
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{produced_by} gave values in [{low:.3f}, {high:.3f}], outside [0, 1]; "
                f"`{transform_key}` must not normalize (normalization lives inside the model)."
            )

    # -- loaders ------------------------------------------------------------------------------

    def _loader(
        self, dataset: Dataset, sampler: Sampler | None, drop_last: bool, stream: int
    ) -> DataLoader:
        if getattr(sampler, "with_seeds", False):
            dataset = SeededItems(dataset)
        if self.on_corrupt_image == "skip":
            dataset = SkipCorrupt(dataset)
            self._skip_counters.append(dataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            **worker_settings(self.num_workers),  # the training process saves, then stops them
            # Seeds the workers' base seed (augmentation randomness) from the run seed rather than
            # from whatever the global torch RNG holds when the iterator is created.
            generator=torch.Generator().manual_seed(
                stream_seed(self.seed, stream, WORKER_SEED_SLOT)
            ),
        )

    def _ranks(self) -> tuple[int, int]:
        """``(world size, global rank)`` of the trainer this datamodule feeds (1, 0 alone)."""
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def stream_sampler(self, stream: str) -> SeededRandomSampler:
        """The sampler of a training stream (``"clf"``, ``"gen"`` or ``"ood"``): this rank's share
        of the stream's global order."""
        stream_id = STREAM_IDS[stream]
        world, rank = self._ranks()
        n_items = len(self.ood) if stream == "ood" else len(self.train_set)
        return SeededRandomSampler(n_items, self.seed, stream_id, len(self.train_set), with_seeds=True,
                                   num_replicas=world, rank=rank)

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, this rank's share of an evaluation split, in order (Lightning's own
        sharding is off: see :class:`~dat_lightning.data.order.SeededRandomSampler`)."""
        world, rank = self._ranks()
        if world == 1:
            return None
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    @property
    def corrupt_images_skipped(self) -> int:
        """Unreadable images replaced so far (``on_corrupt_image="skip"``), over all workers."""
        return sum(counter.num_skipped for counter in self._skip_counters)

    # -- exact resume ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        """Checkpointed by Lightning: the epoch and the batches of it consumed so far."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return data_position(trainer)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not state_dict:
            return
        self._resume = resume_point(state_dict)
        # Lightning cannot see that these loaders resume mid-epoch (the samplers skip what was
        # consumed), so its warning that they do not would be wrong.
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

    def _apply_resume(self, samplers: list[SeededRandomSampler]) -> None:
        """Start the samplers at the checkpointed epoch, skipping the batches already trained on."""
        if self._resume is None:
            return
        epoch, batches = self._resume
        self._resume = None
        world_size, _ = self._ranks()
        for sampler in samplers:
            # Set now, not only by Lightning's set_epoch: worker processes draw the first
            # indices as soon as the loader's iterator is created.
            sampler.set_epoch(epoch)
            if batches:  # under DDP ranks take interleaved shares of one global order
                sampler.skip_once(epoch, batches * self.batch_size * world_size)

    def train_dataloader(self) -> CombinedLoader:
        """``{"clf": (x, y), "gen": (x_hat, y_hat), "ood": x0}`` per step, all of batch size B."""
        self.setup("fit")
        samplers = {stream: self.stream_sampler(stream) for stream in STREAM_IDS}
        self._apply_resume(list(samplers.values()))
        loaders = {
            "clf": self._loader(
                TransformedDataset(self.train_set, self.clf_transform),
                samplers["clf"],
                True,
                STREAM_IDS["clf"],
            ),
            "gen": self._loader(
                TransformedDataset(self.train_set, self.gen_transform),
                samplers["gen"],
                True,
                STREAM_IDS["gen"],
            ),
            "ood": self._loader(self.ood, samplers["ood"], True, STREAM_IDS["ood"]),
        }
        # All three have len(train_set) // B batches, so max_size_cycle never actually cycles.
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_indices(self) -> Sequence[int]:
        """Test-split indices used for validation (deterministic)."""
        total = len(self.val_set)
        if self.val_size is None or self.val_size >= total:
            return range(total)
        if self.val_subset == "first":
            return range(self.val_size)
        return np.linspace(0, total - 1, self.val_size).round().astype(np.int64).tolist()

    def real_eval_dataset(self, num_images: int | None = None) -> Dataset:
        """``num_images`` evenly spaced train images, ``(x, y)`` with ``val_transform``.

        The real side of FID (statistics against the train set, docs/algorithm.md, "How it is measured"): no
        augmentation, and evenly spaced so class-sorted folders contribute every class.
        """
        total = len(self.train_set)
        if num_images is None or num_images >= total:
            indices: Sequence[int] = range(total)
        else:
            indices = np.linspace(0, total - 1, num_images).round().astype(np.int64).tolist()
        return TransformedDataset(Subset(self.train_set, indices), self.val_transform)

    def val_dataloader(self) -> DataLoader:
        """``(x, y)`` over the first/spread ``val_size`` test images, in order."""
        self.setup("validate")
        dataset = TransformedDataset(Subset(self.val_set, self.val_indices()), self.val_transform)
        return self._loader(dataset, self._eval_sampler(dataset), False, 3)

    def test_dataset(self) -> Dataset:
        """The full test split, ``(x, y)`` with ``val_transform``."""
        return TransformedDataset(self.val_set, self.val_transform)

    def test_dataloader(self) -> DataLoader:
        """``(x, y)`` over the full test split, in order."""
        self.setup("test")
        dataset = self.test_dataset()
        return self._loader(dataset, self._eval_sampler(dataset), False, 4)
