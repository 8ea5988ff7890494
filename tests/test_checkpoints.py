"""Safe checkpoints (issue 4, point 5).

Guarantees:
- Every ``torch.load`` in the package passes ``weights_only=True`` (source scan), and every
  checkpoint a training run writes loads with ``torch.load(weights_only=True)`` (plain containers
  and tensors only: no OmegaConf objects or partials).
- Resuming a fit reads the checkpoint with ``weights_only=True`` too: a checkpoint that needs more
  than tensors and plain containers is refused with a message, before anything is restored.
- Truncated or corrupt files, missing files and pickles needing arbitrary code give a
  CheckpointError that names the file and the problem; keys that do not fit the model are listed
  (missing, unexpected, wrong shape).
- Checkpoints are written atomically: a write that dies midway leaves the previous file intact and
  no temporary file behind; the trainer of every config uses this writer.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import dat_lightning
from dat_lightning.checkpoints import CheckpointError, load_matching, read_checkpoint
from dat_lightning.checkpoints import writing as checkpoint_io
from dat_lightning.checkpoints.writing import AtomicCheckpointIO, atomic_torch_save
from dat_lightning.cli.train import build, run
from helpers import NO_FID, compose_config

PACKAGE = Path(dat_lightning.__file__).parent


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny two-stage run (one epoch each); its output directory."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    try:
        run(compose_config(out, ["stage1_epochs=1", "stage2_epochs=1", *NO_FID]))
    finally:
        torch.set_num_threads(threads)
    return out


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.name, text[match.start():end]))
    assert calls, "the scan found no torch.load call at all"
    unsafe = [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_checkpoints_of_a_real_run_load_weights_only(trained_run):
    files = sorted((trained_run / "checkpoints").glob("*.ckpt"))
    assert {f.name for f in files} >= {"last.ckpt", "stage1.ckpt"}
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert {"state_dict", "optimizer_states", "loops", "dat_config"} <= set(ckpt)
        assert isinstance(ckpt["dat_config"], dict) and ckpt["dat_config"]["seed"] == 0
    assert not list((trained_run / "checkpoints").glob(".*tmp*"))  # no leftover temp files


def test_resuming_refuses_a_checkpoint_that_needs_arbitrary_code(trained_run, tmp_path):
    ckpt = read_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    ckpt["hyper_parameters"] = {"factory": functools.partial(print, "arbitrary code")}
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    datamodule, module, trainer = build(compose_config(tmp_path / "run", ["stage1_epochs=1", "stage2_epochs=2", *NO_FID]))
    with pytest.raises(CheckpointError, match="weights_only=True refused it"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(evil))
    assert trainer.global_step == 0


def test_read_errors_name_the_file_and_the_problem(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    for path, problem in ((truncated, "truncated or corrupt"), (garbage, "is not a checkpoint: it is binary data")):
        with pytest.raises(CheckpointError, match=problem) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    module_pickle = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), module_pickle)  # a whole module: needs its class to unpickle
    with pytest.raises(CheckpointError, match="needs the object torch.nn.modules.linear.Linear.*re-save its "
                                              "weights as a plain state dict"):
        read_checkpoint(module_pickle)


def test_keys_that_do_not_fit_are_listed():
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = model.state_dict()
    state["9.weight"] = state.pop("1.weight")
    state["0.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        load_matching(model, state, source="test.ckpt")
    message = str(err.value)
    assert "missing keys: 1.weight" in message and "unexpected keys: 9.weight" in message
    assert "wrong shapes: 0.bias" in message and message.startswith("test.ckpt")


def test_a_write_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. the process is interrupted mid-write

    monkeypatch.setattr(checkpoint_io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert int(read_checkpoint(path)["step"]) == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, path)
    assert int(AtomicCheckpointIO().load_checkpoint(path)["step"]) == 3


@pytest.mark.parametrize("trainer", ["fmnist_cpu", "cpu", "gpu", "ddp", "slurm"])
def test_every_trainer_config_writes_atomically(tmp_path, trainer):
    from dat_lightning.cli.instantiate import instantiate_all

    cfg = compose_config(tmp_path, [f"trainer={trainer}"])
    plugins = instantiate_all(cfg.trainer.plugins)  # what make_trainer hands the Trainer
    assert any(isinstance(p, AtomicCheckpointIO) for p in plugins)
