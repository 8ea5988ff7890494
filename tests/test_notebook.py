"""notebooks/quickstart.ipynb runs top to bottom on a tiny training run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tiny_run_dir, tmp_path, monkeypatch):
    for key, value in {"DAT_CKPT": str(tiny_run_dir / "checkpoints" / "last.ckpt"), "DAT_NB_N_TEST": "200",
                       "DAT_NB_PER_CLASS": "2", "DAT_NB_EPS": "0.5,2", "DAT_NB_CF_STEPS": "3",
                       "DAT_NB_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert f"checkpoint: {tiny_run_dir}" in outputs and "ECE" in outputs
    assert (tmp_path / "counterfactuals.png").is_file() and (tmp_path / "reliability.png").is_file()
    images = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # sample grid, counterfactuals, reliability diagram
