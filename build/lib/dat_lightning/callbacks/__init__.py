"""Lightning callbacks of DAT training."""

from dat_lightning.callbacks.curriculum import GenStepCurriculum
from dat_lightning.callbacks.ema import WarmupEMA, warmup_ema_decay
from dat_lightning.callbacks.fid import FIDCallback
from dat_lightning.callbacks.freeze_bn import FreezeBatchNorm
from dat_lightning.callbacks.preemption import Preempted, Preemption
from dat_lightning.callbacks.protocol import StagedModule
from dat_lightning.callbacks.sample_grid import SampleGrid
from dat_lightning.callbacks.stage_checkpoint import StageOneCheckpoint

__all__ = [
    "FIDCallback",
    "FreezeBatchNorm",
    "GenStepCurriculum",
    "Preempted",
    "Preemption",
    "SampleGrid",
    "StageOneCheckpoint",
    "StagedModule",
    "WarmupEMA",
    "warmup_ema_decay",
]
