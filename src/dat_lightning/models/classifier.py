"""A timm backbone behind a fixed input normalization.

Every attack, energy and sampler in the project works on images in [0, 1] (eps and step sizes are
in pixel space), so the mean/std normalization lives inside the model, as the first operation of
``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

__all__ = ["Classifier", "build_classifier"]


class Classifier(nn.Module):
    """``logits = backbone((x - mean) / std)`` for images ``x`` in [0, 1].

    ``mean`` and ``std`` are non-persistent buffers of shape (1, C, 1, 1): they follow
    ``.to(device)`` but are not written to the state dict, so a checkpoint holds exactly the
    backbone's keys, prefixed ``backbone.``. They are part of the model's construction (config),
    not of its learned state.

    Attributes:
        backbone: the wrapped network, called on normalized inputs.
        in_chans: number of input channels, ``len(mean)``.
        num_classes: the backbone's number of outputs (follows ``backbone.reset_classifier``).
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() != std_t.numel():
            raise ValueError(f"mean has {mean_t.numel()} entries but std has {std_t.numel()}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        backbone_in_chans = getattr(backbone, "in_chans", None)
        if backbone_in_chans is not None and backbone_in_chans != mean_t.numel():
            raise ValueError(
                f"mean/std have {mean_t.numel()} channels but the backbone expects {backbone_in_chans}"
            )
        self.backbone = backbone
        self.in_chans = mean_t.numel()
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] images to the backbone's input space."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


def _has_weight_source(pretrained_cfg: dict) -> bool:
    return any(pretrained_cfg.get(key) for key in ("url", "hf_hub_id", "file", "state_dict"))


def build_classifier(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pretrained: bool = False,
    channels_last: bool = False,
    **timm_kwargs,
) -> Classifier:
    """Create ``timm.create_model(name, ...)`` and wrap it in a :class:`Classifier`.

    Args:
        name: any timm model name, including this package's ``wrn34_10`` ... and
            ``convnext_*_convstem`` (registered when ``dat_lightning.models`` is imported).
        num_classes: classifier outputs.
        in_chans: input channels; ``mean`` and ``std`` must have this many entries.
        mean, std: input normalization; ``None`` takes them from the model's timm pretrained cfg
            (which must then have ``in_chans`` entries).
        pretrained: load timm's pretrained weights. Never falls back to random weights: if there
            is no weight source or loading fails (e.g. offline), a RuntimeError is raised.
        channels_last: store the backbone's weights in channels-last memory format, so that its
            convolutions run NHWC (the same values; x1.3-1.8 faster per pass on an AVX-512 CPU,
            bench/RESULTS.md). State dicts load either way.
        **timm_kwargs: passed to ``timm.create_model`` (drop_path_rate, pretrained_cfg_overlay, ...).

    Raises:
        ValueError: mean/std lengths do not match ``in_chans``.
        RuntimeError: ``pretrained=True`` and the weights could not be loaded.
    """
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != in_chans:
            raise ValueError(f"len({label})={len(values)} must equal in_chans={in_chans}")
    try:
        backbone = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **timm_kwargs
        )
    except Exception as err:
        if not pretrained:
            raise
        raise RuntimeError(
            f"Could not load pretrained weights for {name!r} ({type(err).__name__}: {err}). "
            "Without internet access, place the weights locally and pass "
            "pretrained_cfg_overlay=dict(file='/path/to/weights'), or use pretrained=False."
        ) from err
    pretrained_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
    if pretrained and not _has_weight_source(pretrained_cfg):
        # timm only logs a warning here and keeps the random init; refuse instead.
        raise RuntimeError(
            f"pretrained=True but timm knows no weights for {name!r}: place the weights locally and "
            "pass pretrained_cfg_overlay=dict(file='/path/to/weights'), or use pretrained=False."
        )
    if mean is None or std is None:
        mean = pretrained_cfg.get("mean") if mean is None else mean
        std = pretrained_cfg.get("std") if std is None else std
        if mean is None or std is None or len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"{name!r} has no default mean/std for in_chans={in_chans} "
                f"(pretrained cfg gives mean={mean}, std={std}); pass mean and std explicitly"
            )
    if channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    return Classifier(backbone, mean, std)
