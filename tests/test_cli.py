"""The command line as a user runs it: `python -m dat_lightning.train ...` in a subprocess."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from helpers import cli_env, run_cli


def train(tmp_path: Path, *args: str, timeout: int = 180):
    return run_cli(args, cwd=tmp_path, env=cli_env(DAT_CACHE=str(tmp_path / "cache")), timeout=timeout)


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def job_config(job_dir: Path):
    return OmegaConf.load(job_dir / ".hydra" / "config.yaml")


def test_cli_default_fast_dev_run(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(train(tmp_path, "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}"))
    cfg = job_config(run_dir)
    assert cfg.task_name == "train" and cfg.trainer.fast_dev_run is True
    assert (run_dir / "samples" / "final.png").is_file()  # outputs land in the run directory


def test_cli_named_experiment_fast_dev_run(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(train(tmp_path, "+experiment=fmnist_dat", "trainer.fast_dev_run=true",
                    f"hydra.run.dir={run_dir}"))
    assert job_config(run_dir).task_name == "fmnist_dat"


def test_cli_multirun_over_chain_steps(tmp_path):
    sweep_dir = tmp_path / "sweep"
    assert_ok(train(tmp_path, "-m", "model.gen_attack.max_steps=1,2", "trainer.fast_dev_run=true",
                    f"hydra.sweep.dir={sweep_dir}", timeout=300))
    jobs = sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))
    assert len(jobs) == 2
    assert sorted(job_config(j).model.gen_attack.max_steps for j in jobs) == [1, 2]
    # Each job wrote into its own directory (paths.output_dir is the job's directory).
    assert all((j / "samples" / "final.png").is_file() for j in jobs)
