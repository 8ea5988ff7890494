"""A checkpoint is data: nothing inside a file makes dat-lightning run code (issue 14, point 1).

Each attack below is a config node that runs code when ``hydra.utils.instantiate`` builds it
(checked first: :func:`test_each_attack_runs_code_when_instantiated_naively`): it creates a marker
file. Planted in the config a checkpoint carries (``model.net``, ``data``, ``data.ood``,
``data.val_set``), it must never run, for ``load_classifier``, ``sample``, ``evaluate`` (in process
and as CLIs), ``init_ckpt`` and resuming: the marker never appears, and the loaders refuse with a
message naming the key and the target. Dataset readers named by a stored config cannot be turned
against the user either: CIFAR batch files are unpickled with numpy arrays allowed and nothing else,
a stored config may not download, and a dataset name cannot point a cache file outside the cache.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import hydra
import pytest
import torch

import dat_lightning
from dat_lightning.checkpoints import CheckpointError, read_checkpoint
from dat_lightning.cli import evaluate, sample
from dat_lightning.data.datasets import CorruptImageError, cifar10
from helpers import NO_FID, cli_env, compose_config, fit_tiny, run_cli

ATTACKS = ("builtins.open", "shutil.copyfile", "Path.write_text", "torch.load", "own non-builder")


class _Payload:
    """Unpickling it opens ``marker`` for writing (creates it): code run by a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def attack_node(name: str, marker: Path) -> dict:
    """A config node that creates ``marker`` when instantiated."""
    folder = marker.parent
    if name == "builtins.open":
        return {"_target_": "builtins.open", "_args_": [str(marker), "w"]}
    if name == "shutil.copyfile":
        source = folder / "existing.txt"
        source.write_text("x")
        return {"_target_": "shutil.copyfile", "_args_": [str(source), str(marker)]}
    if name == "Path.write_text":
        return {"_target_": "pathlib.Path.write_text",
                "_args_": [{"_target_": "pathlib.Path", "_args_": [str(marker)]}, "pwned"]}
    if name == "torch.load":  # a second file whose unpickling runs code
        evil = folder / "second_file.pt"
        torch.save(_Payload(marker), evil)
        return {"_target_": "torch.load", "f": str(evil), "weights_only": False}
    if name == "own non-builder":  # this package's own code, but not a builder
        return {"_target_": "dat_lightning.checkpoints.writing.atomic_torch_save",
                "obj": "pwned", "path": str(marker)}
    raise KeyError(name)


def poisoned(clean_ckpt: Path, out: Path, **nodes: dict) -> Path:
    """``clean_ckpt`` with config nodes replaced (``model__net=...`` sets ``model.net``)."""
    ckpt = read_checkpoint(clean_ckpt)
    config = copy.deepcopy(ckpt["dat_config"])
    for key, node in nodes.items():
        *parents, leaf = key.split("__")
        target = config
        for part in parents:
            target = target[part]
        target[leaf] = node
    ckpt["dat_config"] = config
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def clean_ckpt(tiny_run_dir) -> Path:
    return tiny_run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_runs_code_when_instantiated_naively(attack, tmp_path):
    marker = tmp_path / "PWNED"
    hydra.utils.instantiate(attack_node(attack, marker))
    assert marker.exists()  # so the tests below could fail


def _refused(call, marker: Path, key: str) -> str:
    with pytest.raises(CheckpointError) as err:
        call()
    assert not marker.exists()
    message = str(err.value)
    assert f"refused to build `{key}`" in message and "could run code" in message, message
    return message


@pytest.mark.parametrize("attack", ATTACKS)
def test_load_classifier_never_builds_a_stored_target(attack, clean_ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", model__net=attack_node(attack, marker))
    message = _refused(lambda: dat_lightning.load_classifier(path), marker, "model.net._target_")
    assert str(path) in message


def test_network_arguments_that_would_read_or_fetch_weights_are_refused(clean_ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "weights.pt"
    torch.save(_Payload(marker), evil)
    net = read_checkpoint(clean_ckpt)["dat_config"]["model"]["net"]
    for extra, key in (({"checkpoint_path": str(evil)}, "model.net.checkpoint_path"),
                       ({"pretrained_cfg_overlay": {"file": str(evil)}}, "model.net.pretrained_cfg_overlay"),
                       ({"pretrained": True}, "model.net.pretrained"),
                       ({"num_classes": "10"}, "model.net.num_classes"),
                       ({"name": "no_such_model"}, "model.net.name"),
                       ({"act_layer": "builtins.open"}, "model.net.act_layer"),
                       ({"act_layer": ""}, "model.net.act_layer"),
                       ({"act_layer": attack_node("builtins.open", marker)}, "model.net.act_layer")):
        path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", model__net=net | extra)
        _refused(lambda p=path: dat_lightning.load_classifier(p), marker, key)


def test_a_stored_activation_name_builds_that_activation(clean_ckpt, tmp_path):
    """A run trained with ``+model.net.act_layer=silu`` can be loaded again: timm's name, not a path."""
    net = read_checkpoint(clean_ckpt)["dat_config"]["model"]["net"]
    path = poisoned(clean_ckpt, tmp_path / "silu.ckpt", model__net=net | {"act_layer": "silu"})
    activations = {type(m) for m in dat_lightning.load_classifier(path).modules()}
    assert torch.nn.SiLU in activations and torch.nn.ReLU not in activations


def cli_refuses(cli, config_name: str, settings: list[str], place: str, attack: str, clean_ckpt: Path,
                tmp_path: Path) -> None:
    """``cli.run`` on a checkpoint whose config node at ``place`` is ``attack``: refused, no marker."""
    marker = tmp_path / "PWNED"
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", **{place: attack_node(attack, marker)})
    cfg = compose_config(tmp_path / "out", [f"ckpt={path}", *settings], config_name=config_name)
    _refused(lambda: cli.run(cfg), marker, "model.net._target_" if place == "model__net" else place.replace("__", "."))


@pytest.mark.parametrize("place", ["model__net", "data__ood"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_sample_never_builds_a_stored_target(attack, place, clean_ckpt, tmp_path):
    cli_refuses(sample, "sample", ["sampling.num_samples=10", "sampling.seeds=ood"], place, attack, clean_ckpt,
                tmp_path)


@pytest.mark.parametrize("module", [sample, evaluate])
@pytest.mark.parametrize("attack", ATTACKS)
def test_default_seeds_never_build_a_stored_target(attack, module, clean_ckpt, tmp_path):
    # sampling.seeds null (the default) takes the checkpoint's own seed source: a stored node
    name = module.__name__.rsplit(".", 1)[-1]
    cli_refuses(module, name, ["sampling.num_samples=10", *(["metrics=[fid]"] if module is evaluate else [])],
                "sampling__seeds", attack, clean_ckpt, tmp_path)


@pytest.mark.parametrize("place", ["model__net", "data", "data__val_set", "data__ood"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_evaluate_never_builds_a_stored_target(attack, place, clean_ckpt, tmp_path):
    cli_refuses(evaluate, "evaluate", ["metrics=[clean]", "test_size=8"], place, attack, clean_ckpt, tmp_path)


@pytest.mark.parametrize("module", ["dat_lightning.sample", "dat_lightning.evaluate"])
def test_the_clis_refuse_with_one_message(module, clean_ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", model__net=attack_node("builtins.open", marker))
    result = run_cli([f"ckpt={path}"], cwd=tmp_path, module=module)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "error: refused to build `model.net._target_`" in result.stderr and "builtins.open" in result.stderr
    assert not marker.exists()


def test_stored_config_may_not_download_interpolate_or_escape_the_cache(clean_ckpt, tmp_path):
    stored = read_checkpoint(clean_ckpt)["dat_config"]["data"]
    marker = tmp_path / "PWNED"
    cases = {
        "data.val_set.download": {"val_set": stored["val_set"] | {"download": True}},
        "data.val_set.root": {"val_set": stored["val_set"] | {"root": "${oc.env:HOME}"}},
    }
    for key, change in cases.items():
        path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", data=stored | change)
        cfg = compose_config(tmp_path / "out", [f"ckpt={path}", "metrics=[clean]", "test_size=8"],
                             config_name="evaluate")
        _refused(lambda c=cfg: evaluate.run(c), marker, key)
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", data=stored | {"name": "../../outside"})
    cfg = compose_config(tmp_path / "out", [f"ckpt={path}", "metrics=[clean]", "test_size=8"],
                         config_name="evaluate")
    with pytest.raises(Exception, match="data.name must be"):  # raised inside hydra's instantiate
        evaluate.run(cfg)


def test_cifar_batches_never_unpickle_code(tmp_path, clean_ckpt):
    marker = tmp_path / "PWNED"
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CorruptImageError, match="refused the global .*could run code"):
        cifar10(tmp_path / "cifar", train=False)
    assert not marker.exists()
    # the same file named by a checkpoint's config: refused at the reader, nothing runs
    stored = read_checkpoint(clean_ckpt)["dat_config"]["data"]
    cifar = {"_target_": "dat_lightning.data.datasets.cifar10", "root": str(tmp_path / "cifar"), "train": False}
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", data=stored | {"val_set": cifar})
    cfg = compose_config(tmp_path / "out", [f"ckpt={path}", "metrics=[clean]", "test_size=8"],
                         config_name="evaluate")
    with pytest.raises(Exception, match="refused the global"):  # raised inside hydra's instantiate
        evaluate.run(cfg)
    assert not marker.exists()


def test_init_ckpt_and_resume_read_weights_only(clean_ckpt, tmp_path):
    marker = tmp_path / "PWNED"
    path = poisoned(clean_ckpt, tmp_path / "evil.ckpt", model__net=attack_node("builtins.open", marker),
                    data=attack_node("Path.write_text", marker),
                    sampling=attack_node("torch.load", marker))
    # stage two from its weights: trains, and the stored config is never looked at
    _, _, module, trainer = fit_tiny(tmp_path / "init", ["stage1_epochs=0", "stage2_epochs=1",
                                                         f"init_ckpt={path}", *NO_FID])
    assert trainer.global_step > 0 and not marker.exists()
    # resuming from it: the recorded config differs from the new one, so the run refuses ...
    result = run_cli(["stage1_epochs=1", "stage2_epochs=1", *NO_FID, "data.num_workers=0",
                      "trainer.limit_train_batches=2", "data.val_size=16", "data.batch_size=16",
                      f"ckpt_path={path}", f"paths.cache_dir={tmp_path}/cache"], cwd=tmp_path, env=cli_env())
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "differs from the one it was saved with" in result.stderr and not marker.exists()
