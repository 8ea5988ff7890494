"""Preemption and automatic resumption (issue 4, point 2).

Guarantees:
- SIGTERM to a running ``python -m dat_lightning.train`` makes it save ``checkpoints/last.ckpt`` at
  the end of the current step and exit with code 143 (128 + SIGTERM) and a one-line message
  naming the checkpoint, no traceback. (SIGUSR1 does the same; tests/test_resume.py sends it.)
- Launching the same command again resumes from that checkpoint automatically (the run directory
  is derived from the command's overrides, ``ckpt_path: last`` is the default) and finishes the run.
- The run directory name is a function of the overrides: stable, no nested folders from paths in
  values, bounded length; ``run_name`` names it explicitly.
- ``ckpt_path``: ``last`` finds the run directory's last checkpoint or starts afresh, null starts
  afresh, an explicit path must exist.
"""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time

import pytest

from dat_lightning.checkpoints import CheckpointError, read_checkpoint
from dat_lightning.reliability.preemption import MAX_RUN_DIR_NAME, resolve_ckpt_path, run_dir_name
from helpers import NO_FID, TINY_FMNIST, cli_env, run_cli

STEPS_PER_EPOCH = 4
COMMAND = [
    *TINY_FMNIST,
    *NO_FID,
    "callbacks.sample_grid=null",
    "stage1_epochs=1",
    "stage2_epochs=1",
    f"trainer.limit_train_batches={STEPS_PER_EPOCH}",
]
READY = "Preemption: on SIGTERM"  # logged when training starts and the handlers are installed


def wait_for_line(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read the process's output until a line contains ``marker``; return what was read."""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not selector.select(timeout=1.0):
            continue
        line = proc.stdout.readline()
        if not line:
            break  # the process ended
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"never saw {marker!r}; output:\n{''.join(seen)}")


@pytest.mark.slow  # two CLI launches, ~35 s on 2 shared cores
def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    args = [*COMMAND, f"paths.cache_dir={tmp_path}/cache"]
    proc = subprocess.Popen([sys.executable, "-m", "dat_lightning.train", *args], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_line(proc, READY, timeout=240)
        proc.send_signal(signal.SIGTERM)  # honoured at the end of the first step
        output, _ = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped by SIGTERM: checkpoint saved to" in output and "Traceback" not in output

    run_dirs = list((tmp_path / "outputs" / "train").iterdir())
    assert len(run_dirs) == 1
    last = run_dirs[0] / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)
    assert 1 <= saved["global_step"] < 2 * STEPS_PER_EPOCH  # mid-run
    assert str(last) in output

    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Resuming from {last}" in again.stderr + again.stdout
    assert list((tmp_path / "outputs" / "train").iterdir()) == run_dirs  # the same run directory
    assert read_checkpoint(last)["global_step"] == 2 * STEPS_PER_EPOCH  # finished


def test_run_dir_name_is_stable_flat_and_bounded():
    overrides = "data.batch_size=16,init_ckpt=/data/runs/a.ckpt,seed=1"
    name = run_dir_name(None, overrides)
    assert name == run_dir_name(None, overrides) and "/" not in name
    assert run_dir_name(None, "") == "default"
    assert run_dir_name("my-run", overrides) == "my-run"
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(run_dir_name(None, long_a)) <= MAX_RUN_DIR_NAME
    assert run_dir_name(None, long_a) != run_dir_name(None, long_b)


def test_ckpt_path_last_null_or_explicit(tmp_path):
    assert resolve_ckpt_path("last", tmp_path) is None  # nothing to resume: start afresh
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == str(last)
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path(str(last), tmp_path) == str(last)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)
