"""``model.compile=true``: the backbone is compiled once per mode, not once per step.

Dynamo guards on what changes between calls (input ``requires_grad``, grad mode, each module's
``training`` flag, shapes). DAT's attacks take input gradients without touching ``requires_grad``
or train/eval on the network, so a run compiles a fixed handful of graphs (stage one, stage two's
inner loop and loss forward, evaluation) and then reuses them every step.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from lightning.pytorch import Callback
from torch._dynamo.utils import counters

from dat_lightning.callbacks.ema import evaluation_net
from dat_lightning.cli.train import build
from dat_lightning.models import build_classifier
from helpers import NO_FID, compose_config, save_fresh_state


class GraphCounter(Callback):
    """Dynamo's count of compiled graphs after every training step, per epoch."""

    def __init__(self) -> None:
        self.per_epoch: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.per_epoch.setdefault(trainer.current_epoch, []).append(counters["stats"]["unique_graphs"])


def compiled_run(tmp_path, backend: str, stage1_epochs: int):
    """Stage one for ``stage1_epochs`` epochs (0: from a stage-one checkpoint), two stage-two epochs."""
    torch._dynamo.reset()
    counters.clear()
    init = []
    if stage1_epochs == 0:
        net = build_classifier("wrn10_1", num_classes=10, in_chans=1, mean=[0.286], std=[0.353])
        init = [f"init_ckpt={save_fresh_state(net, tmp_path / 'stage1.pt')}"]
    cfg = compose_config(tmp_path, [
        "model.compile=true", f"+model.compile_kwargs.backend={backend}", *init,
        f"stage1_epochs={stage1_epochs}", "stage2_epochs=2", "trainer.limit_train_batches=3",
        "callbacks.curriculum.start_steps=0", "callbacks.curriculum.max_steps=5",
        "callbacks.curriculum.auc_threshold=0.0", "callbacks.curriculum.min_imgs_per_threshold=1",
        "callbacks.sample_grid=null", *NO_FID,
    ])
    datamodule, module, trainer = build(cfg)
    graphs = GraphCounter()
    trainer.callbacks.append(graphs)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer, graphs


def check_no_steady_state_recompiles(module, trainer, graphs) -> None:
    last = graphs.per_epoch[max(graphs.per_epoch)]
    # every step of the last epoch (T still growing: 3, 4, 5 chain steps) reuses compiled graphs
    assert len(last) == 3 and len(set(last)) == 1, graphs.per_epoch
    print("compiled graphs after each step, per epoch:", graphs.per_epoch)
    # the whole run (stage one, stage two, validation) fits in the recompile limit, no eager fallback
    assert 0 < last[-1] <= torch._dynamo.config.recompile_limit
    assert counters["frames"]["total"] == counters["frames"]["ok"]
    # compiled in place: checkpoint keys unchanged; the EMA copy runs eagerly on its own weights
    assert not any("_orig_mod" in k for k in module.state_dict())
    assert module.net.backbone._compiled_call_impl is not None
    assert evaluation_net(trainer, module).backbone._compiled_call_impl is None


def test_compiled_backbone_does_not_recompile_every_step(tmp_path):
    # backend "eager": Dynamo's tracing and guards (which decide recompiles) without code generation
    check_no_steady_state_recompiles(*compiled_run(tmp_path, "eager", stage1_epochs=0))


@pytest.mark.slow
def test_inductor_compiled_training_run(tmp_path):
    # the real backend: C++ code generation on CPU takes minutes
    module, trainer, graphs = compiled_run(tmp_path, "inductor", stage1_epochs=1)
    check_no_steady_state_recompiles(module, trainer, graphs)
    assert all(bool(torch.isfinite(p).all()) for p in module.net.parameters())
