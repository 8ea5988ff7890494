"""The PGD-step curriculum as a callback: it owns T and checkpoints it with its window."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from dat_lightning.curriculum import CurriculumState, update, window_length


class GenStepCurriculum(Callback):
    """Grow the generative chain length T by the AUC rule of SPEC "PGD-step curriculum".

    After every stage-two step it reads the batch AUC from the training step's output,
    averages it over ranks (so every rank takes the same decision), and updates T on
    ``pl_module.gen_steps``.
    """

    def __init__(
        self, start_steps: int = 0, max_steps: int = 50, auc_threshold: float = 0.8,
        min_imgs_per_threshold: int = 1000,
    ) -> None:
        if not 0 <= start_steps <= max_steps:
            raise ValueError(f"need 0 <= start_steps ({start_steps}) <= max_steps ({max_steps})")
        self.max_steps = max_steps
        self.auc_threshold = auc_threshold
        self.min_imgs_per_threshold = min_imgs_per_threshold
        self.state = CurriculumState(steps=start_steps)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.gen_steps = self.state.steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict) or "auc" not in outputs:
            return
        # A copy: DDP reduces in place, and the step's own (logged) AUC must stay this rank's.
        auc = trainer.strategy.reduce(outputs["auc"].detach().clone().to(pl_module.device), reduce_op="mean")
        global_batch = len(batch["gen"][0]) * trainer.world_size
        self.state = update(
            self.state, float(auc), window=window_length(self.min_imgs_per_threshold, global_batch),
            auc_threshold=self.auc_threshold, max_steps=self.max_steps,
        )
        pl_module.gen_steps = self.state.steps

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.state.steps, "window": torch.tensor(self.state.window, dtype=torch.float64)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        window = tuple(float(v) for v in torch.as_tensor(state_dict["window"]).tolist())
        self.state = CurriculumState(steps=int(state_dict["steps"]), window=window)
