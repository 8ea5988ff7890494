"""scripts/plot_ratio_map.py: the "At a glance" table of docs/reproduce_ratio.md read into points."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "plot_ratio_map.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("plot_ratio_map", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


plot_ratio_map = _load_script()

TABLE = """intro

| setting (what differs from the ReLU recipe, `make reproduce` until 2026-12-03) | judge FID ratio | Inception FID ratio | AutoAttack change (points) | section |
|---|---:|---:|---:|---|
| none (`make reproduce`) | 1.96x | 1.75x | -1.6 | first |
| `bce_weight` 4 | 2.17x | **2.18x** | **-7.3** | weights |
| noise | 1.83x | 2.23x | +0.7 | noise |
| SiLU | 1.95x | 2.09x | not measured | silu |

after the table | 9.9x | 9.9x | 0 | not a row
"""


def test_rows_are_read_with_their_signs_and_budget():
    settings = plot_ratio_map.read_settings(TABLE)
    assert [s.name for s in settings] == ["none (make reproduce)", "bce_weight 4", "noise", "SiLU"]
    assert [(s.judge_ratio, s.inception_ratio) for s in settings] == [(1.96, 1.75), (2.17, 2.18), (1.83, 2.23),
                                                                      (1.95, 2.09)]
    assert [s.autoattack_change for s in settings] == [-1.6, -7.3, 0.7, None]
    # within 3 points: a loss of 1.6 and a gain; not: a loss of 7.3, nor a change never measured
    assert [s.within_budget for s in settings] == [True, False, True, False]


def test_a_missing_table_or_ratio_is_an_error():
    with pytest.raises(ValueError, match="no table headed"):
        plot_ratio_map.read_settings("no table here")
    with pytest.raises(ValueError, match="without both ratios"):
        plot_ratio_map.read_settings(TABLE.replace("| 1.83x |", "| n/a |"))


def test_the_docs_table_draws_one_point_per_row(tmp_path):
    doc = ROOT / "docs" / "reproduce_ratio.md"
    text = doc.read_text()
    settings = plot_ratio_map.read_settings(text)
    header = text.index(plot_ratio_map.HEADER)
    rows = [line for line in text[header:].split("\n\n")[0].splitlines()[2:] if line.startswith("|")]
    assert len(settings) == len(rows) >= 10
    out = tmp_path / "map.png"
    result = subprocess.run([sys.executable, str(SCRIPT), str(doc), str(out)], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{len(rows)} settings" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
