"""The command line as a user runs it: `python -m dat_lightning.train ...` in a subprocess."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from helpers import cli_env, run_cli, session_cache


def train(tmp_path: Path, *args: str, timeout: int = 180):
    return run_cli(args, cwd=tmp_path, env=cli_env(DAT_CACHE=str(session_cache(tmp_path))), timeout=timeout)


def assert_ok(result) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def job_config(job_dir: Path):
    return OmegaConf.load(job_dir / ".hydra" / "config.yaml")


def test_cli_default_fast_dev_run(tmp_path):
    run_dir = tmp_path / "run"
    result = train(tmp_path, "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}")
    assert_ok(result)
    cfg = job_config(run_dir)
    assert cfg.task_name == "train" and cfg.trainer.fast_dev_run is True
    assert (run_dir / "samples" / "final.png").is_file()  # outputs land in the run directory
    # The default starts in stage two: its FID runs, shrunk to a check (the run's output says so).
    output = result.stdout + result.stderr
    assert "fast_dev_run: fid_cifar10_resnet18 of 50 samples against 50 real images" in output
    assert list(session_cache(tmp_path).glob("fid/*_cifar10_resnet18_50.pt"))


def test_cli_named_experiment_fast_dev_run(tmp_path):
    run_dir = tmp_path / "run"
    assert_ok(train(tmp_path, "+experiment=fmnist_dat", "trainer.fast_dev_run=true",
                    f"hydra.run.dir={run_dir}"))
    assert job_config(run_dir).task_name == "fmnist_dat"


def test_cli_multirun_over_chain_steps(tmp_path):
    sweep_dir = tmp_path / "sweep"
    assert_ok(train(tmp_path, "-m", "callbacks.curriculum.max_steps=1,2", "trainer.fast_dev_run=true",
                    f"hydra.sweep.dir={sweep_dir}", timeout=300))
    jobs = sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/config.yaml"))
    assert len(jobs) == 2
    assert sorted(job_config(j).callbacks.curriculum.max_steps for j in jobs) == [1, 2]
    # Each job wrote into its own directory (paths.output_dir is the job's directory).
    assert all((j / "samples" / "final.png").is_file() for j in jobs)


def test_user_configs_join_the_search_path(tmp_path):
    """A user's own config folder, by --config-dir or hydra.searchpath: its experiment composes,
    and the early override check sees it too (a typo lists it among the choices)."""
    folder = tmp_path / "my_configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "experiment" / "mine.yaml").write_text("# @package _global_\ntask_name: mine\nstage2_epochs: 3\n")
    run_dir = tmp_path / "run"
    assert_ok(train(tmp_path, "--config-dir", str(folder), "+experiment=mine", "trainer.fast_dev_run=true",
                    f"hydra.run.dir={run_dir}"))
    assert job_config(run_dir).task_name == "mine"
    shown = train(tmp_path, f"hydra.searchpath=[file://{folder}]", "+experiment=mine", "--cfg", "job")
    assert_ok(shown)
    assert "task_name: mine" in shown.stdout and "stage2_epochs: 3" in shown.stdout
    typo = train(tmp_path, "--config-dir", str(folder), "+experiment=mien")
    assert typo.returncode == 1 and "Traceback" not in typo.stderr and "mine" in typo.stderr, typo.stderr[-2000:]
