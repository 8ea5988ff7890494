"""Evaluation, sampling and the end-of-training summary over several processes (issue 16, point 4).

``evaluate`` and ``sample`` run with the same ``trainer=ddp`` launch as training (here two gloo
processes on the CPU). Work is shared in fixed chunks and brought together, so every number
equals the one-process run's (accuracies exactly; FID and IS to float tolerance; here they are
equal too), the report is written once, and the samples the processes write are the
one-process samples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dat_lightning.reporting import flatten_numbers
from dat_lightning.sharding import Shards
from helpers import cli_env, run_cli

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


@pytest.fixture(scope="module")
def ckpt(tiny_run_dir):
    return tiny_run_dir / "checkpoints" / "last.ckpt"


def launch(module: str, args: list[str], cwd, name: str, processes: int):
    result = run_cli([*args, f"run_name={name}", *(DDP if processes == 2 else [])], cwd=cwd, module=module,
                     env=cli_env(DAT_CACHE=str(cwd / "cache")), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "terminate called" not in result.stderr  # no process aborted at exit (gloo's threads)
    return result, cwd / "outputs" / module.rsplit(".", 1)[1] / name


def test_evaluate_on_two_processes_gives_the_one_process_numbers(ckpt, tmp_path):
    args = [f"ckpt={ckpt}", "test_size=100", "batch_size=20", "sampling.num_samples=40", "sampling.batch_size=10",
            "fid.num_real=100", "fid.splits=2", "autoattack.n_examples=20", "autoattack.attacks=[apgd-ce]",
            "autoattack.n_restarts=1", "autoattack.n_iter=3", "autoattack.batch_size=10",
            "counterfactual.n_examples=30", "counterfactual.eps=[0.5]", "counterfactual.steps=2",
            "counterfactual.grid_rows=3", "ood.n_ood=32", "ood.adversarial.steps=2"]
    _, one = launch("dat_lightning.evaluate", args, tmp_path, "one", 1)
    two_run, two = launch("dat_lightning.evaluate", args, tmp_path, "two", 2)
    report_one, report_two = (json.loads((d / "report.json").read_text()) for d in (one, two))
    assert report_two["processes"] == 2 and report_one["processes"] == 1
    a, b = flatten_numbers(report_one["metrics"]), flatten_numbers(report_two["metrics"])
    assert a.keys() == b.keys() and len(a) > 30
    for key in a:
        if "fid" in key or "/is_" in key:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
        else:
            assert b[key] == a[key], key
    assert (two_run.stdout + two_run.stderr).count("DAT evaluation of") == 1  # one report, by rank 0
    assert all((two / p).is_file() for p in ("samples_grid.png", "counterfactuals.png", "reliability.png"))


def test_sample_on_two_processes_writes_the_one_process_samples(ckpt, tmp_path):
    args = [f"ckpt={ckpt}", "sampling.num_samples=30", "sampling.batch_size=8", "sampling.steps=2",
            "sampling.step_size=0.5"]
    _, one = launch("dat_lightning.sample", args, tmp_path, "one", 1)
    _, two = launch("dat_lightning.sample", args, tmp_path, "two", 2)
    single = np.load(one / "samples.npz")
    shards = [np.load(p) for p in sorted(two.glob("samples_rank*.npz"))]
    assert len(shards) == 2
    order = np.argsort(np.concatenate([s["indices"] for s in shards]))
    for key in ("images", "labels", "predicted", "indices"):
        assert np.array_equal(np.concatenate([s[key] for s in shards])[order], single[key]), key
    settings = [json.loads((d / "settings.json").read_text()) for d in (one, two)]
    assert settings[0]["target_class_accuracy"] == settings[1]["target_class_accuracy"]


def test_the_summary_of_a_two_process_run_is_shared_and_written_once(tmp_path):
    result, run_dir = launch("dat_lightning.train", [
        "debug=tiny", "stage1_epochs=1", "stage2_epochs=1", "summary.enabled=true", "summary.test_size=64",
        "summary.fid_samples=20"], tmp_path, "ddp", 2)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["test_examples"] == 64
    assert 0 <= summary["robust_accuracy"] <= summary["clean_accuracy"] <= 1
    assert (result.stdout + result.stderr).count("DAT run summary") == 1


def test_shares_of_the_summary_accuracy_add_up_to_the_whole(ckpt):
    """The summary's sharded accuracy, each rank alone (no process group): the counts of the two
    shares are the counts of the whole."""
    import dat_lightning
    from dat_lightning.attacks import PGDSettings
    from dat_lightning.summary import accuracy

    net = dat_lightning.load_classifier(ckpt)
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(37, 1, 28, 28, generator=g), torch.randint(10, (37,), generator=g))
    attack = PGDSettings(norm="l2", eps=1.0, step_size=0.5, steps=2)
    whole = accuracy(net, data, attack, batch_size=8)
    parts = [accuracy(net, data, attack, batch_size=8, shards=Shards(rank=r, world=2)) for r in range(2)]
    assert whole[2] == 37 and sum(p[0] for p in parts) == pytest.approx(whole[0])
    assert sum(p[1] for p in parts) == pytest.approx(whole[1])


def test_a_finished_launch_takes_its_process_group_down(tmp_path):
    """A process that exits with its gloo group alive can abort at interpreter shutdown (exit -6
    after a successful run); the launcher closes the group once the task has returned."""
    import torch.distributed as dist

    from dat_lightning.cli.launcher import close_process_group

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    close_process_group()
    assert not dist.is_initialized()
    close_process_group()  # no group: nothing to do
