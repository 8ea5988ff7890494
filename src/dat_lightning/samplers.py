"""The test-time samplers, one registry and one signature (as k-diffusion's samplers share theirs).

Every sampler is ``sampler(model, x0, y, *, step_size, steps, **options) -> x_T``:

- ``pgd``: DAT's normalized-gradient chain (Eq. 8 / 14, :func:`~dat_lightning.sampling.pgd_sample`).
- ``sgld``: JEM's Langevin dynamics (:func:`~dat_lightning.sgld.sgld_sample`), option ``noise``.
- ``pyld``: JEM++'s clipped, noiseless step (:func:`~dat_lightning.methods.jempp.pyld_sample`),
  option ``clip``.

:class:`SamplerSpec` names one with its options (``sampling.sampler``, ``sampling.noise``,
``sampling.clip`` of every config), so any checkpoint can be sampled with any method's sampler;
a checkpoint's own config says which one its method trains with. SGLD noise is drawn per item
(:func:`item_generators`), so an item's sample is the same whoever draws it, in any batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dat_lightning.methods.jempp import pyld_sample
from dat_lightning.sampling import pgd_sample
from dat_lightning.sgld import sgld_sample

SAMPLERS: dict[str, Callable[..., Tensor]] = {"pgd": pgd_sample, "sgld": sgld_sample, "pyld": pyld_sample}


@dataclass(frozen=True)
class SamplerSpec:
    """Which sampler draws test-time samples and its own options (the others ignore them)."""

    name: str = "pgd"
    noise: float = 0.0  # sgld: sigma of the Gaussian added per step (pixel units)
    clip: float = 0.5  # pyld: per-pixel bound of each step

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {self.name!r}")
        if not self.noise >= 0:
            raise ValueError(f"sampler noise must be >= 0, got {self.noise}")
        if not self.clip > 0:
            raise ValueError(f"sampler clip must be > 0, got {self.clip}")
        object.__setattr__(self, "noise", float(self.noise))
        object.__setattr__(self, "clip", float(self.clip))

    @classmethod
    def of(cls, value: SamplerSpec | str | Mapping[str, Any] | None) -> SamplerSpec:
        """A spec from a name, a node ``{name, noise, clip}`` (missing keys: defaults) or None (pgd)."""
        if value is None:
            return cls()
        if isinstance(value, SamplerSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        known = {k: value[k] for k in ("name", "noise", "clip") if value.get(k) is not None}
        return cls(**known)

    def options(self, item_indices: Sequence[int] | None = None) -> dict[str, Any]:
        """The keyword arguments this sampler takes beyond the shared ones."""
        if self.name == "sgld":
            gens = item_generators(item_indices) if item_indices is not None else None
            return {"noise": self.noise, "generator": gens}
        if self.name == "pyld":
            return {"clip": self.clip}
        return {}


def item_generators(item_indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per item, seeded with the item's index: its noise does not depend on the
    batch it is drawn in, nor on the process that draws it."""
    return [torch.Generator().manual_seed(int(i)) for i in item_indices]


def run_sampler(spec: SamplerSpec, model: Callable[[Tensor], Tensor], x0: Tensor, y: Tensor | None, *,
                step_size: float, steps: int, item_indices: Sequence[int] | None = None) -> Tensor:
    """``x_T`` of ``spec``'s sampler from seeds ``x0`` towards classes ``y`` (None: the marginal)."""
    return SAMPLERS[spec.name](model, x0, y, step_size=step_size, steps=steps, **spec.options(item_indices))
