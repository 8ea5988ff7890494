"""The order of the training data, and what makes it reproducible across an interruption.

Two things decide which pixels a step sees: the order of the indices (a pure function of
``(seed, stream, epoch)``, see :class:`SeededRandomSampler`) and
the random augmentation of each image. The second normally comes from a worker's RNG, whose
state is lost when a run stops. Here every item carries its own augmentation seed, drawn with
the order, so item ``k`` of epoch ``e`` is augmented the same way in a resumed run, with any
number of workers. On resume mid-epoch the samplers drop the items the interrupted run already
consumed (``DATDataModule.state_dict`` records how many batches that was).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

# Stream ids mixed into the sampler seeds so the three streams are independent.
STREAM_IDS = {"clf": 0, "gen": 1, "ood": 2}

# Above this many items, drawing a subset through a full permutation costs too much memory
# (80M Tiny Images: 79M int64 = 634 MB per epoch); sample with replacement instead, where
# duplicates are negligible (~n_draws^2 / (2 * n_items) of them, e.g. 16 for 50K of 79M).
MAX_PERMUTATION_SIZE = 1 << 24

# Offset of the stream id for the per-item augmentation seeds (independent of the orders).
AUGMENTATION_SEED_STREAM = 1 << 20

# Stands in for the epoch when seeding a loader's worker base seeds: far from any real epoch, so
# it never equals a sampler seed.
WORKER_SEED_SLOT = 1 << 30


def stream_seed(seed: int, stream: int, epoch: int) -> int:
    """A 64-bit seed from (seed, stream, epoch) via numpy's SeedSequence (well-mixed, stable)."""
    if min(seed, stream, epoch) < 0:
        raise ValueError(f"seed, stream and epoch must be >= 0, got {(seed, stream, epoch)}")
    state = np.random.SeedSequence([seed, stream, epoch]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1)


class SeededRandomSampler(Sampler[int]):
    """Shuffled indices whose order is a pure function of ``(seed, stream, epoch)``.

    Args:
        num_items: size of the dataset sampled from.
        seed: run seed.
        stream: stream id; different streams get independent orders for the same seed.
        num_samples: indices per epoch (default ``num_items``). Fewer than ``num_items``: a random
            subset without replacement (with replacement above ``MAX_PERMUTATION_SIZE`` items);
            more: concatenated independent permutations.
        with_seeds: yield ``(index, augmentation seed)`` pairs, for :class:`SeededItems`
            (exact resume).
        num_replicas, rank: under DDP every rank takes the interleaved share ``order[rank::W]``
            of one global order (its tail cut to a multiple of ``W``), as Lightning's
            DistributedSampler would, but without reshuffling it: the order stays this class's, so
            an interrupted run resumes on the same items. (The trainers run with
            ``use_distributed_sampler: false`` for that reason.)
    """

    def __init__(
        self, num_items: int, seed: int = 0, stream: int = 0, num_samples: int | None = None,
        with_seeds: bool = False, num_replicas: int = 1, rank: int = 0,
    ):
        if num_items <= 0:
            raise ValueError(f"cannot sample from an empty dataset (num_items={num_items})")
        self.num_items = int(num_items)
        self.seed = int(seed)
        self.stream = int(stream)
        self.num_samples = self.num_items if num_samples is None else int(num_samples)
        self.epoch = 0
        self.with_seeds = with_seeds
        if not 0 <= int(rank) < int(num_replicas):
            raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self._skip: tuple[int, int] | None = None

    def skip_once(self, epoch: int, count: int) -> None:
        """Drop the first ``count`` items of the global order (all ranks' items) the next time
        ``epoch`` is iterated (resume mid-epoch)."""
        self._skip = (int(epoch), int(count))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (Lightning calls this every epoch)."""
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """All indices of ``epoch`` (default: the current one), in order."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.stream, epoch))
        n, total = self.num_items, self.num_samples
        if total <= n:
            if n > MAX_PERMUTATION_SIZE:
                return torch.randint(n, (total,), generator=generator)
            return torch.randperm(n, generator=generator)[:total]
        repeats = math.ceil(total / n)
        return torch.cat([torch.randperm(n, generator=generator) for _ in range(repeats)])[:total]

    def item_seeds(self, epoch: int | None = None) -> torch.Tensor:
        """One augmentation seed per position of ``epoch``'s order (independent of the order)."""
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(
            stream_seed(self.seed, self.stream + AUGMENTATION_SEED_STREAM, epoch)
        )
        return torch.randint(1 << 62, (self.num_samples,), generator=generator)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        items: Iterator = iter(self.epoch_indices().tolist())
        if self.with_seeds:
            items = zip(items, self.item_seeds().tolist(), strict=True)
        usable = self.num_samples - self.num_samples % self.num_replicas
        start = 0
        skip, self._skip = self._skip, None  # a pending skip applies to the next iteration only
        if skip is not None and skip[0] == self.epoch:
            start = skip[1]
        return itertools.islice(items, start + self.rank, usable, self.num_replicas)

    def __len__(self) -> int:
        return self.num_samples // self.num_replicas


class SeededItems(Dataset):
    """``dataset[index]`` for keys ``(index, seed)``, with the torch RNG seeded by ``seed``.

    The global RNG is forked, so the caller's random state does not move (with ``num_workers=0``
    the caller is the training process). Plain int keys pass through unseeded.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __repr__(self) -> str:
        return f"SeededItems({self.dataset!r})"


def data_position(trainer: Any) -> dict[str, int]:
    """Where a fitting trainer is in its data: ``epoch``, ``batches`` consumed, ``epoch_batches``.

    Read from Lightning's loop progress. Between epochs (a checkpoint written at epoch end)
    ``batches`` is 0 and ``epoch`` is the next epoch.
    """
    loop = trainer.fit_loop
    epoch = loop.epoch_progress.current.processed
    in_epoch = loop.epoch_progress.current.started > epoch
    batches = loop.epoch_loop.batch_progress.current.ready if in_epoch else 0
    total = trainer.num_training_batches
    return {
        "epoch": int(epoch),
        "batches": int(batches),
        "epoch_batches": int(total) if total != float("inf") else -1,
    }


def resume_point(state: Mapping[str, int]) -> tuple[int, int]:
    """``(epoch, batches to skip)`` of a resumed run from a :func:`data_position` record.

    A checkpoint written after the last batch of an epoch resumes at the start of the next one.
    """
    epoch, batches, total = int(state["epoch"]), int(state["batches"]), int(state["epoch_batches"])
    if total >= 0 and batches >= total:
        return epoch + 1, 0
    return epoch, batches


def training_rng_state() -> dict[str, Any]:
    """The training process's global torch RNG state (CPU and, when in use, CUDA), for a checkpoint:
    randomness drawn there (e.g. a PGD random start) continues after a resume as if never stopped."""
    state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_training_rng(state: Mapping[str, Any]) -> None:
    """Put back what :func:`training_rng_state` saved (CUDA only on the same number of devices)."""
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
