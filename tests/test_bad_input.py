"""Every command line refuses bad input the same way (issue 14, points 5, 8 and 9).

Table-driven: each CLI (``train``, ``sample``, ``evaluate``) on each bad input must exit with code
1, print exactly one ``error:`` line naming the problem and the fix, show no traceback, and write
nothing: no run directory appears, no input file changes. Bad values are caught before any
checkpoint is read; unreadable checkpoints (text, empty, a pickle that would run code, a missing
file) before Hydra creates anything.

The first case of each CLI runs as a real ``python -m`` subprocess; the others run the same entry
point's checks in this process (``helpers.run_checks_in_process``; a subprocess costs ~6 s of
imports): the checks must stop every case before any work starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from helpers import run_checks_in_process, run_cli


class _System:
    """Unpickling it would run a shell command (it must never be unpickled)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_run_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "notes.ckpt").write_text("these are my notes, not a checkpoint\n")
    (folder / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": _System(folder / "PWNED")}, folder / "evil.ckpt")
    shutil.copy(tiny_run_dir / "checkpoints" / "last.ckpt", folder / "good.ckpt")
    return {p.stem: p for p in folder.iterdir()}


def _cases(files: dict[str, Path]) -> dict[str, list[tuple[list[str], tuple[str, ...]]]]:
    """Per CLI: (arguments, fragments the error line must hold)."""
    good, notes, empty, evil = (str(files[k]) for k in ("good", "notes", "empty", "evil"))
    return {
        "dat_lightning.train": [
            (["model.gen_attack.step_size=-1"],
             ("error: model.gen_attack.step_size=-1", "set model.gen_attack.step_size to a number > 0")),
            (["callbacks.curriculum.max_steps=-2"],
             ("max_steps=-2", "callbacks.curriculum.start_steps (0)")),
            (["model.clf_attack.norm=l3"], ("model.clf_attack.norm='l3'", "one of l2, linf")),
            (["trainer.precision=16-mixed"], ("trainer.precision=16-mixed", "bf16-mixed")),
            (["data.batch_size=0"], ("data.batch_size=0", "an integer >= 1")),
            (["summary.judge=fmnist"], ("summary.judge='fmnist'", "auto, null or an extractor name")),
            (["summary.inception_samples=1"], ("summary.inception_samples=1", "an integer >= 2")),
            ([f"ckpt_path={notes}"], ("ckpt_path:", notes, "is not a checkpoint", "text file")),
            ([f"ckpt_path={evil}"], ("ckpt_path:", "posix.system", "could run code")),
            ([f"init_ckpt={empty}", "stage1_epochs=0"], ("init_ckpt:", "is empty (0 bytes)")),
            (["ckpt_path=/no/such/file.ckpt"], ("ckpt_path:", "not found: /no/such/file.ckpt")),
        ],
        "dat_lightning.sample": [
            ([f"ckpt={good}", "sampling.num_samples=0"], ("sampling.num_samples=0", "an integer >= 1")),
            ([f"ckpt={good}", "sampling.num_samples=-5"], ("sampling.num_samples=-5",)),
            ([f"ckpt={good}", "sampling.steps=-1"], ("sampling.steps=-1", "an integer >= 0 or null")),
            ([f"ckpt={good}", "sampling.step_size=0"], ("sampling.step_size=0", "a number > 0 or null")),
            ([f"ckpt={good}", "sweep=[]"], ("sweep=[]", "non-empty list")),
            ([f"ckpt={good}", "sampling.seeds=photos"], ("sampling.seeds='photos'", "ood, uniform")),
            ([f"ckpt={notes}"], ("ckpt:", "is not a checkpoint")),
            ([f"ckpt={evil}"], ("ckpt:", "posix.system", "could run code")),
        ],
        "dat_lightning.evaluate": [
            ([f"ckpt={good}", "sampling.num_samples=0"], ("sampling.num_samples=0",)),
            ([f"ckpt={good}", "metrics=[clean,fidelity]"], ("metrics=['clean', 'fidelity']", "calibration")),
            ([f"ckpt={good}", "metrics=[]"], ("metrics=[]",)),
            ([f"ckpt={good}", "test_size=0"], ("test_size=0", "or null")),
            ([f"ckpt={good}", "autoattack.eps=-1"], ("autoattack.eps=-1",)),
            ([f"ckpt={good}", "counterfactual.eps=[0.5,0]"], ("counterfactual.eps=[0.5, 0]",)),
            ([f"ckpt={empty}"], ("ckpt:", "is empty")),
        ],
    }


def _snapshot(files: dict[str, Path]) -> dict[str, tuple[int, int]]:
    return {k: (p.stat().st_size, p.stat().st_mtime_ns) for k, p in files.items()}


@pytest.mark.parametrize("module", ["dat_lightning.train", "dat_lightning.sample", "dat_lightning.evaluate"])
def test_bad_input_fails_cleanly_and_writes_nothing(module, inputs, tmp_path, monkeypatch, capsys):
    cases = _cases(inputs)[module]
    before = _snapshot(inputs)
    failures = []
    for i, (args, fragments) in enumerate(cases):
        workdir = tmp_path / f"case{i}"
        workdir.mkdir()
        result = (run_cli(args, cwd=workdir, module=module, timeout=120) if i == 0
                  else run_checks_in_process(args, workdir, monkeypatch, capsys, module=module))
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        problems = [
            f"exit code {result.returncode}" if result.returncode != 1 else None,
            "a traceback" if "Traceback" in result.stderr + result.stdout else None,
            f"{len(errors)} error lines" if len(errors) != 1 else None,
            *(f"no {f!r}" for f in fragments if not errors or f not in errors[0]),
            f"wrote {[p.name for p in workdir.iterdir()]}" if any(workdir.iterdir()) else None,
        ]
        problems = [p for p in problems if p]
        if problems:
            failures.append(f"{args}: {', '.join(problems)}\n  stderr: {result.stderr[-1500:]}")
    assert not failures, "\n".join(failures)
    assert _snapshot(inputs) == before and not (inputs["good"].parent / "PWNED").exists()
