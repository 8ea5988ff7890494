"""Logging that survives a resume (issue 16, point 3), read from the run's own files: a run
stopped by SIGTERM and launched again keeps one W&B run (offline: one run id across both launches,
the resolved config in it) and one CSV folder whose ``metrics.csv`` holds both launches' rows."""

from __future__ import annotations

import csv
import signal
from pathlib import Path

from dat_lightning.run_logs import ResumableCSVLogger
from helpers import NO_FID, TINY_FMNIST, cli_env, run_cli

HERE = Path(__file__).resolve().parent


def test_a_resumed_run_keeps_its_wandb_run_and_its_csv_folder(tmp_path):
    args = [*TINY_FMNIST, *NO_FID, "stage1_epochs=1", "stage2_epochs=1", "trainer.limit_train_batches=3",
            "logger=wandb", "+callbacks.signal_at={_target_: fault_callbacks.SignalAtStep}", "run_name=r"]
    env = cli_env(PYTHONPATH=str(HERE), DAT_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline", HOME=str(tmp_path))
    first = run_cli(args, cwd=tmp_path, env=env | {"DAT_TEST_SIGNAL": "SIGTERM", "DAT_TEST_SIGNAL_STEP": "2"})
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    second = run_cli(args, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]

    run_dir = tmp_path / "outputs" / "train" / "r"
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    launches = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(launches) == 2 and all(p.name.endswith(f"-{run_id}") for p in launches)  # one W&B run
    for launch in launches:
        assert b"stage1_epochs" in next(launch.glob("run-*.wandb")).read_bytes()  # the config went with it

    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3, 4, 5]  # both launches' training steps, each once
    assert "stage1_epochs" in (run_dir / "csv" / "version_0" / "hparams.yaml").read_text()


def test_rows_a_killed_launch_logged_past_its_checkpoint_are_dropped(tmp_path):
    logger = ResumableCSVLogger(tmp_path, name="csv", version=0)
    logger.log_metrics({"train/loss": 1.0}, step=3)
    logger.log_metrics({"train/loss": 2.0}, step=4)
    logger.log_metrics({"train/loss": 3.0}, step=5)
    logger.save()
    resumed = ResumableCSVLogger(tmp_path, name="csv", version=0)
    assert resumed.truncate_after(4) == 1
    resumed.log_metrics({"train/loss": 4.0, "val/acc": 0.5}, step=5)  # a new key: the header grows
    resumed.save()
    with (tmp_path / "csv" / "version_0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["train/loss"], r["val/acc"]) for r in rows] == [("3", "1.0", ""), ("4", "2.0", ""),
                                                                         ("5", "4.0", "0.5")]
