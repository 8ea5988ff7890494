"""dat-lightning: Dual Adversarial Training with PyTorch Lightning and Hydra.

The public API (imported lazily, so that ``import dat_lightning`` stays light):

- :class:`DATModule`, the LightningModule of both stages;
- :func:`pgd_attack` / :class:`PGDSettings` (Eq. 10-11), :func:`pgd_sample` /
  :class:`ChainSettings` (the generative chain, Eq. 8 / 14), :class:`DATObjective` (Eq. 9-12);
- :func:`load_classifier` / :func:`load_run`, a checkpoint's classifier (and its config);
- the other methods' modules :class:`EnergyModule` (JEM, JEM++, EB-JDAT) and :class:`RatioModule`,
  and the samplers behind one signature, :func:`run_sampler` / :class:`SamplerSpec` (``pgd``,
  ``sgld``, ``pyld``).
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DATModule": "dat_lightning.module",
    "DATObjective": "dat_lightning.losses",
    "PGDSettings": "dat_lightning.attacks",
    "pgd_attack": "dat_lightning.attacks",
    "ChainSettings": "dat_lightning.sampling",
    "pgd_sample": "dat_lightning.sampling",
    "load_classifier": "dat_lightning.checkpoints.loading",
    "load_run": "dat_lightning.checkpoints.loading",
    "EnergyModule": "dat_lightning.methods.energy_module",
    "RatioModule": "dat_lightning.methods.ratio_module",
    "SamplerSpec": "dat_lightning.samplers",
    "run_sampler": "dat_lightning.samplers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dat_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
