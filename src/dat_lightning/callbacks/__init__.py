"""Lightning callbacks of DAT training."""

from dat_lightning.callbacks.curriculum import GenStepCurriculum
from dat_lightning.callbacks.ema import WarmupEMA, warmup_ema_decay
from dat_lightning.callbacks.fid import FIDCallback
from dat_lightning.callbacks.freeze_bn import FreezeBatchNorm
from dat_lightning.callbacks.sample_grid import SampleGrid
from dat_lightning.callbacks.stage_checkpoint import StageOneCheckpoint

__all__ = [
    "FIDCallback",
    "FreezeBatchNorm",
    "GenStepCurriculum",
    "SampleGrid",
    "StageOneCheckpoint",
    "WarmupEMA",
    "warmup_ema_decay",
]
