"""Preemption and automatic resumption (issue 4, point 2).

Guarantees:
- SIGTERM to a running ``python -m dat_lightning.train`` makes it save ``checkpoints/last.ckpt`` at
  the end of the current step and exit with code 143 (128 + SIGTERM) and a one-line message
  naming the checkpoint, no traceback. (SIGUSR1 does the same; tests/test_resume.py sends it.)
- Launching the same command again resumes from that checkpoint automatically (the run directory
  is derived from the command's overrides, ``ckpt_path: last`` is the default) and finishes the run.
- A signal to the whole process group (SLURM without ``B:``, ``timeout``, ``kill -- -PGID``) with
  real data-loader workers: the workers leave it to the training process, which saves and exits
  with 128 + signal, for SIGTERM and SIGUSR1. A worker ignores such a signal from anyone but its
  parent and exits at once on one from its parent (a loader's ``terminate()``), so a process whose
  workers are still running when it exits (a loader never shut down) still exits.
- A run stuck outside a training step still ends: a second signal at once; one signal after
  ``grace_s`` when the process runs Python (here: sleeps), after ``responsive_s`` when it is
  blocked in native code (here: two DDP ranks waiting for a message nobody sends); exit code
  128 + signal, a message naming the last checkpoint, no process left behind.
- The run directory name is a function of the overrides: stable, no nested folders from paths in
  values, bounded length; ``run_name`` names it explicitly.
- ``ckpt_path``: ``last`` finds the run directory's last checkpoint or starts afresh, null starts
  afresh, an explicit path must exist.
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dat_lightning.checkpoints import CheckpointError, read_checkpoint
from dat_lightning.cli.run_directory import resolve_ckpt_path
from dat_lightning.config import MAX_RUN_DIR_NAME, run_dir_name
from helpers import NO_FID, TINY_FMNIST, cli_env, fault_cli_env, run_cli

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
HANG = ["+callbacks.hang={_target_: fault_callbacks.WaitForever}"]  # stuck at the first epoch end


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """The training CLI in a process group of its own (so that the group can be signalled)."""
    env = fault_cli_env()
    return subprocess.Popen([sys.executable, "-m", "dat_lightning.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[str, float]:
    """Wait for ``proc``; its remaining output and how long that took. Kills its group on timeout."""
    started = time.monotonic()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return output, time.monotonic() - started


def group_gone(pgid: int, timeout: float = 15.0) -> bool:
    """Whether every process of the group has ended within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return False


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_process_group_saves_despite_the_data_workers(signum, tmp_path):
    args = [*COMMAND, "data.num_workers=2", "trainer.limit_train_batches=200", f"paths.cache_dir={tmp_path}/c"]
    proc = start(args, tmp_path)
    seen = wait_for_line(proc, READY, timeout=240)
    time.sleep(1.5)  # the workers are up and loading batches
    os.killpg(proc.pid, signum)  # the training process, its workers, everything
    output, _ = finish(proc, timeout=120)
    output = seen + output
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"stopped by {name}: checkpoint saved to" in output and "killed by signal" not in output
    (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
    assert 1 <= read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] < 400
    assert group_gone(proc.pid)


LEFT_BEHIND_LOADER = """
import torch
from torch.utils.data import DataLoader, TensorDataset
from dat_lightning.data.faults import worker_settings
loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=2, persistent_workers=True,
                    **worker_settings(2))
batches = iter(loader)
next(batches)  # never exhausted and still referenced at exit: its workers are never told to stop
print("exiting", flush=True)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_worker_leaves_a_signal_to_the_training_process_unless_it_comes_from_it(signum):
    from torch.utils.data import DataLoader, TensorDataset

    from dat_lightning.data.faults import worker_settings

    loader = DataLoader(TensorDataset(torch.arange(16.0)), batch_size=4, num_workers=2, persistent_workers=True,
                        **worker_settings(2))
    batches = iter(loader)
    next(batches), next(batches)  # one batch from each worker: both have run their worker_init_fn
    first, second = (w.pid for w in batches._workers)
    subprocess.run(["kill", f"-{signal.Signals(signum).name[3:]}", str(first), str(second)], check=True)
    time.sleep(1.0)
    assert alive(first) and alive(second)  # from another process (a group signal, `kill`): ignored
    os.kill(first, signum)  # from the parent, as DataLoader's and multiprocessing's terminate() send it
    deadline = time.monotonic() + 5.0
    while alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(first) and alive(second)
    del batches  # PyTorch shuts the rest down; an ignored terminate() cost 10 s per worker


def _slow_start(init, worker_id: int) -> None:
    time.sleep(1.5)  # a worker still starting (a loaded machine, a large dataset object to copy)
    init(worker_id)


def test_a_signal_to_a_worker_still_starting_waits_for_its_worker_init_fn():
    from torch.utils.data import DataLoader, TensorDataset

    from dat_lightning.data.faults import PREEMPTION_SIGNALS, worker_settings

    settings = worker_settings(2)
    settings["worker_init_fn"] = functools.partial(_slow_start, settings["worker_init_fn"])
    loader = DataLoader(TensorDataset(torch.arange(16.0)), batch_size=4, num_workers=2, **settings)
    batches = iter(loader)  # both workers forked, neither has run leave_preemption_to_the_parent yet
    assert not set(PREEMPTION_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, [])  # ours unblocked again
    subprocess.run(["kill", "-TERM", *(str(w.pid) for w in batches._workers)], check=True)  # as a group signal
    assert torch.cat([x for (x,) in batches]).tolist() == list(range(16))  # no worker died


def test_a_process_exits_with_data_workers_left_running(tmp_path):
    """multiprocessing ends daemonic children at exit with SIGTERM and joins them (a CI run once hung
    after its last test when our workers ignored that SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-c", LEFT_BEHIND_LOADER], cwd=tmp_path, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output, _ = finish(proc, timeout=90)
    assert proc.returncode == 0 and "exiting" in output, output[-3000:]
    assert "killed by signal" not in output and "Traceback" not in output, output[-3000:]
    assert group_gone(proc.pid)


def test_a_run_stuck_outside_a_step_ends_after_its_grace(tmp_path):
    proc = start([*COMMAND, *HANG, "callbacks.preemption.grace_s=3", f"paths.cache_dir={tmp_path}/c"], tmp_path)
    wait_for_line(proc, "HANGING", timeout=240)
    proc.send_signal(signal.SIGTERM)
    output, took = finish(proc, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM without saving: the run could not save within 3 s" in output
    assert "the newest checkpoint is" in output and "stage1.ckpt" in output and took < 20


def test_a_second_signal_ends_the_run_at_once(tmp_path):
    proc = start([*COMMAND, *HANG, f"paths.cache_dir={tmp_path}/c"], tmp_path)  # grace_s: 60
    wait_for_line(proc, "HANGING", timeout=240)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, took = finish(proc, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "stopped by SIGTERM without saving: a second signal" in output and took < 10


def test_a_ddp_run_blocked_in_a_collective_ends_on_one_sigterm(tmp_path):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
    proc = start([*COMMAND, *ddp, *HANG, f"paths.cache_dir={tmp_path}/c"], tmp_path)
    # Either rank may reach the hang first; the other then blocks too, in the recv or in an epoch-end
    # collective that the hanging rank never joins (rank 0 may never print its own line).
    wait_for_line(proc, "HANGING rank", timeout=240)
    time.sleep(1.0)  # both ranks are waiting now
    os.killpg(proc.pid, signal.SIGTERM)  # as `timeout` does
    output, took = finish(proc, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "did not respond within 5 s" in output and took < 30
    assert group_gone(proc.pid)  # the other rank and every worker ended too
