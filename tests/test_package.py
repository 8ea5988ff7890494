"""A real package (issue 16, point 1): the built wheel carries the configs, installs into a fresh
virtual environment and runs from any directory, by its console scripts and by ``python -m``.

The new environment takes its dependencies from this one (a ``.pth`` line; nothing is
downloaded), never the repository: the test checks that ``dat_lightning`` is imported from the
installed wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from helpers import session_cache

REPO = Path(__file__).resolve().parents[1]


def run(args: list, cwd: Path, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", **extra_env}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_built_wheel_installs_and_runs_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # setuptools builds in the source tree: keep the checkout clean
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                 tmp_path / "dist", source], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("dat_lightning-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dat_lightning/conf/train.yaml", "dat_lightning/conf/experiment/imagenet256_convnext.yaml",
            "dat_lightning/py.typed"} <= set(names)

    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", venv], cwd=tmp_path).returncode == 0
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel],
                    cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    api = run([venv / "bin" / "python", "-c", "import dat_lightning as d; print(d.__file__); "
               "print(d.DATModule.__name__, d.pgd_attack.__name__, d.pgd_sample.__name__, d.load_classifier.__name__)"],
              cwd=elsewhere)
    assert api.returncode == 0, api.stderr[-3000:]
    assert str(site) in api.stdout and "DATModule pgd_attack pgd_sample load_classifier" in api.stdout

    shown = run([venv / "bin" / "dat-train", "--cfg", "job"], cwd=elsewhere)
    assert shown.returncode == 0 and "task_name: train" in shown.stdout, shown.stderr[-3000:]
    trained = run([venv / "bin" / "python", "-m", "dat_lightning.train", "trainer.fast_dev_run=true",
                   "data.num_workers=0"], cwd=elsewhere, DAT_CACHE=str(session_cache(tmp_path)))
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    assert list((elsewhere / "outputs" / "train").glob("*/samples/final.png"))
