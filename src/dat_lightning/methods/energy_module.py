"""JEM, JEM++ and EB-JDAT as one LightningModule: CE plus a contrastive energy term on samples of
persistent chains (docs/methods.md, sections 1-3).

They differ only in settings (``conf/method/{jem,jempp,eb_jdat}.yaml``): the chain (SGLD or JEM++'s
PYLD), where fresh chains start (uniform noise or per-class Gaussians), the mode BatchNorm runs in
while sampling, and EB-JDAT's adversarial terms. The step (per iteration, two train batches: ``gen``
unlabelled for ``p(x)``, ``clf`` labelled for ``p(y|x)``):

1. ``x_q``: ``chain.steps`` sampler steps from replay-buffer starts, stored back (:mod:`dat_lightning.replay_buffer`);
2. JEM / JEM++: ``L = w_ce CE(f(x_l), y) + w_px (mean E(x_d) - mean E(x_q))`` (:func:`~dat_lightning.methods.jem.jem_loss`);
3. EB-JDAT adds ``x_adv`` (:func:`~dat_lightning.methods.eb_jdat.adversarial_examples`, eval mode) and its
   two terms (:func:`~dat_lightning.methods.eb_jdat.eb_jdat_loss`).

Training runs as the module's stage one (``stage2_epochs=0``); validation, the divergence guard, EMA,
checkpoints and every evaluation are DAT's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dat_lightning.batchnorm import eval_mode
from dat_lightning.methods.eb_jdat import adversarial_examples, eb_jdat_loss
from dat_lightning.methods.jem import jem_loss
from dat_lightning.methods.jempp import ClassGaussians
from dat_lightning.module import DATModule
from dat_lightning.replay_buffer import CHECKPOINT_KEY, ReplayBuffer
from dat_lightning.samplers import SamplerSpec, run_sampler

log = logging.getLogger(__name__)

BUFFER_INITS = ("uniform", "class_gaussians")
BN_MODES = ("eval", "train")


@dataclass(frozen=True)
class TrainingChain:
    """The chain of each training step: ``sampler`` (sgld or pyld with its option), ``steps`` of
    ``step_size``, and BatchNorm's mode while it runs (JEM: ``eval``; JEM++ and EB-JDAT: ``train``)."""

    sampler: SamplerSpec
    step_size: float
    steps: int
    batchnorm: str = "eval"

    def __post_init__(self) -> None:
        if self.batchnorm not in BN_MODES:
            raise ValueError(f"chain.batchnorm must be one of {BN_MODES}, got {self.batchnorm!r}")
        if self.steps < 1 or not self.step_size > 0:
            raise ValueError(f"the training chain needs steps >= 1 and step_size > 0, got {self.steps}, {self.step_size}")

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> TrainingChain:
        node = dict(node)
        spec = SamplerSpec.of({"name": node.pop("sampler"), "noise": node.pop("noise", None),
                               "clip": node.pop("clip", None)})
        return cls(sampler=spec, step_size=float(node.pop("step_size")), steps=int(node.pop("steps")), **node)


@dataclass(frozen=True)
class AdversarialTerms:
    """EB-JDAT's inner loop (``start``, ``step_size``, ``steps`` in pixel units) and the weight of
    its energy term ``w2`` (the published script: 0.1)."""

    start: float
    step_size: float
    steps: int
    energy_weight: float = 0.1


class EnergyModule(DATModule):
    """A classifier trained as an energy-based model with persistent chains (JEM and successors).

    Args beyond :class:`~dat_lightning.module.DATModule`'s:
        chain: the training chain (:class:`TrainingChain` fields: ``sampler, step_size, steps,
            noise, clip, batchnorm``).
        buffer: ``size``, ``reinit_prob``, ``init`` (``uniform`` or ``class_gaussians``) and
            ``fit_images`` (train images the class Gaussians are fitted on; null: all).
        image_shape: ``(C, H, W)`` of the data.
        px_weight: weight of the energy term (JEM: 1).
        adversarial: EB-JDAT's terms (:class:`AdversarialTerms` fields); null for JEM and JEM++.
    """

    def __init__(self, *, chain: Mapping[str, Any], buffer: Mapping[str, Any], image_shape: tuple[int, int, int],
                 px_weight: float = 1.0, adversarial: Mapping[str, Any] | None = None, **dat: Any) -> None:
        super().__init__(**dat)
        self.chain = TrainingChain.of(chain)
        self.px_weight = float(px_weight)
        self.adversarial = AdversarialTerms(**adversarial) if adversarial is not None else None
        init = buffer.get("init", "uniform")
        if init not in BUFFER_INITS:
            raise ValueError(f"buffer.init must be one of {BUFFER_INITS}, got {init!r}")
        self.buffer_init = init
        self.fit_images = buffer.get("fit_images")
        # Training state saved in the checkpoint next to the weights (on_save_checkpoint), kept in CPU
        # memory (a step moves one batch of starts), and whether it was filled from the Gaussians yet.
        self.buffer = ReplayBuffer(int(buffer["size"]), tuple(image_shape), float(buffer.get("reinit_prob", 0.05)))
        self.buffer_filled = init == "uniform"
        self.gaussians: ClassGaussians | None = None  # refitted at every fit start (not saved)

    # ------------------------------------------------------------------ informative starts
    def on_fit_start(self) -> None:
        if self.buffer_init != "class_gaussians":
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "real_eval_dataset"):
            raise ValueError("model.buffer.init=class_gaussians fits its Gaussians on the datamodule's train images, "
                             "and this fit has no DATDataModule: fit with one, or use model.buffer.init=uniform")
        dataset = datamodule.real_eval_dataset(self.fit_images)
        images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
        self.gaussians = ClassGaussians(torch.stack(images), torch.as_tensor(labels), self.net.num_classes)
        self.gaussians.to(self.device)
        if not self.buffer_filled:  # a resumed run keeps its chains
            self.buffer.fill(self.gaussian_starts(self.buffer.size))
            self.buffer_filled = True
        log.info("Chain starts: class Gaussians fitted on %d train images", len(dataset))

    def gaussian_starts(self, n: int) -> Tensor:
        """``n`` samples of the Gaussians of uniformly drawn classes (JEM++'s re-initialisation)."""
        classes = torch.randint(0, self.net.num_classes, (n,))
        return self.gaussians.sample(classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CHECKPOINT_KEY] = self.buffer.state_dict() | {"filled": self.buffer_filled}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is not None:
            self.buffer.load_state_dict(saved)
            self.buffer_filled = bool(saved["filled"])

    # ------------------------------------------------------------------ the step
    def draw_samples(self, n: int) -> tuple[Tensor, int]:
        """``x_q``: the chain from ``n`` buffer starts, put back in the buffer; and how many
        non-finite samples the buffer refused."""
        fresh = self.gaussian_starts if self.gaussians is not None else None
        x0, slots = self.buffer.draw(n, fresh_starts=fresh)
        mode = eval_mode(self.net) if self.chain.batchnorm == "eval" else contextlib.nullcontext()
        with mode:
            x_q = run_sampler(self.chain.sampler, self.net, x0.to(self.device), None,
                              step_size=self.chain.step_size, steps=self.chain.steps)
        return x_q, self.buffer.store(slots, x_q)

    def divergence_causes(self) -> str:
        lr = self.active_optimizer().param_groups[0]["lr"]
        return (f"(1) the sampler's steps too large (model.chain.step_size={self.chain.step_size}, "
                f"{self.chain.steps} steps of {self.chain.sampler.name}); (2) learning rate too high "
                f"(lr={lr:.3g}: method.optimizer.lr; a longer warm-up: model.lr_warmup_steps="
                f"{self.lr_warmup_steps}); (3) the energy term outgrowing CE, as JEM is known to "
                f"(model.px_weight={self.px_weight}; watch train/loss_px: energies running apart without "
                f"bound end at chance accuracy before any NaN)"
                + (f"; (4) EB-JDAT's adversarial energy term (model.adversarial.energy_weight="
                   f"{self.adversarial.energy_weight})"
                   if self.adversarial is not None else "") + ".\n"
                "Fix the cause and train again (one stage: nothing to keep from before the divergence).")

    def step_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        if self.stage != 1:
            raise RuntimeError(f"{type(self).__name__} trains in one stage: set stage2_epochs=0")
        x_l, y = batch["clf"]
        x_d, _ = batch["gen"]
        x_q, refused = self.draw_samples(len(x_d))
        logits_d, logits_q, logits_l = self.net(x_d), self.net(x_q), self.net(x_l)
        if self.adversarial is None:
            loss, stats = jem_loss(logits_d, logits_q, logits_l, y, self.objective.ce_weight, self.px_weight)
        else:
            a = self.adversarial
            with eval_mode(self.net):
                x_adv = adversarial_examples(self.net, x_l, y, start=a.start, step_size=a.step_size, steps=a.steps)
            loss, stats = eb_jdat_loss(logits_d, logits_q, logits_l, y, self.net(x_adv), a.energy_weight)
        return loss, stats | {"buffer_refused": torch.tensor(float(refused))}
