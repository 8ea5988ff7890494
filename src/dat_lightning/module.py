"""DATModule: the LightningModule that orchestrates both stages of Dual Adversarial Training.

The maths lives in pure functions and one objective (:mod:`dat_lightning.losses`); this module
only wires it to batches, optimizers, the divergence guard and logs. Optimization is manual
because one step runs inner loops (attack, chain) that must not touch parameter gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from dat_lightning.attacks import PGDSettings, from_config, pgd_attack
from dat_lightning.batchnorm import broadcast_batchnorm_buffers, has_training_batchnorm
from dat_lightning.checkpoints import check_fits
from dat_lightning.checkpoints.loading import load_weights
from dat_lightning.data.order import restore_training_rng, training_rng_state
from dat_lightning.divergence import (
    DivergenceGuard,
    likely_causes,
    restore_running_stats,
    snapshot_running_stats,
)
from dat_lightning.energy import marginal_energy
from dat_lightning.fused import fusion_blocker
from dat_lightning.losses import DATObjective
from dat_lightning.sampling import ChainSettings
from dat_lightning.warmup import linear_warmup_factor, scaled_lr

log = logging.getLogger(__name__)

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class DATModule(LightningModule):
    """Dual Adversarial Training of one classifier ``net`` (images in [0, 1] -> logits).

    Args:
        net: the classifier (a :class:`~dat_lightning.models.Classifier`).
        clf_attack: discriminative PGD of training (:class:`~dat_lightning.attacks.PGDSettings`
            fields: ``norm, eps, step_size, steps[, random_init]``).
        gen_attack: the generative chain (:class:`~dat_lightning.sampling.ChainSettings` fields:
            ``step_size[, conditional]``); its length T is ``self.gen_steps``, which the curriculum
            callback (:class:`~dat_lightning.callbacks.GenStepCurriculum`) owns and sets.
        val_attack: PGD used for robust accuracy in validation (defaults to ``clf_attack``).
        optimizer_stage1/optimizer_stage2: partial optimizers taking ``params``.
        scheduler_stage1/scheduler_stage2: partial LR schedulers taking ``optimizer``, stepped
            once per epoch of their stage; None keeps the LR constant.
        lr_warmup_steps: the run's first optimizer steps scale the scheduled LR linearly from 0
            (JEM, JEM++ and EB-JDAT warm up over 1000; :mod:`dat_lightning.warmup`); 0: none.
        stage2_start_epoch: the epoch at which stage two starts (0 needs ``init_ckpt``).
        init_ckpt: stage-one weights (training checkpoint or plain state dict) to start from.
        init_ckpt_ema: take the EMA weights of a training checkpoint (if it has them).
        init_ckpt_format: layout of ``init_ckpt``: ``auto``, ``dat`` or a public robust model's
            (``robustbench``, ``madrylab``, ``ratio``, ``revisiting_at``; see
            :mod:`dat_lightning.checkpoints.foreign`).
        ce_weight/bce_weight: weights of L_AT-CE and L_BCE in the stage-two loss.
        fused: run the stage-two attack and chain as one batch per inner step and the three loss
            forwards as one (:mod:`dat_lightning.fused`); same results, fewer larger passes. Used
            only when the network treats samples independently; otherwise the separate passes
            run and the reason is logged once.
        compile: ``torch.compile`` the backbone in place (state-dict keys unchanged).
        compile_kwargs: arguments of ``torch.compile`` (``backend``, ``mode``, ``dynamic`` ...).
        max_bad_steps: stop with an error after this many consecutive skipped (non-finite) steps
            (:mod:`dat_lightning.divergence`).
        max_abs_loss: a finite loss beyond this magnitude counts as a bad step too (a runaway
            energy); None: no bound.
    """

    def __init__(
        self,
        net: nn.Module,
        clf_attack: Mapping[str, Any],
        gen_attack: Mapping[str, Any],
        optimizer_stage1: OptimizerFactory,
        optimizer_stage2: OptimizerFactory,
        scheduler_stage1: SchedulerFactory | None = None,
        scheduler_stage2: SchedulerFactory | None = None,
        val_attack: Mapping[str, Any] | None = None,
        stage2_start_epoch: int = 0,
        init_ckpt: str | None = None,
        init_ckpt_ema: bool = True,
        ce_weight: float = 1.0,
        bce_weight: float = 1.0,
        init_ckpt_format: str = "auto",
        fused: bool = True,
        compile: bool = False,
        compile_kwargs: Mapping[str, Any] | None = None,
        max_bad_steps: int = 10,
        max_abs_loss: float | None = 1e3,
        lr_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = net
        self.objective = DATObjective(
            attack=from_config(PGDSettings, "clf_attack", clf_attack),
            chain=from_config(ChainSettings, "gen_attack", gen_attack),
            ce_weight=float(ce_weight), bce_weight=float(bce_weight))
        self.val_attack = from_config(PGDSettings, "val_attack", val_attack or clf_attack)
        if stage2_start_epoch < 0:
            raise ValueError(f"stage2_start_epoch must be >= 0, got {stage2_start_epoch}")
        if stage2_start_epoch == 0 and init_ckpt is None:
            raise ValueError(
                "stage two was asked for from the first epoch with no stage-one model: set "
                "stage1_epochs > 0 to train stage one first, or init_ckpt=PATH to start from a "
                "stage-one (robust) checkpoint."
            )
        self.optimizer_stage1 = optimizer_stage1
        self.optimizer_stage2 = optimizer_stage2
        self.scheduler_stage1 = scheduler_stage1
        self.scheduler_stage2 = scheduler_stage2
        self.lr_warmup_steps = int(lr_warmup_steps)
        linear_warmup_factor(0, self.lr_warmup_steps)  # a negative warm-up fails here, not at step one
        self.stage2_start_epoch = stage2_start_epoch
        self.gen_steps: int | None = None  # the chain length T, set by the curriculum callback
        self.divergence = DivergenceGuard(max_bad_steps, max_abs_loss)
        self.experiment_config: dict[str, Any] | None = None
        num_classes = getattr(net, "num_classes", None)
        self.val_acc_clean = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_acc_robust = MulticlassAccuracy(num_classes=num_classes, average="micro")
        if init_ckpt is not None:
            load_weights(self.net, init_ckpt, format=init_ckpt_format, ema=init_ckpt_ema)
        self.fused = fused
        self._fusion_refusal_logged = False
        if compile:
            # In place (nn.Module.compile): parameter names and checkpoints stay the same, and
            # deep copies (the EMA model) run eagerly on their own weights.
            getattr(self.net, "backbone", self.net).compile(**dict(compile_kwargs or {}))

    # ------------------------------------------------------------------ stages
    @property
    def stage(self) -> int:
        """1 (adversarial training) before ``stage2_start_epoch``, 2 (DAT) from then on."""
        return 2 if self.current_epoch >= self.stage2_start_epoch else 1

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    # ------------------------------------------------------------------ training
    def stage_two_chain_steps(self) -> int:
        """T for a stage-two step, once it is known that the step can run as the paper's: every
        BatchNorm frozen, and T set by the curriculum callback."""
        if has_training_batchnorm(self.net):
            raise RuntimeError(
                "stage two runs with BatchNorm in train mode; add the FreezeBatchNorm callback "
                "(callbacks.freeze_bn in the configs)."
            )
        if self.gen_steps is None:
            raise RuntimeError(
                "stage two needs the chain length T, which the GenStepCurriculum callback sets: keep "
                "callbacks.curriculum in the config (it was set to null)."
            )
        return self.gen_steps

    def stage_two_loss(self, x: Tensor, y: Tensor, x_hat: Tensor, y_hat: Tensor,
                       x0: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective's stage two on one step's batches, with this module's T and fusion choice."""
        return self.objective.stage_two(self.net, x, y, x_hat, y_hat, x0, chain_steps=self.stage_two_chain_steps(),
                                        fused=self.use_fused())

    def use_fused(self) -> bool:
        """Whether this stage-two step runs fused passes: asked for, and every layer is per-sample.

        A refusal is logged once, with its reason (the unfused passes give the paper's results).
        """
        if not self.fused:
            return False
        reason = fusion_blocker(self.net)
        if reason is not None and not self._fusion_refusal_logged:
            self._fusion_refusal_logged = True
            log.warning("model.fused=true but the stage-two passes run unfused: %s.", reason)
        return reason is None

    def step_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one training step and what it logs: the method's objective. DAT: adversarial
        training in stage one, Eq. 12 in stage two; the other methods (:mod:`dat_lightning.methods`)
        override this and nothing else of the step."""
        x, y = batch["clf"]
        if self.stage == 1:
            return self.objective.stage_one(self.net, x, y)
        x_hat, y_hat = batch["gen"]
        return self.stage_two_loss(x, y, x_hat, y_hat, batch["ood"])

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, Tensor]:
        x, _ = batch["clf"]
        running_stats = snapshot_running_stats(self.net)  # restored if this step is skipped
        loss, stats = self.step_loss(batch)
        optimizer = self.active_optimizer()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.divergence.step_ok(loss, self.net, self.trainer.strategy):
            # global_step counts the optimizer steps taken before this one (skipped steps do not count)
            warmup = linear_warmup_factor(self.trainer.global_step, self.lr_warmup_steps)
            stats["lr"] = torch.tensor(float(optimizer.param_groups[0]["lr"]) * warmup)
            with scaled_lr(optimizer, warmup):
                optimizer.step()
        else:
            # Skipped: no optimizer step (so no EMA update either: it follows the step count),
            # no "auc" (so no curriculum update), BatchNorm statistics as before the step.
            restore_running_stats(running_stats)
            stats.pop("auc", None)
            self.divergence.report_bad_step(self, stats | {"loss": loss.detach()}, batch_idx)
        if self.stage == 1:
            # Under DDP every rank updated its BatchNorm statistics on its own shard; take rank 0's,
            # as DDP's buffer broadcast would (off in manual optimization), so that all ranks
            # validate with, and stage two freezes, the same statistics.
            broadcast_batchnorm_buffers(self.net, src=0)
        stats |= {"loss": loss.detach(), "stage": torch.tensor(float(self.stage))}
        stats["skipped_steps"] = torch.tensor(float(self.divergence.total))
        if self.gen_steps is not None:
            stats["gen_steps"] = torch.tensor(float(self.gen_steps))
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, on_epoch=False,
                      batch_size=len(x))
        # the training accuracy: on adversarial examples where the method makes them
        accuracy = "acc_adv" if "acc_adv" in stats else "acc"
        self.log(f"train/{accuracy}_epoch", stats[accuracy], on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=len(x))
        # the progress bar says which stage runs and, in stage two, the chain length T
        self.log("stage", float(self.stage), prog_bar=True, logger=False, batch_size=len(x))
        if self.stage == 2:
            self.log("T", float(self.gen_steps), prog_bar=True, logger=False, batch_size=len(x))
        return stats

    def divergence_causes(self) -> str:
        """What the divergence error names as likely causes, with this run's values."""
        return likely_causes(self)

    def active_optimizer(self) -> Any:
        optimizers = self.optimizers()
        if not isinstance(optimizers, list):
            return optimizers
        return optimizers[self.stage - 1]

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        listed = schedulers if isinstance(schedulers, list) else [schedulers]
        by_stage = dict(zip(self._scheduler_stages, listed, strict=True))
        if self.stage in by_stage:
            by_stage[self.stage].step()

    def configure_optimizers(self) -> Any:
        optimizers, schedulers, self._scheduler_stages = [], [], []
        for stage, (make_opt, make_sched) in enumerate(
            [(self.optimizer_stage1, self.scheduler_stage1), (self.optimizer_stage2, self.scheduler_stage2)], 1
        ):
            opt = make_opt(params=self.net.parameters())
            optimizers.append(opt)
            if make_sched is not None:
                schedulers.append(make_sched(optimizer=opt))
                self._scheduler_stages.append(stage)
        return optimizers, schedulers

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "robust validation needs gradients but the trainer runs evaluation in inference mode: "
                "set trainer.inference_mode=false."
            )
        x, y = batch
        logits = self.net(x)
        x_adv = pgd_attack(self.net, x, y, self.val_attack)
        with torch.no_grad():
            logits_adv = self.net(x_adv)
        self.val_acc_clean(logits, y)
        self.val_acc_robust(logits_adv, y)
        self.log("val/acc_clean", self.val_acc_clean, prog_bar=True, batch_size=len(x))
        self.log("val/acc_robust", self.val_acc_robust, prog_bar=True, batch_size=len(x))
        self.log("val/energy", marginal_energy(logits).mean(), batch_size=len(x))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers and tensors only (no OmegaConf objects), so weights_only=True loads it.
        if self.experiment_config is not None:
            checkpoint["dat_config"] = self.experiment_config
        checkpoint["dat_divergence"] = self.divergence.state_dict()
        checkpoint["dat_rng"] = training_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning loads the weights right after this hook; a mismatch would surface as a bare
        # RuntimeError from load_state_dict, so it is reported here the way init_ckpt reports it.
        source = f"ckpt_path={self._trainer.ckpt_path if self._trainer is not None else 'the checkpoint'}"
        check_fits(self.state_dict(), checkpoint.get("state_dict", {}), source)
        self.divergence.load_state_dict(checkpoint.get("dat_divergence", {}))
        restore_training_rng(checkpoint.get("dat_rng", {}))
