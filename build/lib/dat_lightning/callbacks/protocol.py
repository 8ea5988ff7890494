"""What the DAT callbacks read from (and the curriculum writes to) the module they train."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn


@runtime_checkable
class StagedModule(Protocol):
    """A two-stage DAT module, as :class:`~dat_lightning.module.DATModule` is.

    ``net``: the classifier; ``stage``: 1 (adversarial training) or 2 (DAT) for the current epoch;
    ``stage2_start_epoch``: the first stage-two epoch; ``gen_steps``: the chain length T, which
    :class:`~dat_lightning.callbacks.GenStepCurriculum` owns and sets (None until it does).
    """

    net: nn.Module
    stage2_start_epoch: int
    gen_steps: int | None

    @property
    def stage(self) -> int: ...


def staged(pl_module: object) -> StagedModule:
    """``pl_module`` if it is a :class:`StagedModule`, else a TypeError saying what is missing."""
    if not isinstance(pl_module, StagedModule):
        missing = [a for a in ("net", "stage", "stage2_start_epoch", "gen_steps") if not hasattr(pl_module, a)]
        raise TypeError(f"the DAT callbacks train a two-stage module; {type(pl_module).__name__} has no "
                        f"{', '.join(missing)}")
    return pl_module
