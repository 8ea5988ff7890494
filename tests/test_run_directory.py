"""One run per directory (issue 14, point 6) and what a new launch cleans up (point 9).

Guarantees:
- A second launch of a running command (the same run directory) is refused with the holder's
  pid and how to start another run; the first launch's ``.hydra`` record and checkpoints are
  untouched. The lock dies with its process, however it ends (``kill -9`` included).
- Resuming compares the config recorded in the checkpoint with the new one and refuses any
  difference outside the keys meant to change on resume, listing the keys with both values and
  how to force it; ``force_resume=true`` resumes anyway. Paths under the old run directory (or
  the old cache, another ``DAT_CACHE``) compare equal to the same paths under the new one; a
  path that did not change compares equal even when it lies under a moved directory.
- A wrong-architecture ``ckpt_path`` (forced past the config check) is reported by its keys.
- Temporary files of a killed checkpoint write are removed when the next launch claims the
  directory.
"""

from __future__ import annotations

import os
import signal

import pytest

from dat_lightning.checkpoints import CheckpointError
from dat_lightning.cli import run_directory
from dat_lightning.cli.config_checks import ConfigError
from dat_lightning.cli.train import run
from helpers import NO_FID, compose_config, fault_cli_env, run_cli
from test_preemption import COMMAND, HANG, READY, finish, start, wait_for_line


def test_a_second_launch_of_a_running_command_is_refused(tmp_path):
    # The first launch hangs at its first epoch end, so it is still running however slowly the
    # second one starts (tests run side by side).
    args = [*COMMAND, *HANG, f"paths.cache_dir={tmp_path}/c"]
    first = start(args, tmp_path)
    try:
        wait_for_line(first, READY, timeout=240)
        (run_dir,) = (tmp_path / "outputs" / "train").iterdir()
        record = {p: p.stat().st_mtime_ns for p in (run_dir / ".hydra").iterdir()}
        second = run_cli(args, cwd=tmp_path, env=fault_cli_env())
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"is in use by another launch (pid {first.pid} on" in second.stderr
        assert "run_name=NAME" in second.stderr
        assert {p: p.stat().st_mtime_ns for p in (run_dir / ".hydra").iterdir()} == record
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no chance to unlock: the kernel releases the lock
        finish(first, timeout=60)
    run_directory.lock(run_dir)  # free again
    assert str(os.getpid()) in (run_dir / ".lock").read_text()


@pytest.fixture
def trained(tmp_path):
    """A finished tiny stage-one run in ``tmp_path/run`` (resumable from last.ckpt)."""
    overrides = ["stage1_epochs=1", "stage2_epochs=0", *NO_FID, "callbacks.sample_grid=null"]
    run(compose_config(tmp_path / "run", overrides))
    return tmp_path / "run", overrides


def test_resume_refuses_a_changed_config_and_force_resume_overrides(trained):
    run_dir, overrides = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    written = last.stat().st_mtime_ns
    changed = [*overrides, "stage2_epochs=1", "callbacks.curriculum.max_steps=3", "data.seed=5"]
    with pytest.raises(ConfigError) as refused:
        run(compose_config(run_dir, changed))
    message = str(refused.value)
    assert f"ckpt_path={last}: the config of this launch differs from the one it was saved with" in message
    assert "data.seed: 0 -> 5" in message and "callbacks.curriculum.max_steps: 2 -> 3" in message
    assert "stage2_epochs" not in message.split("Settings that may change")[0]  # meant to change
    assert "force_resume=true" in message and last.stat().st_mtime_ns == written
    summary = run(compose_config(run_dir, [*changed, "force_resume=true"]))
    assert summary["output_dir"] == str(run_dir) and last.stat().st_mtime_ns != written  # resumed


def test_a_checkpoint_resumed_in_another_directory_compares_its_paths_as_moved(trained, tmp_path):
    run_dir, overrides = trained
    # same settings, another run directory: every path differs, nothing else
    summary = run(compose_config(tmp_path / "elsewhere", [*overrides, f"ckpt_path={run_dir}/checkpoints/last.ckpt"]))
    assert summary["output_dir"] == str(tmp_path / "elsewhere")


def test_a_wrong_architecture_ckpt_path_is_reported_by_its_keys(trained):
    run_dir, overrides = trained
    with pytest.raises(CheckpointError) as refused:
        run(compose_config(run_dir / "wider", [*overrides, "model.net.name=wrn10_2", "force_resume=true",
                                               f"ckpt_path={run_dir}/checkpoints/last.ckpt"]))
    message = str(refused.value)
    assert f"ckpt_path={run_dir}/checkpoints/last.ckpt does not fit the model" in message
    assert "wrong shapes: net.backbone." in message


def test_config_differences_ignore_resumable_keys_and_moved_paths():
    old = {"paths": {"output_dir": "/a/run"}, "cb": {"dir": "/a/run/checkpoints"}, "lr": 0.1, "stage2_epochs": 1,
           "logger": {"csv": {"save_dir": "/a/run"}}}
    new = {"paths": {"output_dir": "/b/x"}, "cb": {"dir": "/b/x/checkpoints"}, "lr": 0.1, "stage2_epochs": 4,
           "logger": None}
    assert run_directory.config_differences(old, new) == {}
    new["lr"], new["extra"] = 0.2, 1
    assert run_directory.config_differences(old, new) == {"extra": (None, 1), "lr": (0.1, 0.2)}


def test_config_differences_follow_a_moved_cache_but_not_a_changed_setting_under_it():
    # DAT_CACHE (paths.cache_dir) differs on another machine; the FID callback's cache follows it
    old = {"paths": {"output_dir": "/a/run", "cache_dir": "/a/run/cache"}, "fid": {"cache_dir": "/a/run/cache/fid"},
           "ckpt": "/a/run/last.ckpt", "judge": "/a/run/cache/judge.pt"}
    # a file given by name (the judge's weights) stays where it was: unchanged, not moved
    new = {"paths": {"output_dir": "/b/run", "cache_dir": "/home/u/.cache"}, "fid": {"cache_dir": "/home/u/.cache/fid"},
           "ckpt": "/b/run/last.ckpt", "judge": "/a/run/cache/judge.pt"}
    assert run_directory.config_differences(old, new) == {}
    new["fid"]["cache_dir"] = "/elsewhere/fid"  # set on its own: a real difference
    assert run_directory.config_differences(old, new) == {"fid.cache_dir": ("/a/run/cache/fid", "/elsewhere/fid")}
    old["fid"]["cache_dir"], new["fid"]["cache_dir"] = "/a/runner/fid", "/b/runner/fid"  # a sibling, not under /a/run
    assert run_directory.config_differences(old, new) == {"fid.cache_dir": ("/a/runner/fid", "/b/runner/fid")}


def test_claiming_a_directory_removes_interrupted_checkpoint_writes(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".last.ckpt.tmp-4242"
    stale.write_bytes(b"half a checkpoint")
    (folder / "last.ckpt").write_bytes(b"the previous complete one")
    run_directory.claim(tmp_path, compose_config(tmp_path))
    assert not stale.exists() and (folder / "last.ckpt").read_bytes() == b"the previous complete one"
    assert (tmp_path / ".lock").is_file()
