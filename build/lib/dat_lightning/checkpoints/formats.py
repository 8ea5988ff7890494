"""Key layouts of public robust checkpoints, mapped onto this package's timm backbones.

Each converter takes the object a checkpoint file holds (already read with ``weights_only=True``),
a description of the file for messages and ``ema`` (prefer EMA weights where a file has two sets;
ignored by layouts that store one) and returns a :class:`Converted`: the backbone's state dict (bare timm / WideResNet keys) and the
input normalization the checkpoint's own wrapper applied, if it stored one. Normalization lives
inside our :class:`~dat_lightning.models.Classifier`, so the normalizer tensors are never loaded:
they are compared with the model's ``mean``/``std`` instead (see :func:`check_normalization`).

Layouts (what the original code saves):

- RobustBench model zoo (WRN family): ``{"state_dict": sd}`` or ``sd``, keys possibly prefixed by
  ``module.`` (DataParallel) and ``model.``; RobustBench's own loader strips both. Some wrappers
  store the normalizer as ``mu``/``sigma`` (e.g. Augustin2020Adversarial, i.e. RATIO in
  RobustBench) or ``normalize.mean``/``normalize.std``.
- MadryLab ``robustness`` (e.g. ImageNet / RestrictedImageNet ResNet-50): ``{"model": sd, ...}``,
  classifier under ``module.model.``, normalizer ``module.normalizer.new_mean``/``new_std``, and
  a second copy of both under ``module.attacker.`` (``model.`` / ``normalize.``).
- RATIO (Augustin, Meinke & Hein 2020, github.com/M4xim4l/InNOutRobustness): the bare WideResNet
  state dict (their NormalizationWrapper returns the inner model's state dict), optionally
  ``module.``-prefixed; an ``AveragedModel`` adds ``n_averaged``. The wrapper normalized with the
  CIFAR-10 statistics :data:`RATIO_CIFAR_MEAN` / :data:`RATIO_CIFAR_STD` (also for CIFAR-100).
- revisiting-at (Singh, Croce & Hein 2023, github.com/nmndeep/revisiting-at), e.g. ConvNeXt-L +
  ConvStem: ``weights_*.pt`` = ``DDP(WrappedModel(normalize_model(convnext)))`` state dict, keys
  ``module.base_model.normalize.{mean,std}`` and ``module.base_model.model.<timm convnext>``;
  ``weights_ema_*.pt`` lacks ``module.``; ``full_model_*.pth`` = ``{"model_state_dict": ...,
  "state_dict_ema": ...}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dat_lightning.checkpoints import CheckpointError

RATIO_CIFAR_MEAN = (0.4913997551666284, 0.48215855929893703, 0.4465309133731618)
RATIO_CIFAR_STD = (0.24703225141799082, 0.24348516474564, 0.26158783926049628)


@dataclass(frozen=True)
class Converted:
    """A backbone state dict and the normalization its source model applied (None: not stored)."""

    state: dict[str, Tensor]
    mean: Tensor | None = None
    std: Tensor | None = None


def unwrap(ckpt: Mapping[str, Any], containers: Sequence[str], source: str) -> dict[str, Any]:
    """The state dict inside ``ckpt``: the first of ``containers`` present, else ``ckpt`` itself."""
    for key in containers:
        if key in ckpt:
            inner = ckpt[key]
            if not isinstance(inner, Mapping):
                raise CheckpointError(f"{source}: {key!r} holds a {type(inner).__name__}, not a state dict")
            return dict(inner)
    return dict(ckpt)


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove each wrapper prefix from every key that starts with it, outermost first (in order)."""
    out = dict(state)
    for prefix in prefixes:
        out = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in out.items()}
    return out


def tensors_only(state: Mapping[str, Any]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def pop_normalizer(state: dict[str, Tensor], mean_key: str, std_key: str) -> tuple[Tensor | None, Tensor | None]:
    """Remove and return the normalizer buffers named ``mean_key``/``std_key`` (flattened)."""
    mean, std = state.pop(mean_key, None), state.pop(std_key, None)
    return (None if mean is None else mean.flatten().float(), None if std is None else std.flatten().float())


def from_robustbench(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    """RobustBench-format WRN (and any plain state dict): drop ``module.``/``model.`` and normalizers."""
    state = tensors_only(strip_prefixes(unwrap(ckpt, ("state_dict", "model_state_dict"), source),
                                        ("module.", "model.")))
    for mean_key, std_key in (("mu", "sigma"), ("normalize.mean", "normalize.std"), ("mean", "std")):
        if mean_key in state and std_key in state:
            mean, std = pop_normalizer(state, mean_key, std_key)
            return Converted(state, mean, std)
    return Converted(state)


def from_madrylab(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    """MadryLab ``robustness``: keep ``module.model.*``; the attacker's copy must be identical."""
    full = tensors_only(unwrap(ckpt, ("model", "state_dict"), source))
    model = {k[len("module.model."):]: v for k, v in full.items() if k.startswith("module.model.")}
    if not model:
        raise CheckpointError(
            f"{source} has no 'module.model.' keys, so it is not a MadryLab robustness checkpoint "
            f"(first keys: {', '.join(list(full)[:5]) or 'none'}); pick another init_ckpt_format"
        )
    attacker = {k[len("module.attacker.model."):]: v for k, v in full.items()
                if k.startswith("module.attacker.model.")}
    differing = sorted(k for k in attacker if k not in model or not torch.equal(attacker[k], model[k]))
    if differing:
        raise CheckpointError(
            f"{source}: the attacker's copy of the model differs from the classifier at "
            f"{', '.join(differing[:5])}; the checkpoint is inconsistent, refusing to guess which to load"
        )
    mean, std = pop_normalizer(dict(full), "module.normalizer.new_mean", "module.normalizer.new_std")
    return Converted(model, mean, std)


def from_ratio(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    """RATIO WRN-34-10: bare WideResNet keys; normalization implied (CIFAR-10 statistics)."""
    state = tensors_only(strip_prefixes(unwrap(ckpt, ("model_state_dict", "state_dict"), source),
                                        ("module.",)))
    state.pop("n_averaged", None)  # torch.optim.swa_utils.AveragedModel's counter
    return Converted(state, torch.tensor(RATIO_CIFAR_MEAN), torch.tensor(RATIO_CIFAR_STD))


def from_revisiting_at(ckpt: Mapping[str, Any], source: str, ema: bool = True) -> Converted:
    """revisiting-at (ConvNeXt + ConvStem): unwrap DDP, WrappedModel and normalize_model."""
    containers = ("state_dict_ema", "model_state_dict") if ema else ("model_state_dict", "state_dict_ema")
    state = tensors_only(strip_prefixes(unwrap(ckpt, (*containers, "model", "state_dict"), source),
                                        ("module.", "base_model.")))
    mean, std = pop_normalizer(state, "normalize.mean", "normalize.std")
    return Converted(strip_prefixes(state, ("model.",)), mean, std)


def check_normalization(converted: Converted, mean: Tensor, std: Tensor, source: str,
                        atol: float = 1e-3) -> None:
    """Raise unless the checkpoint's own normalization equals the model's (within ``atol``).

    A model evaluated with another mean/std than it was trained with loses accuracy and robustness
    without any error, so a mismatch is refused with the values to put in the config.
    """
    if converted.mean is None or converted.std is None:
        return
    mean, std = mean.flatten().float().cpu(), std.flatten().float().cpu()
    same = (converted.mean.shape == mean.shape and converted.std.shape == std.shape
            and torch.allclose(converted.mean, mean, atol=atol) and torch.allclose(converted.std, std, atol=atol))
    if not same:
        def fmt(t: Tensor) -> str:
            return "[" + ", ".join(f"{v:.4f}" for v in t.tolist()) + "]"

        raise CheckpointError(
            f"{source} was trained with input normalization mean={fmt(converted.mean)}, "
            f"std={fmt(converted.std)}, but the model normalizes with mean={fmt(mean)}, std={fmt(std)}. "
            f"Set model.net.mean={fmt(converted.mean)} model.net.std={fmt(converted.std)} "
            "(normalization lives inside the Classifier)."
        )
