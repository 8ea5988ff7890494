"""The DAT authors' own checkpoints (github.com/xuwangyin/DAT, package ``rebm``) on our timm backbones.

Their README's model table names one ``model_configs/*.yaml`` per row; each config names the file
(``checkpoint:``) and the architecture. What their code writes, per row (docs/authors_checkpoints.md
has the table with file names, sampling settings and the papers' numbers):

- CIFAR-10 / CIFAR-100 standard AT and RATIO (WRN-34-10): ``best_avg.pth`` from their copy of
  InNOutRobustness. Its trainer saves the EMA model's inner network, whose normalization wrapper
  returns the bare WideResNet state dict: ``conv1``, ``block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,
  convShortcut}``, ``bn1``, ``fc``; no prefix, no averaging counter.
- CIFAR-10 DAT (T=40, T=50) and CIFAR-100 DAT (T=45, T=50): ``model_bestfid.pth``, the same keys
  (their ``WideResNet34x10`` keeps InNOutRobustness's names; its mean/std are plain attributes, not
  in the state dict).
- ImageNet DAT ResNet-50 (T=15, T=30), WRN-50x4 (T=30, T=65), ConvNeXt-L: ``model_bestfid.pth``,
  the bare state dict of their timm fork's ``resnet50`` / ``wide_resnet50_4`` / ``convnext_large``
  with the ConvStem under ``stem.stem.``.
- ImageNet standard AT ResNet-50 and WRN-50x4: ``resnet50_l2_eps3_model.ckpt`` /
  ``wide_resnet50_4_l2_eps3_model.ckpt``, plain timm ResNet state dicts (their loader also accepts
  them ``module.``-prefixed; which one the files are could not be checked).
- ImageNet standard AT ConvNeXt-L: ``convnext_large_cvst_robust.pt``, revisiting-at's
  ConvNeXt-L + ConvStem trained without a normalizer, keys ``base_model.<timm ConvNeXt>``.

EMA and "bestfid": separate files, never two weight sets in one. Every DAT run has ``use_ema:
true`` and writes ``model_bestfid.pth`` from the EMA model's inner network whenever the FID
improves, so that file *is* the EMA weights (the raw ones are not in it). ``best_avg.pth`` is
InNOutRobustness's EMA ("avg") model at its best robust accuracy. Only their resumption file
``training_state_latest.pth`` holds both: ``{"model_state_dict": <DataParallel / DDP, "module.">,
"ema_state_dict": <AveragedModel: "n_averaged", "module.">, "optimizer_state_dict",
"training_state", "metrics", "config", "wandb_run_id"}``; ``ema`` picks which. Their loader also
reads ``DataParallel(AveragedModel(net))`` state dicts (``module.n_averaged``, ``module.module.``).

Input normalization is fixed by the architecture and lives inside their forward, never in the
file: WideResNets use InNOutRobustness's CIFAR-10 statistics (also for CIFAR-100), ResNets the
ImageNet statistics, ConvNeXt-L none at all (``normalize_input: false``: inputs in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dat_lightning.checkpoints import CheckpointError
from dat_lightning.checkpoints.formats import (
    RATIO_CIFAR_MEAN,
    RATIO_CIFAR_STD,
    Converted,
    strip_prefixes,
    tensors_only,
    unwrap,
)

__all__ = ["LAYOUTS", "Layout", "from_rebm", "layout_of", "looks_like_rebm"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Their resumption file (rebm.training.modeling.save_training_state): these two keys mark it.
TRAINING_STATE_KEYS = frozenset({"model_state_dict", "training_state"})
# AveragedModel's step counter, bare or under DataParallel: a buffer, not a weight.
AVERAGING_COUNTERS = ("n_averaged", "module.n_averaged")
# Outermost first: DataParallel / DDP, the AveragedModel inside it, revisiting-at's WrappedModel.
WRAPPERS = ("module.", "module.", "base_model.")


@dataclass(frozen=True)
class Layout:
    """One architecture family of the authors' files: how to recognise it, what input it expects."""

    name: str
    signature: str  # a key every file of the family has
    top_level: tuple[str, ...]  # every key starts with one of these
    mean: tuple[float, ...]
    std: tuple[float, ...]
    first_conv: str  # its input convolution's weight
    backbones: str  # our timm names that load it

    def strays(self, keys: Collection[str]) -> list[str]:
        """The keys outside this family's modules."""
        return sorted(k for k in keys if not k.startswith(self.top_level))

    def holds(self, keys: Collection[str]) -> bool:
        return self.signature in keys and not self.strays(keys)


INNOUT_WIDE_RESNET = Layout(
    "InNOutRobustness WideResNet (CIFAR)", "block1.layer.0.conv1.weight",
    ("conv1.", "block1.", "block2.", "block3.", "bn1.", "fc."),
    RATIO_CIFAR_MEAN, RATIO_CIFAR_STD, "conv1.weight", "wrn34_10",
)
TIMM_RESNET = Layout(
    "timm ResNet (ImageNet)", "layer1.0.conv1.weight",
    ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc."),
    IMAGENET_MEAN, IMAGENET_STD, "conv1.weight", "resnet50, wide_resnet50_4",
)
CONVNEXT_CONVSTEM = Layout(
    "timm ConvNeXt + ConvStem (ImageNet, inputs in [0, 1])", "stem.stem.0.weight",
    ("stem.stem.", "stages.", "head."),
    (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "stem.stem.0.weight", "convnext_large_convstem",
)
LAYOUTS = (INNOUT_WIDE_RESNET, TIMM_RESNET, CONVNEXT_CONVSTEM)


def layout_of(keys: Collection[str]) -> Layout | None:
    """The family whose modules are exactly ``keys``' (no wrapper prefixes left), else None."""
    return next((layout for layout in LAYOUTS if layout.holds(keys)), None)


def looks_like_rebm(ckpt: Mapping[str, Any]) -> bool:
    """Whether ``ckpt`` is laid out as the authors ship their files (for ``detect_format``).

    Their weight files are bare state dicts with nothing that names their origin, so this asks
    for the exact key set of one family: unprefixed, or behind the wrappers only their code writes
    (the ``DataParallel(AveragedModel)`` counter, revisiting-at's ``base_model.`` on a ConvNeXt
    without a normalizer), or their training-state file. Anything with another prefix
    (``module.`` alone, ``model.``, ``backbone.``, ``net.``) or a stored normalizer is left to the
    other formats.
    """
    if TRAINING_STATE_KEYS <= set(ckpt):
        return True
    if not ckpt or not all(isinstance(v, Tensor) for v in ckpt.values()):
        return False
    state = dict(ckpt)
    only = None  # the family a wrapper restricts the file to
    if "module.n_averaged" in state:
        state = {k.removeprefix("module.module."): v for k, v in state.items() if k != "module.n_averaged"}
    elif all(k.startswith("base_model.") for k in state):
        state, only = {k.removeprefix("base_model."): v for k, v in state.items()}, CONVNEXT_CONVSTEM
    layout = layout_of(state)
    if layout is None or (only is not None and layout is not only):
        return False
    # Every one of their models takes RGB: a 1-channel net with these names (our Fashion-MNIST
    # WideResNet, saved bare) is not theirs.
    first_conv = state.get(layout.first_conv)
    return first_conv is not None and first_conv.ndim == 4 and first_conv.shape[1] == 3


def _weights(ckpt: Mapping[str, Any], source: str, ema: bool) -> dict[str, Any]:
    """The one weight set in ``ckpt``: a training-state file's EMA (or raw) weights, else itself."""
    if "model_state_dict" in ckpt or "ema_state_dict" in ckpt:
        order = ("ema_state_dict", "model_state_dict") if ema else ("model_state_dict", "ema_state_dict")
        return unwrap(ckpt, order, source)
    return dict(ckpt)


def _net_state(weights: Mapping[str, Any]) -> dict[str, Tensor]:
    """The bare network's tensors: averaging counters dropped, wrapper prefixes stripped."""
    state = {k: v for k, v in tensors_only(weights).items() if k not in AVERAGING_COUNTERS}
    return strip_prefixes(state, WRAPPERS)


def _why_not(state: Mapping[str, Tensor], weights: Mapping[str, Any]) -> str:
    """What keeps ``state`` (the tensors of ``weights``) from being one of the families."""
    if not state:
        return f"it holds no tensors at the top level (keys: {', '.join(map(str, list(weights)[:5])) or 'none'})"
    for layout in LAYOUTS:
        if layout.signature in state:
            strays = layout.strays(state)
            return f"it has keys outside the {layout.name} modules: {', '.join(strays[:5])}"
    return (f"none of the families' keys ({', '.join(layout.signature for layout in LAYOUTS)}) is in it "
            f"(first keys: {', '.join(list(state)[:5])})")


def from_rebm(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    """The authors' file as a bare backbone state dict, with the normalization its family implies.

    Args:
        ckpt: what the file holds (read with ``weights_only=True``).
        source: the file, for messages.
        ema: in a training-state file, take ``ema_state_dict`` (else ``model_state_dict``); the
            other files hold one weight set (``model_bestfid.pth`` is already the EMA one).
    """
    weights = _weights(ckpt, source, ema)
    state = _net_state(weights)
    layout = layout_of(state)
    if layout is None:
        raise CheckpointError(
            f"{source} is not a checkpoint of the DAT authors' code (rebm): {_why_not(state, weights)}. "
            "Their files are bare InNOutRobustness WideResNet, timm ResNet or timm ConvNeXt + ConvStem "
            "state dicts (optionally behind module. / base_model.); pick another init_ckpt_format"
        )
    return Converted(state, torch.tensor(layout.mean), torch.tensor(layout.std))
