"""Every method of conf/method trains end to end on the default with the default callbacks, its
step is its loss on the right batches, it stops cleanly when it diverges, and its checkpoints sample
with its own sampler (issue 19)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

from dat_lightning.attacks import pgd_attack, pgd_maximize
from dat_lightning.batchnorm import eval_mode
from dat_lightning.callbacks import FIDCallback, SampleGrid
from dat_lightning.config import CONFIG_DIR
from dat_lightning.divergence import DivergenceError
from dat_lightning.methods.eb_jdat import adversarial_examples
from dat_lightning.sgld import sgld_sample
from helpers import fit_tiny, tiny_module

# A small buffer, and class Gaussians fitted on 300 images: seconds instead of a minute.
SMALL_BUFFER = ("model.buffer.size=100", "model.buffer.fit_images=300")
MODULES = {"at": "DATModule", "jem": "EnergyModule", "jempp": "EnergyModule", "eb_jdat": "EnergyModule",
           "ratio": "RatioModule"}
SAMPLERS = {"at": "pgd", "jem": "sgld", "jempp": "pyld", "eb_jdat": "pyld", "ratio": "pgd"}


def method_overrides(method: str) -> list[str]:
    return [f"method={method}", "stage1_epochs=2", *(SMALL_BUFFER if MODULES[method] == "EnergyModule" else ())]


@pytest.mark.parametrize("method", list(MODULES))
def test_every_method_trains_end_to_end_with_the_default_callbacks(method, tmp_path):
    _, _, module, trainer = fit_tiny(tmp_path, method_overrides(method))
    assert type(module).__name__ == MODULES[method]
    assert trainer.global_step == 6 and module.divergence.total == 0
    assert trainer.callback_metrics["train/stage"] == 1  # every step (the last one included) in stage one
    for cb in trainer.callbacks:
        if isinstance(cb, SampleGrid | FIDCallback):
            assert cb.sampler.name == SAMPLERS[method]
    # FID ran in this one-stage run (it keeps the best-FID model), and the grid was drawn.
    assert (tmp_path / "checkpoints" / "best-fid.ckpt").is_file()
    assert next(tmp_path.rglob("samples/final.png")).stat().st_size > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["dat_config"]["method"]["name"] == method
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    if MODULES[method] == "EnergyModule":  # the chains are training state, not weights to average
        assert not any(key.startswith("buffer") for key in ckpt["state_dict"])
        stored = ckpt["dat_replay_buffer"]
        assert stored["images"].shape == (100, 1, 28, 28) and stored["filled"]
        assert stored["images"].isfinite().all()


def plain_batch(seed: int = 0, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    x_l, x_d, ood = (torch.rand(n, 1, 28, 28, generator=g) for _ in range(3))
    y = torch.arange(n) % 10
    return {"clf": (x_l, y), "gen": (x_d, y.flip(0)), "ood": ood}


def energy(logits):
    return -torch.logsumexp(logits, 1)


@pytest.mark.parametrize("method", ["jem", "eb_jdat"])
def test_energy_method_step_is_its_loss_on_the_right_batches(method, tmp_path):
    module = tiny_module(tmp_path, f"method={method}", "model.buffer.size=20", "model.buffer.init=uniform")
    module.net.train()
    twin = copy.deepcopy(module)
    batch = plain_batch()
    (x_l, y), (x_d, _) = batch["clf"], batch["gen"]
    torch.manual_seed(0)
    loss, _ = module.step_loss(batch)

    torch.manual_seed(0)
    x0, slots = twin.buffer.draw(len(x_d))
    chain = twin.chain
    if chain.sampler.name == "sgld":  # JEM: BatchNorm in eval mode while sampling
        with eval_mode(twin.net):
            x_q = sgld_sample(twin.net, x0, None, step_size=chain.step_size, steps=chain.steps,
                              noise=chain.sampler.noise)
    else:  # JEM++'s chain, BatchNorm in train mode: p <- clip(p + clip(-a dE/dp, -c, c), 0, 1)
        x_q = x0
        for _ in range(chain.steps):
            x_q = x_q.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(energy(twin.net(x_q)).sum(), x_q)
            x_q = (x_q + (-chain.step_size * g).clamp(-chain.sampler.clip, chain.sampler.clip)).clamp(0, 1)
        x_q = x_q.detach()
    e_d, e_q, logits_l = energy(twin.net(x_d)).mean(), energy(twin.net(x_q)).mean(), twin.net(x_l)
    expected = F.cross_entropy(logits_l, y) + (e_d - e_q)
    if method == "eb_jdat":
        a = twin.adversarial
        with eval_mode(twin.net):
            x_adv = adversarial_examples(twin.net, x_l, y, start=a.start, step_size=a.step_size, steps=a.steps)
        logits_adv = twin.net(x_adv)
        expected = expected + a.energy_weight * (e_d - energy(logits_adv).mean()) + F.cross_entropy(logits_adv, y)
    torch.testing.assert_close(loss, expected)
    once = torch.tensor([(slots == s).sum() == 1 for s in slots])  # a slot drawn twice keeps one of its two
    assert once.sum() >= 3
    torch.testing.assert_close(module.buffer.images[slots[once]], x_q[once])  # the chains went back to their slots


def test_ratio_step_is_ce_on_attacked_data_plus_kl_to_uniform_on_attacked_ood(tmp_path):
    module = tiny_module(tmp_path, "method=ratio")
    module.net.train()
    twin = copy.deepcopy(module)
    batch = plain_batch(1)
    (x, y), ood = batch["clf"], batch["ood"]
    loss, stats = module.step_loss(batch)

    def kl_to_uniform(logits):
        return (-torch.log(torch.tensor(10.0)) - F.log_softmax(logits, 1).mean(1))

    x_adv = pgd_attack(twin.net, x, y, twin.objective.attack)
    o_adv = pgd_maximize(lambda z: kl_to_uniform(twin.net(z)), ood, twin.ood_attack)
    logits = twin.net(torch.cat([x_adv, o_adv]))
    expected = 0.5 * F.cross_entropy(logits[:6], y) + 0.5 * kl_to_uniform(logits[6:]).mean()
    torch.testing.assert_close(loss, expected)
    assert (o_adv - ood).flatten(1).norm(dim=1).max() <= twin.ood_attack.eps + 1e-5
    assert stats["loss_ood"] > 0


def test_a_diverging_jem_run_stops_with_its_own_causes(tmp_path):
    # SGLD noise of 1e38 overflows the chain at its first step: every loss is non-finite.
    with pytest.raises(DivergenceError) as stopped:
        fit_tiny(tmp_path, ["method=jem", *SMALL_BUFFER, "model.chain.noise=1e38", "model.max_bad_steps=2"])
    message = str(stopped.value)
    assert "2 consecutive steps" in message and "model.chain.step_size" in message and "method.optimizer.lr" in message
    assert "model.lr_warmup_steps=1000" in message  # JEM's warm-up, with this run's value


def test_a_runaway_energy_stops_an_eb_jdat_run_before_any_nan(tmp_path):
    # A bound below any real loss: every step "runs away", as the energy of an EB-JDAT run on the
    # CPU default did (|loss| 1e3 at step ~300, 6e7 at the end, the classifier at chance, no NaN).
    with pytest.raises(DivergenceError) as stopped:
        fit_tiny(tmp_path, ["method=eb_jdat", *SMALL_BUFFER, "model.max_abs_loss=1e-3", "model.max_bad_steps=2"])
    message = str(stopped.value)
    assert "2 consecutive steps had a non-finite loss or gradient or a loss beyond +-0.001 (model.max_abs_loss)" in message
    assert "model.px_weight" in message  # the energy methods' own causes


class BufferAtStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.images = pl_module.buffer.images.clone()


def test_resumed_jempp_run_continues_its_chains(tmp_path):
    fit_tiny(tmp_path, ["method=jempp", "stage1_epochs=1", *SMALL_BUFFER])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["dat_replay_buffer"]["images"]
    seen = BufferAtStart()
    fit_tiny(tmp_path, ["method=jempp", "stage1_epochs=2", *SMALL_BUFFER], callbacks=[seen],
             ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    assert torch.equal(seen.images, saved)  # not refilled from the Gaussians


def test_a_checkpoint_samples_with_its_methods_sampler_and_seeds_unless_told_otherwise(tmp_path):
    from dat_lightning.cli.sample import run

    fit_tiny(tmp_path / "jem", ["method=jem", "stage1_epochs=1", *SMALL_BUFFER, "callbacks.fid=null"])
    ckpt = tmp_path / "jem" / "checkpoints" / "last.ckpt"
    reports = {}
    for name, extra in (("own", []), ("pgd", ["sampling.sampler=pgd", "sampling.step_size=0.5", "sampling.seeds=ood"]),
                        ("buffer_as_is", ["sampling.steps=0", "sampling.seed_offset=95"])):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("sample", overrides=[f"ckpt={ckpt}", "sampling.num_samples=10", "sampling.steps=2",
                                               f"paths.output_dir={tmp_path / name}", *extra])
        reports[name] = run(cfg)["sampling"]
    assert reports["own"]["sampler"] == {"name": "sgld", "noise": 0.005, "clip": 0.5}
    assert reports["own"]["step_size"] == 0.25 and reports["own"]["seeds"] == "buffer"
    assert reports["pgd"]["sampler"]["name"] == "pgd" and reports["pgd"]["step_size"] == 0.5
    assert reports["pgd"]["seeds"] == "ood"
    # T = 0 returns the seeds: the saved buffer's images (offset + i) mod its size, the same as
    # the papers score (their buffer).
    buffer = torch.load(ckpt, weights_only=True)["dat_replay_buffer"]["images"]
    expected = buffer[[(95 + i) % 100 for i in range(10)]].clamp(0, 1)
    drawn = np.load(tmp_path / "buffer_as_is" / "samples.npz")["images"]
    assert np.array_equal(drawn, (expected * 255).round().to(torch.uint8).numpy())


def test_buffer_seeds_from_a_checkpoint_without_a_buffer_say_what_to_use(tmp_path):
    from dat_lightning.generation import stored_buffer

    torch.save({"state_dict": {}}, tmp_path / "dat.ckpt")
    with pytest.raises(ValueError, match="holds no replay buffer.*sampling.seeds=ood"):
        stored_buffer(tmp_path / "dat.ckpt")
    torch.save({"dat_replay_buffer": {"images": torch.full((4, 1, 2, 2), float("nan")), "filled": True}},
               tmp_path / "nan.ckpt")
    with pytest.raises(ValueError, match="non-finite"):
        stored_buffer(tmp_path / "nan.ckpt")


def test_class_gaussian_starts_need_the_datamodule_and_say_so(tmp_path):
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    module = tiny_module(tmp_path, "method=jempp", "model.buffer.size=20")
    batch = plain_batch()
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="model.buffer.init=uniform"):
        trainer.fit(module, train_dataloaders=DataLoader(range(1), batch_size=None, collate_fn=lambda _: batch))
