"""Reading weights safely: ``weights_only=True`` everywhere, and errors that say what is wrong."""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

NET_PREFIX = "net."


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a clear message for each way it can fail.

    ``mmap=True`` maps the tensors instead of reading them (cheap when only the metadata is needed).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if not mmap or "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused is None and "safe_globals" not in str(err):  # not a refused class: bad bytes
            raise CheckpointError(
                f"{path} is truncated or corrupt and cannot be read (not a valid pickle: "
                f"{_unpickler_detail(err)}). Re-download or re-copy it."
            ) from err
        what = f"the object {refused.group(1)}" if refused else "more than tensors and plain containers"
        raise CheckpointError(
            f"{path} needs {what} to load (weights_only=True refused it). Arbitrary pickles can "
            "run code, so dat-lightning does not load them. Re-save the weights as a plain state "
            "dict: torch.save(model.state_dict(), 'weights.pt')."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}). Re-download or re-copy it."
        ) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return dict(obj)


def _unpickler_detail(err: Exception) -> str:
    """The unpickler's own complaint inside torch's long weights_only message."""
    match = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n|$)", str(err))
    return match.group(1) if match else str(err).splitlines()[0]


def classifier_state_dict(ckpt: Mapping[str, Any], ema: bool = True) -> dict[str, Tensor]:
    """The classifier's weights from a training checkpoint or a plain state dict.

    A Lightning checkpoint written with EMA keeps the averaged weights in ``state_dict`` and the
    raw ones in ``current_model_state``; ``ema=False`` picks the raw ones. The module's ``net.``
    prefix is stripped so the result loads into a :class:`~dat_lightning.models.Classifier`.
    """
    if "state_dict" in ckpt:
        key = "state_dict" if ema or "current_model_state" not in ckpt else "current_model_state"
        state = ckpt[key]
    else:
        state = ckpt
    if any(k.startswith(NET_PREFIX) for k in state):
        state = {k[len(NET_PREFIX) :]: v for k, v in state.items() if k.startswith(NET_PREFIX)}
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def load_matching(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly; a mismatch lists missing and unexpected keys.

    A state dict of the bare backbone (no ``backbone.`` prefix) is accepted for a Classifier.
    """
    expected = model.state_dict()
    if not any(k in expected for k in state) and hasattr(model, "backbone"):
        state = {f"backbone.{k}": v for k, v in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"

    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{source} does not fit the model: missing keys: {show(missing)}; unexpected keys: "
            f"{show(unexpected)}; wrong shapes: {show(wrong_shape)}. Check that the experiment config "
            "(architecture, num_classes, in_chans) matches the one the checkpoint was trained with."
        )
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        raise CheckpointError(
            f"{source} holds NaN or inf in {len(broken)} tensor(s): {show(broken)}. The model diverged "
            "before this checkpoint was written; use an earlier one (e.g. checkpoints/stage1.ckpt, or "
            "best-fid.ckpt)."
        )
    model.load_state_dict(state, strict=True)
