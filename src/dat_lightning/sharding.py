"""Work shared by the processes of a run (evaluation, sampling, the end-of-training summary).

Work on ``n`` items is cut into fixed chunks of ``size`` items, whatever the number of
processes; chunk ``c`` belongs to rank ``c % world``, and whatever is random in it is seeded by
``c``. Each item's result therefore does not depend on how many processes there are. The parts
come together by :meth:`Shards.collect`: every rank fills the rows it computed into a tensor of
zeros, and one sum over the processes puts every row where a single process would have put it
(adding zeros is exact). Statistics that are sums (FID's feature moments, counts) are summed
directly with :meth:`Shards.sum`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shards:
    """This process's share of the work: ``rank`` of ``world``; ``all_reduce_sum`` sums a tensor
    over all processes (None: a single process) on ``device`` (where the backend wants it)."""

    rank: int = 0
    world: int = 1
    all_reduce_sum: Callable[[Tensor], Tensor] | None = None
    device: torch.device | None = None
    barrier: Callable[[], None] | None = None

    @classmethod
    def of_fabric(cls, fabric) -> Shards:
        """The shares of a launched :class:`lightning.fabric.Fabric`."""
        return cls(rank=fabric.global_rank, world=fabric.world_size, device=fabric.device,
                   all_reduce_sum=(lambda t: fabric.all_reduce(t, reduce_op="sum")) if fabric.world_size > 1 else None,
                   barrier=fabric.barrier)

    @classmethod
    def of_trainer(cls, trainer) -> Shards:
        """The shares of a Lightning Trainer's processes (after ``fit``, e.g. for the summary)."""
        strategy = trainer.strategy
        return cls(rank=trainer.global_rank, world=trainer.world_size, device=strategy.root_device,
                   all_reduce_sum=(lambda t: strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None,
                   barrier=strategy.barrier)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def chunks(self, n: int, size: int) -> list[tuple[int, range]]:
        """``(chunk index, item indices)`` of this rank's chunks of ``0 .. n-1``."""
        if size < 1:
            raise ValueError(f"chunk size must be >= 1, got {size}")
        return [(c, range(c * size, min(n, (c + 1) * size)))
                for c in range(math.ceil(n / size)) if c % self.world == self.rank]

    def sum(self, tensor: Tensor) -> Tensor:
        """``tensor`` summed over all processes (itself, alone), back on the CPU."""
        if self.all_reduce_sum is None:
            return tensor
        return self.all_reduce_sum(tensor.clone().to(self.device)).cpu()

    def collect(self, n: int, parts: Iterable[tuple[range, Tensor]], row_shape: tuple[int, ...] = (),
                dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``(n, *row_shape)`` tensor whose rows the processes computed in parts."""
        full = torch.zeros((n, *row_shape), dtype=dtype)
        for rows, values in parts:
            full[rows.start : rows.stop] = values.to(dtype).cpu()
        if dtype == torch.bool:
            return self.sum(full.to(torch.uint8)).bool()
        return self.sum(full)

    def head(self, parts: Iterable[tuple[range, Tensor]], n: int, row_shape: tuple[int, ...]) -> Tensor:
        """Items ``0 .. n-1`` of a sharded result (e.g. the samples a picture shows), everywhere."""
        first = [(range(r.start, min(r.stop, n)), v[: min(r.stop, n) - r.start]) for r, v in parts if r.start < n]
        return self.collect(n, first, row_shape)

    def wait(self) -> None:
        """All processes meet here (e.g. after rank 0 wrote a cache the others read)."""
        if self.world > 1 and self.barrier is not None:
            self.barrier()
