"""What every command line of the package does around its work.

:func:`launch` checks the command line before Hydra creates anything: an unknown key lists the
valid ones, and the CLI's own ``validate`` checks the values (``num_samples=0``, ``steps=-1`` ...),
so a mistake ends with one ``error:`` line, exit code 1, and no run directory left behind. Then
Hydra calls the CLI's task, which runs inside :func:`in_run_directory`: the directory is claimed by
one launch (:mod:`.run_directory`), and every error becomes one message (:mod:`.errors`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dat_lightning.checkpoints import CheckpointError, read_checkpoint
from dat_lightning.cli import run_directory
from dat_lightning.cli.config_checks import check_overrides, cli_overrides
from dat_lightning.cli.errors import clear_errors

Validate = Callable[[DictConfig], None]


def launch(argv: list[str], config_name: str, run_task: Callable[[], Any], validate: Validate | None = None,
           checkpoints: tuple[str, ...] = ()) -> None:
    """Check the command line's arguments ``argv`` (without the program) against ``config_name``, and that the
    checkpoint files named by the keys ``checkpoints`` can be read, then call ``run_task`` (the entry
    point's function that Hydra wraps). Flags Hydra handles itself (``-m``, ``--cfg`` ...) skip the early
    checks; the task still validates inside the run."""
    overrides = cli_overrides(argv)
    if overrides is not None:
        with clear_errors():
            cfg = check_overrides(overrides, config_name)
            if validate is not None:
                validate(cfg)
            for key in checkpoints:
                path = OmegaConf.select(cfg, key, default=None)
                if path not in (None, "", "last", "null"):
                    try:
                        read_checkpoint(path, mmap=True)  # maps the tensors: cheap for any size
                    except CheckpointError as err:
                        raise CheckpointError(f"{key}: {err}") from None
    run_task()


def in_run_directory(cfg: DictConfig, task: Callable[[DictConfig], Any]) -> Any:
    """Run ``task(cfg)`` in Hydra's run directory, claimed by this launch, with clear errors."""
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    with clear_errors(output_dir):
        run_directory.claim(output_dir, cfg)
        result = task(cfg)
    close_process_group()
    return result


def close_process_group() -> None:
    """Take down the process group a multi-process launch made, once every process is done.

    A process that exits with the group alive can abort in gloo's worker threads at interpreter
    shutdown ("terminate called without an active exception", exit code -6) after all its work
    succeeded; the barrier first keeps one process from closing the group under another's last
    collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
