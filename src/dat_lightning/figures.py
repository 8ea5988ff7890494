"""Writing matplotlib figures: one place that creates the folder, saves and frees the figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: figures go to files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` (parent folders created) and close it, so loops don't leak figures."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_curve(steps: list[int], values: list[float], ylabel: str, path: Path, title: str = "") -> Path:
    """A line plot of a score against the chain length T (matplotlib, Agg)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(steps, values, "o-")
    best = int(np.argmin(values))
    ax.annotate(f"T={steps[best]}: {values[best]:.2f}", (steps[best], values[best]), textcoords="offset points",
                xytext=(0, 8), ha="center", fontsize=8)
    ax.set(xlabel="chain steps T", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
