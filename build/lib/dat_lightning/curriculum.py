"""The PGD-step curriculum of the generative chain (``docs/algorithm.md``, "Curriculum").

A pure state machine: ``update`` returns a new state and never mutates its input, so
the rule can be tested on hand traces and checkpointed as a plain dict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np


@dataclass(frozen=True)
class CurriculumState:
    """Current chain length ``steps`` and the AUC values seen since the last increase."""

    steps: int
    window: tuple[float, ...] = field(default_factory=tuple)


def window_length(min_imgs_per_threshold: int, batch_size: int) -> int:
    """``ceil(min_imgs_per_threshold / B)``: batches needed before the rule may act."""
    if batch_size <= 0 or min_imgs_per_threshold <= 0:
        raise ValueError("batch_size and min_imgs_per_threshold must be positive")
    return math.ceil(min_imgs_per_threshold / batch_size)


def update(
    state: CurriculumState, auc: float, *, window: int, auc_threshold: float, max_steps: int
) -> CurriculumState:
    """Record one batch AUC; once ``window`` values are in and their mean reaches the
    threshold, lengthen the chain by one step (capped at ``max_steps``) and restart the window.

    A full window whose mean is below the threshold slides (oldest value dropped), so the
    decision always looks at the last ``window`` batches.
    """
    if state.steps >= max_steps:
        return CurriculumState(steps=max_steps)
    values = (*state.window, float(auc))[-window:]
    # numpy's mean, as the authors' loop: a plain sum / n of eight 0.8s is 0.7999999999999999,
    # which would miss a threshold of 0.8 that their rule meets
    if len(values) == window and float(np.mean(values)) >= auc_threshold:
        return CurriculumState(steps=min(state.steps + 1, max_steps))
    return replace(state, window=values)
