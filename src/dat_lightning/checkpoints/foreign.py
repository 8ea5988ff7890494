"""Stage one from public robust checkpoints (docs/algorithm.md, "Stage one": it may be an existing robust
checkpoint): ``load_robust(kind, path)`` maps a foreign state dict onto our timm backbones.

Kinds (``init_ckpt_format`` in the model config; :func:`convert` maps a read checkpoint, and
:func:`dat_lightning.checkpoints.loading.load_weights` is the one route from a file to a network):

==================  =============================================================================
``dat``             a checkpoint written by this package (EMA weights unless ``ema=False``) or a
                    plain state dict of the Classifier / its backbone
``robustbench``     RobustBench model-zoo WideResNets (keys already match ``wrn34_10`` ...)
``madrylab``        MadryLab ``robustness`` checkpoints, e.g. the ImageNet ResNet-50 (``resnet50``)
``ratio``           RATIO's CIFAR WRN-34-10 (``wrn34_10``)
``revisiting_at``   ConvNeXt + ConvStem of revisiting-at (``convnext_large_convstem``)
``rebm``            the DAT authors' own files (github.com/xuwangyin/DAT): CIFAR WRN-34-10
                    (``wrn34_10``), ImageNet ResNet-50 / WRN-50-4 (``resnet50``,
                    ``wide_resnet50_4``), ConvNeXt-L + ConvStem (``convnext_large_convstem``);
                    see :mod:`dat_lightning.checkpoints.rebm`
``auto``            decided from the keys (:func:`detect_format`)
==================  =============================================================================

The normalization a checkpoint stored (for ``ratio`` and ``rebm``: the one its code implies) is
checked against the model's own ``mean``/``std``; :func:`~dat_lightning.checkpoints.load_matching`
then loads strictly and names missing / unexpected keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from dat_lightning.checkpoints import CheckpointError, classifier_state_dict
from dat_lightning.checkpoints.formats import (
    Converted,
    check_normalization,
    from_madrylab,
    from_ratio,
    from_revisiting_at,
    from_robustbench,
)
from dat_lightning.checkpoints.rebm import from_rebm, looks_like_rebm

__all__ = ["FORMATS", "convert", "detect_format"]


def _from_dat(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    return Converted(classifier_state_dict(ckpt, ema=ema))


FORMATS: dict[str, Callable[..., Converted]] = {
    "dat": _from_dat,
    "robustbench": from_robustbench,
    "madrylab": from_madrylab,
    "ratio": from_ratio,
    "revisiting_at": from_revisiting_at,
    "rebm": from_rebm,
}


def _all_keys(ckpt: Mapping[str, Any]) -> list[str]:
    keys = [str(k) for k in ckpt]
    for inner in ckpt.values():
        if isinstance(inner, Mapping):
            keys += [str(k) for k in inner]
    return keys


def detect_format(ckpt: Mapping[str, Any]) -> str:
    """The format of a loaded checkpoint, from its keys (see the module docstring).

    A bare state dict whose keys are exactly those of a CIFAR WideResNet, a timm ResNet or a
    timm ConvNeXt + ConvStem, as the DAT authors save theirs (and RATIO's official WRN-34-10, the
    same file), is read as ``rebm``, which checks the normalization that family's code implied;
    so is a ``base_model.`` ConvNeXt without a stored normalizer (revisiting-at's model as the
    authors ship it), an ``AveragedModel`` under ``DataParallel`` (``module.n_averaged``) and
    their training-state file. Other plain state dicts (``module.`` / ``model.`` prefixes, stored
    ``mu``/``sigma``, other architectures) are read as ``robustbench`` (which strips those
    wrappers); ``module.``-prefixed RATIO files load the same way, but only ``ratio`` can check
    their implied normalization: name the format to get that check.
    """
    keys = _all_keys(ckpt)
    if "pytorch-lightning_version" in ckpt or "dat_config" in ckpt or any(k.startswith("net.") for k in keys):
        return "dat"
    if any(k.startswith(("module.attacker.", "module.normalizer.")) for k in keys):
        return "madrylab"
    if looks_like_rebm(ckpt):
        return "rebm"
    if any("base_model." in k for k in keys) or "state_dict_ema" in ckpt:
        return "revisiting_at"
    return "robustbench"


def convert(ckpt: Mapping[str, Any], kind: str = "auto", source: str = "checkpoint",
            net: nn.Module | None = None, ema: bool = True) -> dict[str, Tensor]:
    """The state dict of a read checkpoint in layout ``kind``, for
    :func:`~dat_lightning.checkpoints.load_matching` (backbone keys, bare or ``backbone.``-prefixed).

    Args:
        ckpt: what the file holds (read with ``weights_only=True``).
        kind: one of :data:`FORMATS` or ``"auto"`` (:func:`detect_format`).
        source: the file, for messages.
        net: the Classifier it is meant for; when given, the checkpoint's stored normalization must
            equal ``net.mean``/``net.std`` (else :class:`CheckpointError` with the values to set).
        ema: prefer the EMA weights where the file has both (``dat``, ``revisiting_at``, a
            ``rebm`` training-state file).
    """
    if kind != "auto" and kind not in FORMATS:
        raise ValueError(f"unknown checkpoint format {kind!r}; choose one of {['auto', *FORMATS]}")
    detected = kind == "auto"
    if detected:
        kind = detect_format(ckpt)
    # A guessed format is named as such, so a refusal shows the user what to override.
    source = f"{source} (format {kind}{', detected from its keys' if detected else ''})"
    converted = FORMATS[kind](ckpt, source, ema=ema)
    if not converted.state:
        raise CheckpointError(f"{source} holds no tensors to load")
    if net is not None and hasattr(net, "mean") and hasattr(net, "std"):
        check_normalization(converted, net.mean, net.std, source)
    return converted.state
