"""The README stays true: its Python quick start runs, and every command it and the docs show
composes with today's configuration (no renamed or removed key, group or experiment)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from dat_lightning.cli.config_checks import check_overrides, cli_overrides

REPO = Path(__file__).resolve().parents[1]
# docs/reproduce_table*.md are what one `make reproduce` wrote, commands as they ran then: records.
DOCUMENTS = [REPO / "README.md",
             *sorted(p for p in (REPO / "docs").glob("*.md") if not p.name.startswith("reproduce_table"))]
PLACEHOLDERS = {"CKPT": "x.ckpt", "...": "x.ckpt", "=NAME": "=fmnist_dat"}


def test_the_python_quick_start_runs(tiny_run_dir):
    readme = (REPO / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    ckpt = tiny_run_dir / "checkpoints" / "last.ckpt"
    code = code.replace("outputs/train/default/checkpoints/best-fid.ckpt", str(ckpt))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    assert "samples of their class:" in printed.getvalue() and "still after PGD:" in printed.getvalue()


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(document, config name, overrides)`` of every ``python -m dat_lightning.X`` / ``dat-X`` line."""
    found = []
    for doc in DOCUMENTS:
        text = doc.read_text().replace("\\\n", " ")
        for match in re.finditer(r"(?:python -m dat_lightning\.|\bdat-)(train|sample|evaluate|judge)\b([^`\n#]*)", text):
            args = [a for a in shlex.split(match.group(2)) if a not in ("-m",)]
            for placeholder, value in PLACEHOLDERS.items():
                args = [a.replace(placeholder, value) for a in args]
            found.append((doc.name, match.group(1), args))
    return found


@pytest.mark.parametrize("doc, config, args", documented_commands(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_documented_command_composes(doc, config, args):
    overrides = cli_overrides(args)  # as the CLI composes them (flags: the key=value part)
    if overrides is None:
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
    # a multirun sweep `key=a,b,c`: each job composes like its first value
    check_overrides([re.sub(r"^([\w.]+=[^\[{',]*),.*$", r"\1", o) for o in overrides], config)
