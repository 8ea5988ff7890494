"""Divergence guard: skip training steps whose loss or gradients are not finite, or whose loss has
run away (``|loss| > max_abs_loss``).

A non-finite step would write NaN into the weights, the EMA copy and the curriculum's AUC
window, and every later step would inherit it. The guard lets the module skip such a step
entirely (no optimizer step, hence no EMA update, which follows the optimizer's step count; no
curriculum update; BatchNorm running statistics restored), counts it, and stops training with a
:class:`DivergenceError` after ``max_consecutive`` bad steps in a row, naming the last good
checkpoint and the usual causes.

A runaway loss is the other way a run dies: an energy-based objective (JEM's, EB-JDAT's) can drive
the energies of real and sampled images apart without bound, so the loss reaches 1e5 while staying
finite and the classifier falls to chance (an EB-JDAT run on the CPU default: |loss| 1e3 at step
~300, val accuracy 9% one epoch later, never a NaN). Energies of a classifier, -logsumexp of its
logits, are tens at most; a loss beyond ``max_abs_loss`` (1e3 by default) is counted as a bad step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from dat_lightning.batchnorm import batchnorm_layers, has_training_batchnorm


class DivergenceError(RuntimeError):
    """Training produced too many non-finite (or runaway) steps in a row."""


def is_finite_step(loss: Tensor, parameters: Iterable[nn.Parameter] = (), max_abs_loss: float | None = None) -> bool:
    """True when ``loss`` and every parameter gradient are finite (and ``|loss| <= max_abs_loss``).

    One reduction (the max-abs norm over all gradients, which is NaN or inf exactly when some
    entry is) and one device sync; the max-abs norm cannot overflow where an L2 norm could.
    """
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    ok = torch.isfinite(loss.detach()).all()
    if max_abs_loss is not None:
        ok = ok & (loss.detach().abs() <= max_abs_loss).all()
    if grads:
        if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6: fused
            max_abs = torch.nn.utils.get_total_norm(grads, norm_type=math.inf)
        else:
            max_abs = torch.stack([g.abs().amax() for g in grads]).amax()
        ok = ok & torch.isfinite(max_abs)
    return bool(ok)


def snapshot_running_stats(module: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Copies of the running statistics of every BatchNorm in train mode (stage one).

    A forward pass on a bad batch writes NaN into them even if the step is then skipped; in
    stage two they are frozen and the list is empty (no cost).
    """
    return [
        (buf, buf.detach().clone())
        for bn in batchnorm_layers(module)
        if bn.training
        for buf in bn.buffers(recurse=False)
    ]


def restore_running_stats(snapshot: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for buf, saved in snapshot:
            buf.copy_(saved)


def latest_checkpoint(trainer: Any) -> Path | None:
    """The most recently written ``*.ckpt`` in the folders the trainer's checkpoint callbacks use."""
    folders = {Path(trainer.default_root_dir) / "checkpoints"}
    for cb in trainer.callbacks:
        for attr in ("dirpath", "path"):
            value = getattr(cb, attr, None)
            if value:
                folders.add(Path(value) if attr == "dirpath" else Path(value).parent)
    files = [f for d in folders if d.is_dir() for f in d.glob("*.ckpt")]
    return max(files, key=lambda f: f.stat().st_mtime) if files else None


def likely_causes(pl_module: Any) -> str:
    """The usual reasons a DAT run diverges, with this run's values (``DATModule.divergence_causes``;
    the other methods name their own)."""
    bn = "some are in train mode!" if has_training_batchnorm(pl_module.net) else "frozen now"
    lr = pl_module.active_optimizer().param_groups[0]["lr"]
    return (
        f"(1) BatchNorm not frozen in stage two (keep callbacks.freeze_bn; BatchNorm: {bn}); "
        f"(2) generative chain step too large (model.gen_attack.step_size="
        f"{pl_module.objective.chain.step_size}, chain length T={pl_module.gen_steps}); "
        f"(3) learning rate too high (stage {pl_module.stage} lr={lr:.3g}: "
        f"model.optimizer_stage{pl_module.stage}.lr).\n"
        "Fix the cause, then start stage two again from the checkpoint's weights: "
        "init_ckpt=<last good checkpoint> stage1_epochs=0 (ckpt_path=<it> would also restore "
        "the optimizer state, learning rate included)."
    )


class DivergenceGuard:
    """Counts non-finite steps; raises :class:`DivergenceError` after ``max_consecutive`` in a row.

    Under DDP the decision is taken jointly (a step is skipped on every rank if it is bad on one),
    so the replicas never drift apart.
    """

    def __init__(self, max_consecutive: int = 10, max_abs_loss: float | None = 1e3) -> None:
        if int(max_consecutive) < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_consecutive}")
        if max_abs_loss is not None and not float(max_abs_loss) > 0:
            raise ValueError(f"max_abs_loss must be > 0 (or null: no bound), got {max_abs_loss}")
        self.max_consecutive = int(max_consecutive)
        self.max_abs_loss = None if max_abs_loss is None else float(max_abs_loss)
        self.consecutive = 0
        self.total = 0

    def step_ok(self, loss: Tensor, module: nn.Module, strategy: Any = None) -> bool:
        """Whether the step may be applied; records the outcome.

        Under fp16 loss scaling (a GradScaler) inf gradients are expected now and then: the
        scaler skips those steps itself and lowers the scale, so only the loss is checked here.
        """
        precision = getattr(strategy, "precision_plugin", None)
        scaled = getattr(precision, "scaler", None) is not None
        ok = is_finite_step(loss, () if scaled else module.parameters(), self.max_abs_loss)
        if strategy is not None:
            ok = bool(strategy.reduce_boolean_decision(ok, all=True))
        if ok:
            self.consecutive = 0
        else:
            self.consecutive += 1
            self.total += 1
        return ok

    def report_bad_step(self, pl_module: Any, stats: Mapping[str, Tensor], batch_idx: int) -> None:
        """Warn about a skipped step; raise :class:`DivergenceError` once too many came in a row.

        The step is named by its batch: the global step counts optimizer steps, which a skipped
        step does not make, so it would name every skipped step alike.
        """
        trainer, stage = pl_module.trainer, pl_module.stage
        values = ", ".join(f"{k}={float(v):.4g}" for k, v in stats.items() if torch.is_tensor(v) and v.numel() == 1)
        where = (f"batch {batch_idx} of epoch {trainer.current_epoch}, training batch "
                 f"{trainer.fit_loop.total_batch_idx + 1} of the run, {trainer.global_step} optimizer "
                 f"steps so far, stage {stage}")
        if self.consecutive < self.max_consecutive:
            rank_zero_warn(
                f"Skipped a training step with a {self.what_is_bad} ({where}; {values}): "
                f"{self.consecutive} in a row, {self.total} in all. No weight, EMA or curriculum update."
            )
            return
        ckpt = latest_checkpoint(trainer)
        resume = f"'{ckpt}'" if ckpt else "none (no checkpoint was written before the divergence)"
        raise DivergenceError(
            f"training diverged: {self.consecutive} consecutive steps had a {self.what_is_bad} "
            f"(up to {where}; last values: {values}). They were skipped, then training stopped "
            f"(model.max_bad_steps={self.max_consecutive}). Last good checkpoint: {resume}.\n"
            f"Likely causes: {pl_module.divergence_causes()}"
        )

    @property
    def what_is_bad(self) -> str:
        bound = "" if self.max_abs_loss is None else f" or a loss beyond +-{self.max_abs_loss:g} (model.max_abs_loss)"
        return f"non-finite loss or gradient{bound}"

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
