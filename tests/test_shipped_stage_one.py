"""The stage-one models the package ships (issue 18, point 3): the default's stage two and `make
reproduce`'s (+experiment=fmnist_reproduce) start from their own, ``stage1_epochs=N`` trains stage one
from scratch instead, and the documented command (``make stage1-checkpoint`` =
scripts/make_stage1_checkpoint.sh) makes each again bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.config import WEIGHTS_DIR
from helpers import cli_env, compose_config

SHIPPED = WEIGHTS_DIR / "fmnist_wrn10_stage1.ckpt"
# (config overrides, the shipped stage-one model its stage two starts from)
SHIPPED_MODELS = [pytest.param([], SHIPPED, id="default"),
                  pytest.param(["+experiment=fmnist_reproduce"], WEIGHTS_DIR / "fmnist_wrn10_silu_stage1.ckpt",
                               id="fmnist_reproduce")]
ROOT = Path(__file__).resolve().parents[1]


def network_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network in a training checkpoint's state_dict (its EMA weights when EMA runs)."""
    state = read_checkpoint(path)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


@pytest.mark.parametrize("overrides, path", SHIPPED_MODELS)
def test_the_config_starts_stage_two_from_its_shipped_model(tmp_path, overrides, path):
    cfg = compose_config(tmp_path, overrides, tiny=False)
    assert cfg.stage1_epochs == 0 and cfg.init_ckpt == str(path) and path.is_file()
    module = hydra.utils.instantiate(cfg.model)
    loaded = module.net.state_dict()
    shipped = network_weights(path)
    assert shipped.keys() == loaded.keys() and all(torch.equal(shipped[k], loaded[k]) for k in loaded)
    # made by this very config's stage one: same network, data and stage-one recipe
    made_with = read_checkpoint(path)["dat_config"]
    assert made_with["model"]["net"] == OmegaConf.to_container(cfg.model.net, resolve=True)
    assert made_with["data"]["ood"] == OmegaConf.to_container(cfg.data.ood, resolve=True)
    assert made_with["stage1_epochs"] == 6 and made_with["init_ckpt"] is None  # from scratch


@pytest.mark.parametrize("overrides, expected", [
    (["stage1_epochs=3"], None),  # stage one from scratch, not from the shipped model
    (["stage1_epochs=0", "init_ckpt=/some/robust.ckpt"], "/some/robust.ckpt"),
    (["+experiment=imagenet256_resnet50"], None),  # a public robust model is the user's to name
    (["+experiment=fmnist_reproduce", "stage1_epochs=6"], None),
])
def test_only_a_run_without_stage_one_takes_the_shipped_model(tmp_path, overrides, expected):
    assert compose_config(tmp_path, overrides, tiny=False).init_ckpt == expected


@pytest.mark.slow
@pytest.mark.parametrize("overrides, path", SHIPPED_MODELS)
def test_the_documented_command_makes_the_shipped_model_bit_for_bit(tmp_path, overrides, path):
    out = tmp_path / "stage1.ckpt"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "make_stage1_checkpoint.sh"), str(out),
                             str(tmp_path / "run"), *overrides], cwd=ROOT, env=cli_env(OMP_NUM_THREADS="2"),
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    made, shipped = read_checkpoint(out)["state_dict"], read_checkpoint(path)["state_dict"]
    assert made.keys() == shipped.keys()
    assert [k for k in made if not torch.equal(made[k], shipped[k])] == []
