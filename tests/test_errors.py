"""Clear errors for bad input (issue 4, point 4) and data faults (point 6).

Guarantees, each checked on the real CLI (``python -m dat_lightning.train``, a subprocess): the
exit code is 1, stderr holds one ``error: ...`` message saying what is wrong and how to fix it,
and there is no Python traceback, for
- an unknown experiment (the valid names are listed) or config key (the valid keys, and the
  closest ones, are listed);
- a dataset root that does not exist (which dataset, where it looked, how to get it) and a
  download without internet (what to fetch and where to put it);
- images whose size does not fit what the model is built for;
- a zero or negative eps, step size or step count where it must be positive;
- stage two from the start with neither stage-one epochs nor ``init_ckpt``;
- an empty OOD source;
and W&B chosen without credentials falls back to offline logging and says so (exit code 0).
Data faults: an unreadable image in an ImageFolder is reported with its path (``fail``), or
replaced by the next image, named in a warning and counted (``skip``), with worker processes,
never a hang. Errors raised inside the run reach the CLI as one message (divergence, bugs: the
traceback of a bug goes to ``<run dir>/error.log``).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from dat_lightning.cli.errors import clear_errors
from dat_lightning.cli.train import build
from dat_lightning.data import DATDataModule, image_folder
from dat_lightning.data.datasets import CorruptImageError
from dat_lightning.data.generated import UniformNoise
from dat_lightning.data.transforms import to_tensor
from dat_lightning.divergence import DivergenceError
from helpers import NO_FID, cli_env, compose_config, run_checks_in_process, run_cli

# A run that fails fast when the error is not caught before training (no FID, tiny data).
QUICK = [*NO_FID, "callbacks.sample_grid=null", "data.num_workers=0", "data.batch_size=16",
         "data.val_size=16", "trainer.fast_dev_run=true"]


def assert_clean_failure(result, *fragments: str) -> str:
    """Exit code 1, no traceback, one error message containing every fragment."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-4000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-4000:]
    message = result.stderr[result.stderr.index("error: "):]
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- the command line ------------------------------------------------------------------------


def test_unknown_experiment_lists_the_valid_ones(tmp_path, monkeypatch, capsys):
    result = run_checks_in_process(["+experiment=cifar10_wrm34"], tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, "experiment/cifar10_wrm34", "cifar10_wrn34", "fmnist_dat")


def test_unknown_config_key_lists_the_valid_keys(tmp_path, monkeypatch, capsys):
    result = run_checks_in_process(["model.clf_atack.eps=0.5"], tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, "unknown config key 'model.clf_atack.eps'", "Did you mean: clf_attack",
                         "Valid keys of 'model':", "gen_attack", "+model.clf_atack.eps")


def test_missing_dataset_root_says_which_where_and_how(tmp_path):
    result = run_cli(["data=cifar10", f"data.train_set.root={tmp_path}/nowhere", *QUICK], tmp_path)
    assert_clean_failure(result, "CIFAR-10 not found", f"{tmp_path}/nowhere/cifar-10-batches-py",
                         "download: true", "data.train_set")


def test_download_without_internet_says_what_to_place_where(tmp_path):
    dead_proxy = "http://127.0.0.1:9"  # nothing listens there: every download fails at once
    env = cli_env(http_proxy=dead_proxy, https_proxy=dead_proxy, HTTP_PROXY=dead_proxy,
                  HTTPS_PROXY=dead_proxy)
    result = run_cli(["data=cifar10", f"data.train_set.root={tmp_path}/cifar",
                      "data.train_set.download=true", *QUICK], tmp_path, env=env)
    assert_clean_failure(result, "Downloading it failed", "cifar-10-python.tar.gz",
                         f"extract it into '{tmp_path}/cifar'")


def test_images_that_do_not_fit_the_model(tmp_path):
    result = run_cli(["data.image_size=32", *QUICK], tmp_path)
    assert_clean_failure(result, "(1, 28, 28)", "image_size=32", "data.image_size")


def test_non_positive_eps_is_refused(tmp_path, monkeypatch, capsys):
    result = run_checks_in_process(["model.clf_attack.eps=0", *QUICK], tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, "model.clf_attack.eps=0", "set model.clf_attack.eps to a number > 0")


@pytest.mark.parametrize("override, fragment", [
    ("model.clf_attack.step_size=-0.1", "clf_attack.step_size=-0.1"),
    ("model.val_attack.eps=0", "val_attack.eps=0"),
    ("model.clf_attack.steps=-1", "clf_attack.steps=-1"),
    ("model.gen_attack.step_size=0 sampling.step_size=0.1", "gen_attack.step_size=0"),
    ("sampling.step_size=0", "sampling.step_size=0"),
    ("sampling.steps=-2", "sampling.steps=-2"),
    ("stage2_epochs=-1", "stage2_epochs=-1"),
])
def test_non_positive_values_are_refused_before_training(tmp_path, override, fragment):
    with pytest.raises(Exception) as err:  # noqa: PT011 - the CLI test above checks the rendering
        build(compose_config(tmp_path, override.split()))
    from dat_lightning.cli.errors import describe, is_user_error

    assert is_user_error(err.value) and fragment in describe(err.value)


def test_stage_two_without_a_stage_one_model(tmp_path):
    result = run_cli(["stage1_epochs=0", "init_ckpt=null", *QUICK], tmp_path)
    assert_clean_failure(result, "stage two", "stage1_epochs > 0", "init_ckpt=PATH")


def test_empty_ood_source(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(["~data.ood", f"+data.ood={{_target_:dat_lightning.data.ood.OODImageFolder,"
                      f"root:{tmp_path}/empty}}", *QUICK], tmp_path)
    assert_clean_failure(result, "is empty", f"{tmp_path}/empty", "data.ood")


@pytest.mark.slow  # a real (one-step) run with W&B offline, ~20 s on 2 shared cores
def test_wandb_without_credentials_falls_back_to_offline(tmp_path):
    home = tmp_path / "home"  # no ~/.netrc
    home.mkdir()
    env = {k: v for k, v in cli_env(HOME=str(home)).items()
           if k not in ("WANDB_API_KEY", "WANDB_MODE", "NETRC")}
    result = run_cli(["logger=wandb", "stage1_epochs=1", "stage2_epochs=0", "trainer.limit_train_batches=1",
                      "trainer.limit_val_batches=1", "summary.enabled=false", *QUICK[:-1]], tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert "W&B: no credentials found" in output and "OFFLINE" in output and "wandb sync" in output
    assert list(tmp_path.glob("outputs/train/*/wandb/offline-run-*"))


# -- errors inside a run ------------------------------------------------------------------------


def test_errors_inside_the_run_become_one_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as code, clear_errors(tmp_path):
        raise DivergenceError("training diverged: 10 consecutive steps ...")
    assert code.value.code == 1
    assert capsys.readouterr().err == "error: training diverged: 10 consecutive steps ...\n"

    with pytest.raises(SystemExit) as code, clear_errors(tmp_path):
        {}["a bug"]  # not a user error: message plus where the traceback went
    assert code.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError") and str(tmp_path / "error.log") in err
    assert "Traceback" in (tmp_path / "error.log").read_text()


# -- data faults -----------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (40 * i, 100, 200)).save(root / cls / f"{i}.png")
    bad = root / "b" / "bad.png"  # sorts last: index 8 of 9
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root, bad


def datamodule(root: Path, policy: str, workers: int) -> DATDataModule:
    dm = DATDataModule(
        train_set=image_folder(root), val_set=image_folder(root), ood=UniformNoise(3, 8),
        clf_transform=to_tensor(), gen_transform=to_tensor(), val_transform=to_tensor(),
        num_classes=2, channels=3, image_size=8, batch_size=3, num_workers=workers,
        on_corrupt_image=policy,
    )
    dm.setup("fit")
    return dm


def one_epoch(dm: DATDataModule) -> list[dict]:
    """The batches of one epoch, as the trainer draws them (iterating the CombinedLoader past its
    length would restart the exhausted streams, as ``max_size_cycle`` does)."""
    loader = iter(dm.train_dataloader())  # CombinedLoader: iter() returns itself, restarted
    try:
        return [next(loader)[0] for _ in range(len(loader))]
    finally:
        # Stop the persistent workers now, as Lightning's fit loop does at its end. After a worker's
        # error the traceback keeps the iterators in a reference cycle, and when the garbage
        # collector ends it PyTorch's shutdown waits 5 s for each worker (30 s for these 6, paid by
        # whichever later test triggered the collection).
        loader.reset()


@pytest.fixture
def no_hang():
    def hung(*_):
        raise TimeoutError("the data loader hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_corrupt_image_fails_with_its_path_in_worker_processes(folder_with_a_corrupt_image, no_hang):
    root, bad = folder_with_a_corrupt_image
    dm = datamodule(root, "fail", workers=2)
    with pytest.raises(CorruptImageError, match=str(bad)):
        one_epoch(dm)


def test_corrupt_image_skipped_and_counted(folder_with_a_corrupt_image, no_hang, caplog):
    root, bad = folder_with_a_corrupt_image
    dm = datamodule(root, "skip", workers=2)
    batches = one_epoch(dm)
    assert len(batches) == 3
    for batch in batches:
        assert batch["clf"][0].shape == batch["gen"][0].shape == (3, 3, 8, 8)
        assert torch.isfinite(batch["clf"][0]).all()
    assert dm.corrupt_images_skipped == 2  # once in the classification, once in the generative stream

    in_process = datamodule(root, "skip", workers=0)
    with caplog.at_level(logging.WARNING):
        labels = torch.cat([batch["clf"][1] for batch in one_epoch(in_process)])
    assert in_process.corrupt_images_skipped == 2
    assert str(bad) in caplog.text and "data.on_corrupt_image=skip" in caplog.text
    assert sorted(labels.tolist()).count(0) == 5  # the bad "b" image replaced by the next one (a/0.png)
