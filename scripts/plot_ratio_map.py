"""Issue 18, point 2 at a glance: every measured setting's FID ratio under the judge against its
ratio under Inception, drawn from the "At a glance" table of docs/reproduce_ratio.md.

    python scripts/plot_ratio_map.py [docs/reproduce_ratio.md] [docs/reproduce_ratio_map.png]

A filled dot kept robust accuracy within the 3-point budget, a hollow one did not (or was not measured);
the shaded corner is the claim (>= 2.5x under both).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from dat_lightning.figures import pyplot, save_figure

TARGET = 2.5
ROBUSTNESS_BUDGET = -3.0  # AutoAttack points stage two may lose
HEADER = "| setting (what differs from the ReLU recipe"


@dataclass(frozen=True)
class Setting:
    name: str
    judge_ratio: float
    inception_ratio: float
    autoattack_change: float | None  # None: not measured

    @property
    def within_budget(self) -> bool:
        return self.autoattack_change is not None and self.autoattack_change >= ROBUSTNESS_BUDGET


def _number(cell: str) -> float | None:
    found = re.search(r"[-+]?\d+(?:\.\d+)?", cell.replace("*", ""))
    return float(found.group()) if found else None


def read_settings(markdown: str) -> list[Setting]:
    """The rows of the table that starts with ``HEADER`` (setting, judge ratio, Inception ratio,
    AutoAttack change, section)."""
    lines = markdown.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    except StopIteration:
        raise ValueError(f"no table headed {HEADER!r} in the file") from None
    settings = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        judge, inception = _number(cells[1]), _number(cells[2])
        if judge is None or inception is None:
            raise ValueError(f"a row without both ratios: {line}")
        settings.append(Setting(cells[0].replace("`", ""), judge, inception, _number(cells[3])))
    if not settings:
        raise ValueError(f"the table headed {HEADER!r} has no rows")
    return settings


def plot(settings: list[Setting], path: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ax.fill_between([TARGET, 3.0], TARGET, 3.0, color="tab:green", alpha=0.15, label=f"the claim: >= {TARGET}x under both")
    for number, s in enumerate(settings, start=1):
        style = dict(color="tab:blue") if s.within_budget else dict(facecolor="none", edgecolor="tab:red")
        ax.scatter(s.judge_ratio, s.inception_ratio, s=40, zorder=3, **style)
        ax.annotate(str(number), (s.judge_ratio, s.inception_ratio), textcoords="offset points", xytext=(5, 3),
                    fontsize=8)
    # Numbered names in the empty corner: the points sit too close for names beside them.
    key = "\n".join(f"{number}  {s.name if len(s.name) <= 40 else s.name.split(' (')[0]}"
                    for number, s in enumerate(settings, start=1))
    ax.text(0.99, 0.02, key, transform=ax.transAxes, ha="right", va="bottom", multialignment="left", fontsize=7,
            bbox=dict(facecolor="white", edgecolor="0.8"))
    ax.scatter([], [], color="tab:blue", label="AutoAttack within 3 points")
    ax.scatter([], [], facecolor="none", edgecolor="tab:red", label="AutoAttack loss > 3 points, or not measured")
    ax.set(xlim=(1.5, 2.8), ylim=(1.5, 2.8), xlabel="FID ratio stage one / stage two, Fashion-MNIST judge",
           ylabel="FID ratio stage one / stage two, Inception-v3",
           title="make reproduce (2-core CPU): every setting measured for issue 18")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def main(argv: list[str]) -> None:
    doc = Path(argv[0]) if argv else Path("docs/reproduce_ratio.md")
    out = Path(argv[1]) if len(argv) > 1 else Path("docs/reproduce_ratio_map.png")
    settings = read_settings(doc.read_text())
    print(f"{len(settings)} settings from {doc} -> {plot(settings, out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
