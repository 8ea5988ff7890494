"""Reading weights safely: ``weights_only=True`` everywhere, and errors that say what is wrong."""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
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
        with warnings.catch_warnings():
            # torch's note on pickle protocols precedes the refusal explained below: noise
            warnings.filterwarnings("ignore", message=".*Detected pickle protocol.*")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as err:
                if not mmap or "mmap" not in str(err):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError,
            IndexError, ValueError, UnicodeDecodeError, TypeError) as err:
        raise unreadable(path, err) from err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")
    return dict(obj)


def unreadable(path: Path, err: Exception) -> CheckpointError:
    """Why ``torch.load(path, weights_only=True)`` failed, in words a user can act on."""
    if path.stat().st_size == 0:
        return CheckpointError(f"{path} is empty (0 bytes): not a checkpoint. Re-download or re-copy it.")
    refused = re.search(r"GLOBAL (\S+)", str(err))
    name = refused.group(1) if refused else None
    with path.open("rb") as f:
        archive = f.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(path)  # a zip, maybe cut short
    if name is None and not archive:
        kind, name = _pickle_globals(path)
        if kind is not None:
            return CheckpointError(f"{path} is not a checkpoint: it is {kind}, neither a PyTorch archive "
                                   "nor a pickle. Give the file torch.save wrote (.ckpt, .pt, .pth).")
    if name is not None:
        return CheckpointError(
            f"{path} holds more than weights: loading it needs the object {name}, and loading such a "
            "file could run code (weights_only=True refused it). dat-lightning loads weights only. "
            "If you trust the file, re-save its weights as a plain state dict: "
            "torch.save(model.state_dict(), 'weights.pt')."
        )
    detail = _unpickler_detail(err) if isinstance(err, pickle.UnpicklingError) else (
        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}")
    return CheckpointError(f"{path} is truncated or corrupt and cannot be read ({detail}). "
                           "Re-download or re-copy it.")


def _unpickler_detail(err: Exception) -> str:
    """The unpickler's own complaint inside torch's long weights_only message."""
    match = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n|$)", str(err))
    return match.group(1) if match else str(err).splitlines()[0]


def _pickle_globals(path: Path) -> tuple[str | None, str | None]:
    """``(what the file is if not a pickle, first global it imports)``, read without unpickling.

    :mod:`pickletools` walks the opcodes only; nothing in the file runs.
    """
    with path.open("rb") as f:
        head = f.read(4096)
    if head[:1] != b"\x80":  # every pickle of protocol 2 or later (all torch.save files) starts so
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = ""
        if text.strip() and all(c.isprintable() or c.isspace() for c in text):
            return f"a text file (starting {text.strip().splitlines()[0][:60]!r})", None
        return f"binary data (starting {head[:12]!r})", None
    strings: list[str] = []
    try:
        with path.open("rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name == "GLOBAL":
                    return None, str(arg).replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return None, f"{strings[-2]}.{strings[-1]}"
                if isinstance(arg, str):
                    strings.append(arg)
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        pass  # a pickle cut short: truncated
    return None, None


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


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") or "none"


def check_fits(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing the missing, unexpected and wrong-shape keys of
    ``state`` against ``expected``, and any tensor holding NaN or inf."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{source} does not fit the model: missing keys: {_show(missing)}; unexpected keys: "
            f"{_show(unexpected)}; wrong shapes: {_show(wrong_shape)}. Check that the experiment config "
            "(architecture, num_classes, in_chans) matches the one the checkpoint was trained with."
        )
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        raise CheckpointError(
            f"{source} holds NaN or inf in {len(broken)} tensor(s): {_show(broken)}. The model diverged "
            "before this checkpoint was written; use an earlier one (e.g. checkpoints/stage1.ckpt, or "
            "best-fid.ckpt)."
        )


def load_matching(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, after :func:`check_fits`.

    A state dict of the bare backbone (no ``backbone.`` prefix) is accepted for a Classifier.
    """
    expected = model.state_dict()
    if not any(k in expected for k in state) and hasattr(model, "backbone"):
        state = {f"backbone.{k}": v for k, v in state.items()}
    check_fits(expected, state, source)
    model.load_state_dict(state, strict=True)
