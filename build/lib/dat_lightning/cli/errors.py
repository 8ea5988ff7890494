"""One clear message and a non-zero exit code instead of a traceback wall.

The CLIs run their work inside :func:`clear_errors`. A mistake a user can make (a missing dataset,
a bad value, a checkpoint that does not fit, a diverged run) prints ``error: <what is wrong and how
to fix it>`` on stderr and exits with code 1. Hydra's ``InstantiationException`` is unwrapped to the
error that caused it, with the config key that was being built. Anything else is a bug: its
message is printed the same way and the full traceback goes to ``<run dir>/error.log``.
``HYDRA_FULL_ERROR=1`` re-raises instead (full traceback on the console). A preempted run
(:class:`~.preemption.Preempted`) exits with ``128 + signal`` after saying where its checkpoint is.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import HydraException, InstantiationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf.errors import OmegaConfBaseException

from dat_lightning.callbacks.preemption import Preempted
from dat_lightning.checkpoints import CheckpointError
from dat_lightning.data.datasets import CorruptImageError, DatasetNotFoundError
from dat_lightning.divergence import DivergenceError

# Errors whose message is the whole story: the user can act on it without a traceback.
USER_ERRORS = (
    ValueError,
    DatasetNotFoundError,
    CorruptImageError,
    CheckpointError,
    DivergenceError,
    HydraException,
    OmegaConfBaseException,
)

_FULL_KEY = re.compile(r"\nfull_key: (\S+)")


def root_cause(err: BaseException) -> tuple[BaseException, str | None]:
    """The error behind Hydra's instantiation wrappers, and the config key being built."""
    key = None
    while isinstance(err, InstantiationException) and err.__cause__ is not None:
        match = _FULL_KEY.search(str(err))
        key = match.group(1) if match else key
        err = err.__cause__
    return err, key


def describe(err: BaseException) -> str:
    """The one message a user sees for ``err``."""
    cause, key = root_cause(err)
    message = str(cause).strip() or type(cause).__name__
    if isinstance(cause, InstantiationException):  # no cause recorded: Hydra's text is all there is
        message = _FULL_KEY.sub("", message)
    if key:
        message += f"\n(while building `{key}` from the config)"
    return message


def is_user_error(err: BaseException) -> bool:
    cause, _ = root_cause(err)
    return isinstance(cause, USER_ERRORS) or isinstance(err, InstantiationException) and (
        isinstance(cause, TypeError)  # a config argument the target does not take
    )


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


@contextmanager
def clear_errors(output_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn exceptions into one message on stderr and an exit code (see the module docstring)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    try:
        yield
    except Preempted as err:
        print(str(err), file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
    except SIGTERMException:  # Lightning's own stop, outside the training steps: nothing to save
        fail("stopped by SIGTERM outside a training step (while setting up or evaluating); run "
             "the same command again to resume from the last checkpoint", code=128 + signal.SIGTERM)
    except Exception as err:  # noqa: BLE001 - this is the CLI's last line of defence
        if is_user_error(err):
            fail(describe(err))
        log_file = _write_traceback(err, output_dir)
        where = f"full traceback in {log_file}" if log_file else "traceback not saved"
        fail(
            f"unexpected {type(root_cause(err)[0]).__name__}: {describe(err)}\n"
            f"({where}; HYDRA_FULL_ERROR=1 prints it here)"
        )


def _write_traceback(err: BaseException, output_dir: str | os.PathLike | None) -> Path | None:
    if output_dir is None:
        return None
    try:
        path = Path(output_dir) / "error.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(err)))
        return path
    except OSError:
        return None
