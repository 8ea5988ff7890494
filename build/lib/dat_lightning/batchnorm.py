"""BatchNorm handling for stage two (docs/algorithm.md, "Stage two")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
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


@torch.no_grad()
def broadcast_batchnorm_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s BatchNorm buffers (running statistics, batch counts) to every rank.

    What DDP's per-forward buffer broadcast does (which Lightning's manual optimization turns off):
    without it, each rank's running statistics follow its own data shard. One broadcast per
    buffer dtype; a no-op without an initialized multi-process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for bn in batchnorm_layers(module):
        for buf in bn.buffers(recurse=False):
            by_dtype.setdefault(buf.dtype, []).append(buf)
    for bufs in by_dtype.values():
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, src=src)
        for buf, chunk in zip(bufs, flat.split([b.numel() for b in bufs]), strict=True):
            buf.copy_(chunk.view_as(buf))


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
