"""load_classifier: training checkpoints and plain state dicts to an eval-mode classifier."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import dat_lightning
from dat_lightning.checkpoints import CheckpointError, read_checkpoint
from dat_lightning.checkpoints.loading import load_run
from dat_lightning.config import CONFIG_DIR


@pytest.fixture(scope="module")
def last_ckpt(tiny_run_dir):
    return tiny_run_dir / "checkpoints" / "last.ckpt"


def test_training_checkpoint_gives_an_eval_mode_classifier_with_the_chosen_weights(last_ckpt):
    ckpt = read_checkpoint(last_ckpt)
    # EMA ran: averaged (state_dict) and raw (current_model_state) weights differ
    assert any(not torch.equal(v, ckpt["current_model_state"][k]) for k, v in ckpt["state_dict"].items())
    for ema, key in ((True, "state_dict"), (False, "current_model_state")):
        net = dat_lightning.load_classifier(last_ckpt, ema=ema)
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        for name, value in net.state_dict().items():
            assert torch.equal(value, ckpt[key][f"net.{name}"]), (ema, name)
    x = torch.rand(3, 1, 28, 28)
    logits = net(x)
    assert logits.shape == (3, 10)
    # input gradients still flow (attacks and sampling need them)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net(x).sum(), x)
    assert grad.abs().sum() > 0


def test_plain_state_dict_needs_its_experiment_config(last_ckpt, tmp_path):
    reference = dat_lightning.load_classifier(last_ckpt)
    plain = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), plain)
    with pytest.raises(CheckpointError, match="config"):
        dat_lightning.load_classifier(plain)
    x = torch.rand(2, 1, 28, 28)
    by_name = dat_lightning.load_classifier(plain, config="fmnist_dat")
    by_dict = dat_lightning.load_classifier(plain, config=read_checkpoint(last_ckpt)["dat_config"])
    assert torch.equal(by_name(x), reference(x)) and torch.equal(by_dict(x), reference(x))
    with pytest.raises(ValueError, match="unknown experiment"):
        dat_lightning.load_classifier(plain, config="no_such_experiment")


def test_wrong_architecture_is_reported(last_ckpt, tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save(dat_lightning.load_classifier(last_ckpt).state_dict(), plain)
    with pytest.raises(CheckpointError, match="does not fit"):
        dat_lightning.load_classifier(plain, config="cifar10_wrn34")


def test_experiment_config_composes_inside_a_running_hydra_app(last_ckpt, tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save(dat_lightning.load_classifier(last_ckpt).state_dict(), plain)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        run = load_run(plain, config="fmnist_dat")
        assert GlobalHydra.instance().is_initialized()  # the app's context is back
        assert compose("train").model.net.name == run.config.model.net.name
    assert run.gen_steps is None and run.config.data.name == "fmnist"
