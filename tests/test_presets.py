"""Presets of the authors' released models (issue 17, point 2): ``preset=authors/NAME`` gives
``sample`` and ``evaluate`` the experiment that builds the network, the ``rebm`` layout, the
normalization and the authors' test-time chain; one of them runs end to end on a file in the
authors' layout."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

import dat_lightning.models  # noqa: F401 - registers our backbones with timm
from dat_lightning.checkpoints.loading import load_classifier
from dat_lightning.cli.config_checks import check_overrides
from dat_lightning.config import CONFIG_DIR
from helpers import cli_env, run_cli

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "preset" / "authors").glob("*.yaml"))
EXPERIMENTS = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}


def test_there_is_a_preset_for_every_row_of_the_authors_table():
    table = (CONFIG_DIR.parents[2] / "docs" / "authors_checkpoints.md").read_text()
    assert len(PRESETS) == 16
    for name in PRESETS:
        assert f"preset=authors/{name}" in table, f"docs/authors_checkpoints.md does not list {name}"


@pytest.mark.parametrize("cli", ["sample", "evaluate"])
@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_composes_with_its_experiment_and_the_authors_chain(cli, name):
    raw = yaml.safe_load((CONFIG_DIR / "preset" / "authors" / f"{name}.yaml").read_text())
    cfg = check_overrides(["ckpt=model_bestfid.pth", f"preset=authors/{name}"], cli)
    assert cfg.config == raw["config"] and cfg.config in EXPERIMENTS and cfg.format == "rebm"
    assert (cfg.sampling.steps, cfg.sampling.step_size) == (raw["sampling"]["steps"], raw["sampling"]["step_size"])
    assert ("convnext" in name) == bool(cfg.net_overrides)
    overridden = check_overrides(["ckpt=x", f"preset=authors/{name}", "sampling.steps=3"], cli)
    assert overridden.sampling.steps == 3  # the command line still wins over the preset


def test_net_overrides_reach_the_network(tmp_path):
    net = timm.create_model("wrn10_1", num_classes=10, in_chans=1)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    loaded = load_classifier(tmp_path / "plain.pt", config="fmnist_dat", format="dat",
                             net_overrides={"mean": [0.25], "std": [2.0]})
    assert loaded.mean.flatten().tolist() == [0.25] and loaded.std.flatten().tolist() == [2.0]


def test_a_preset_samples_from_a_file_in_the_authors_layout(tmp_path):
    net = timm.create_model("wrn34_10", num_classes=10)  # bare WideResNet keys, as model_bestfid.pth
    torch.save(net.state_dict(), tmp_path / "model_bestfid.pth")
    result = run_cli([f"ckpt={tmp_path / 'model_bestfid.pth'}", "preset=authors/cifar10_dat_T50",
                      "sampling.seeds=uniform", "sampling.num_samples=4", "sampling.steps=1", "run_name=p"],
                     cwd=tmp_path, env=cli_env(), module="dat_lightning.sample")
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "outputs" / "sample" / "p"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sampling"]["step_size"] == 0.2 and settings["sampling"]["num_samples"] == 4
    assert (out / "grid.png").is_file()  # 4 samples of 10 classes: a grid of the 4 classes drawn
