"""What makes the training data reproducible across an interruption.

Two things decide which pixels a step sees: the order of the indices (a pure function of
``(seed, stream, epoch)``, see :class:`~dat_lightning.data.datamodule.SeededRandomSampler`) and
the random augmentation of each image. The second normally comes from a worker's RNG, whose
state is lost when a run stops. Here every item carries its own augmentation seed, drawn with
the order, so item ``k`` of epoch ``e`` is augmented the same way in a resumed run, with any
number of workers. On resume mid-epoch the samplers drop the items the interrupted run already
consumed (``DATDataModule.state_dict`` records how many batches that was).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset


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
