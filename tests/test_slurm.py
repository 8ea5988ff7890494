"""SLURM, simulated on the CPU (issue 16, point 2): one mechanism handles the time limit.

The job's environment (``SLURM_*``), a fake ``scontrol`` on ``PATH`` that records its arguments,
``trainer=slurm`` (Lightning's SLURM environment for the ranks, its requeue handler off), and
SIGUSR1 in the middle of stage two, as ``#SBATCH --signal=USR1@120`` sends it. Then: the run saved
``checkpoints/last.ckpt`` and exited with 128 + SIGUSR1, the requeue was asked for with the job
id, and the requeued job (the same command) resumes and ends with the weights of a run that was
never interrupted.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from dat_lightning.checkpoints import read_checkpoint
from helpers import NO_FID, TINY_FMNIST, cli_env, run_cli

HERE = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 4
COMMAND = [*TINY_FMNIST, *NO_FID, "stage1_epochs=1", "stage2_epochs=1",
           f"trainer.limit_train_batches={STEPS_PER_EPOCH}", "trainer=slurm", "trainer.accelerator=cpu",
           "trainer.devices=1", "+callbacks.signal_at={_target_: fault_callbacks.SignalAtStep}"]


def slurm_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(0o755)
    return cli_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=str(HERE), SLURM_JOB_ID="4242", SLURM_JOB_NAME="dat",
        SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
        SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1", SLURM_NODELIST="localhost", DAT_CACHE=str(tmp_path / "cache"),
        **extra)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2 * STEPS_PER_EPOCH
    return ckpt["state_dict"]


def test_sigusr1_mid_stage_two_saves_requeues_and_the_requeued_job_matches(tmp_path):
    interrupted = STEPS_PER_EPOCH + 2  # the second step of stage two
    cut = run_cli([*COMMAND, "run_name=cut"], cwd=tmp_path,
                  env=slurm_env(tmp_path, DAT_TEST_SIGNAL="SIGUSR1", DAT_TEST_SIGNAL_STEP=str(interrupted)))
    output = cut.stdout + cut.stderr
    assert cut.returncode == 128 + signal.SIGUSR1, output[-3000:]
    assert f"sending SIGUSR1 at step {interrupted}" in output and "stopped by SIGUSR1: checkpoint saved" in output
    run_dir = tmp_path / "outputs" / "train" / "cut"
    assert read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == interrupted
    assert (tmp_path / "scontrol.log").read_text().split("\n")[0] == "requeue 4242"

    requeued = run_cli([*COMMAND, "run_name=cut"], cwd=tmp_path, env=slurm_env(tmp_path))  # the same job again
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Resuming from" in requeued.stdout + requeued.stderr
    straight = run_cli([*COMMAND, "run_name=straight"], cwd=tmp_path, env=slurm_env(tmp_path))
    assert straight.returncode == 0, straight.stderr[-3000:]

    resumed, reference = final_weights(run_dir), final_weights(tmp_path / "outputs" / "train" / "straight")
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (tmp_path / "scontrol.log").read_text().count("requeue") == 1  # only the interrupted launch asked
