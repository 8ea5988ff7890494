"""The PGD-step curriculum as a callback: it owns the chain length T, its settings and its state."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from dat_lightning.callbacks.protocol import staged
from dat_lightning.curriculum import CurriculumState, update, window_length


class GenStepCurriculum(Callback):
    """Grow the generative chain length T by the AUC rule (``docs/algorithm.md``, "Curriculum").

    The one owner of T: it checks the settings, starts T at ``start_steps``, writes it to the
    module (``gen_steps``) at the start of training and after every stage-two step, and
    checkpoints it with the AUC window. After each step it reads the batch AUC from the training
    step's output and averages it over ranks, so every rank takes the same decision.

    Args:
        start_steps: T at the start of stage two (0: the seeds themselves).
        max_steps: the longest chain; T stays there once reached.
        auc_threshold: the window's mean AUC at which T grows by one.
        min_imgs_per_threshold: images (over all ranks) the window must cover before a decision.
    """

    def __init__(self, start_steps: int = 0, max_steps: int = 50, auc_threshold: float = 0.8,
                 min_imgs_per_threshold: int = 1000) -> None:
        if not 0 <= int(start_steps) <= int(max_steps):
            raise ValueError(f"callbacks.curriculum needs 0 <= start_steps <= max_steps, got start_steps="
                             f"{start_steps}, max_steps={max_steps}")
        if not 0.0 <= float(auc_threshold) <= 1.0:
            raise ValueError(f"callbacks.curriculum.auc_threshold must be in [0, 1], got {auc_threshold}")
        if int(min_imgs_per_threshold) < 1:
            raise ValueError(f"callbacks.curriculum.min_imgs_per_threshold must be >= 1, got {min_imgs_per_threshold}")
        self.max_steps = int(max_steps)
        self.auc_threshold = float(auc_threshold)
        self.min_imgs_per_threshold = int(min_imgs_per_threshold)
        self.state = CurriculumState(steps=int(start_steps))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        staged(pl_module).gen_steps = self.state.steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict) or "auc" not in outputs:
            return
        # A copy: DDP reduces in place, and the step's own (logged) AUC must stay this rank's.
        auc = trainer.strategy.reduce(outputs["auc"].detach().clone().to(pl_module.device), reduce_op="mean")
        global_batch = len(batch["gen"][0]) * trainer.world_size
        before = self.state.steps
        self.state = update(
            self.state, float(auc), window=window_length(self.min_imgs_per_threshold, global_batch),
            auc_threshold=self.auc_threshold, max_steps=self.max_steps,
        )
        module = staged(pl_module)
        module.gen_steps = self.state.steps
        if self.state.steps != before:
            steps_in = (trainer.current_epoch - module.stage2_start_epoch) * trainer.num_training_batches + batch_idx + 1
            rank_zero_info(f"Curriculum: T {before} -> {self.state.steps} after stage-two step {steps_in} "
                           f"(global step {trainer.global_step}); the cap is {self.max_steps}.")

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.state.steps, "window": torch.tensor(self.state.window, dtype=torch.float64)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        window = tuple(float(v) for v in torch.as_tensor(state_dict["window"]).tolist())
        self.state = CurriculumState(steps=int(state_dict["steps"]), window=window)
