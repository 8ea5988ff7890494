"""`make compare` end to end, shrunk (two methods, tiny runs, a judge trained on 256 images), and its
table from hand-made run folders: a diverged method gets a row that says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from dat_lightning.comparison import markdown_table, method_row
from helpers import TINY_FMNIST, tiny_judge

REPO = Path(__file__).resolve().parents[1]


def test_compare_script_trains_evaluates_and_tables_each_method(tmp_path):
    judge = tiny_judge(tmp_path)
    out = tmp_path / "compare"
    env = os.environ | {
        "PY": sys.executable, "OUT": str(out), "DAT_CACHE": str(tmp_path / "cache"), "METHODS": "at jem",
        "EPOCHS": "2", "AA_N": "8", "FID_SAMPLES": "20", "NUM_REAL": "30", "INCEPTION": "0", "JUDGE": str(judge),
        "EVAL_ARGS": "autoattack.n_iter=3 batch_size=32 test_size=64",
    }
    done = subprocess.run(["bash", "scripts/compare.sh", *TINY_FMNIST], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for method in ("at", "jem"):
        assert (out / method / "train_status").read_text().strip() == "ok"
    report = json.loads((out / "eval_jem" / "report.json").read_text())["metrics"]
    fid = report["fid"]
    assert fid["extractor"].startswith("fmnist_cnn_") and f"agreement_{fid['extractor']}" in fid
    assert fid["sampling"]["sampler"]["name"] == "sgld"  # JEM's samples come from its own sampler
    table = (out / "table.md").read_text()
    assert f"| `jem` | {100 * report['clean']['accuracy']:.2f} |" in table and "| `at` |" in table
    assert "| sgld T=1 from buffer | " in table and "| pgd T=1 from ood | " in table  # each its own protocol
    assert "6 steps | no |" in table  # the budget of EPOCHS=2 tiny epochs of 3 batches, no divergence
    assert (out / "grids.png").stat().st_size > 0


def test_a_diverged_method_has_its_row_and_no_scores(tmp_path):
    run = tmp_path / "jem" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"global_step": 37, "dat_divergence": {"consecutive": 0, "total": 4}}, run / "last.ckpt")
    (tmp_path / "jem" / "train_status").write_text("diverged\n")
    (tmp_path / "jem" / "train_wall_time_s").write_text("90\n")
    row = method_row(tmp_path, "jem")
    assert (row["status"], row["steps"], row["skipped_steps"], row["wall_s"]) == ("diverged", 37, 4, 90)
    line = markdown_table([row]).splitlines()[-1]
    assert line == "| `jem` | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 1.5 min, 37 steps | yes (4 skipped steps) |"
