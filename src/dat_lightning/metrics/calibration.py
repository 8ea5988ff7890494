"""Calibration: expected calibration error (ECE) of the max softmax and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from dat_lightning.figures import pyplot, save_figure


def expected_calibration_error(logits: Tensor, labels: Tensor, n_bins: int = 20) -> float:
    """ECE = sum_b (n_b / n) |acc_b - conf_b| over ``n_bins`` equal-width confidence bins, where
    conf is ``max_y p(y|x)`` (torchmetrics ``multiclass_calibration_error``, L1 norm)."""
    probs = logits.float().softmax(dim=1)
    return float(multiclass_calibration_error(probs, labels.long(), num_classes=probs.shape[1],
                                              n_bins=n_bins, norm="l1"))


def reliability_bins(logits: Tensor, labels: Tensor, n_bins: int = 20) -> dict[str, Tensor]:
    """Per-bin mean confidence, accuracy and count, binned as torchmetrics does ([lo, hi) bins;
    a confidence of exactly 1 joins the last bin). Empty bins have count 0 (and NaN means)."""
    probs = logits.float().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels.to(pred.device)).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(conf.cpu(), edges, right=True) - 1).clamp(max=n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(conf.cpu()))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, conf.cpu())
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct.cpu())
    return {"lower": edges[:-1], "upper": edges[1:], "count": count,
            "confidence": conf_sum / count, "accuracy": acc_sum / count}


def plot_reliability_diagram(bins: dict[str, Tensor], ece: float, path: str | Path, title: str = "") -> Path:
    """Accuracy per confidence bin against the diagonal, with the share of samples per bin below."""
    plt = pyplot()

    lower, upper = bins["lower"].numpy(), bins["upper"].numpy()
    width = upper - lower
    filled = bins["count"].numpy() > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.bar(lower[filled], bins["accuracy"].numpy()[filled], width=width[filled], align="edge",
            edgecolor="black", color="tab:blue", label="accuracy")
    top.bar(lower[filled], (bins["confidence"] - bins["accuracy"]).numpy()[filled], width=width[filled],
            bottom=bins["accuracy"].numpy()[filled], align="edge", color="tab:red", alpha=0.3, label="gap")
    top.plot([0, 1], [0, 1], "k--", lw=1)
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} ECE={ece:.4f}".strip())
    top.legend(loc="upper left")
    share = bins["count"].numpy() / max(bins["count"].sum().item(), 1)
    bottom.bar(lower, share, width=width, align="edge", edgecolor="black", color="gray")
    bottom.set(xlabel="confidence max_y p(y|x)", ylabel="share")
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
