"""Checkpoints: reading them safely (weights only, clear errors) and what their stored config may build."""

from dat_lightning.checkpoints.reading import (
    NET_PREFIX,
    CheckpointError,
    check_fits,
    classifier_state_dict,
    load_matching,
    read_checkpoint,
)

__all__ = ["NET_PREFIX", "CheckpointError", "check_fits", "classifier_state_dict", "load_matching", "read_checkpoint"]
