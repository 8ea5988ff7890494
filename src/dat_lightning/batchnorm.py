"""BatchNorm handling for stage two (SPEC "Stage 2: joint training, BatchNorm frozen")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm in ``module``: ``_BatchNorm`` covers BN1d/2d/3d, SyncBN and timm's BatchNormAct2d."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def freeze_batchnorm(module: nn.Module) -> int:
    """Put every BatchNorm in eval mode so running statistics stop changing.

    Affine weights keep ``requires_grad`` and keep training. Returns how many layers were frozen.
    """
    layers = batchnorm_layers(module)
    for bn in layers:
        bn.eval()
    return len(layers)


def has_training_batchnorm(module: nn.Module) -> bool:
    """True when some BatchNorm would still update its running statistics."""
    return any(bn.training for bn in batchnorm_layers(module))


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluate ``module`` in eval mode, then restore each submodule's own mode.

    A plain ``module.train()`` afterwards would unfreeze stage two's BatchNorm; restoring the
    per-submodule flags keeps frozen layers frozen.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.train(training)
