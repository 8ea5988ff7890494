"""Scores of a generated feature set against a real one, beyond FID (torch-fidelity's code):

- improved precision and recall (Kynkaanniemi et al., 2019): each set is covered by balls around
  its points with the distance to the ``k``-th nearest neighbour as radius; precision is the share
  of generated points inside the real set's balls, recall the share of real points inside the
  generated set's balls;
- Kernel Inception Distance (Binkowski et al., 2018): the unbiased MMD^2 between the sets with the
  kernel ``(x.y / d + 1)^3``, mean and std over random subsets;
- reference statistics written elsewhere (mean and covariance in an ``.npz``, as pytorch-fid and
  the OpenAI evaluator save them), for FID against them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric


def precision_recall(real: Tensor, fake: Tensor, neighborhood: int = 3, batch_size: int = 10_000) -> dict[str, float]:
    """Improved precision and recall of ``fake`` features with respect to ``real`` ones."""
    for side, feats in (("real", real), ("generated", fake)):
        if len(feats) <= neighborhood:
            raise ValueError(f"precision/recall with k={neighborhood} needs more than {neighborhood} {side} "
                             f"feature vectors, got {len(feats)}")
    out = prc_features_to_metric(fake.float(), real.to(fake.device).float(), prc_neighborhood=int(neighborhood),
                                 prc_batch_size=int(batch_size), save_cpu_ram=True, verbose=False)
    return {"precision": float(out["precision"]), "recall": float(out["recall"])}


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 2020) -> dict[str, float | int]:
    """KID (mean and std over ``subsets`` random subsets of ``min(subset_size, len(real), len(fake))``
    vectors each, drawn with ``seed``)."""
    size = min(int(subset_size), len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors on each side, got {len(real)} real and {len(fake)}")
    out = kid_features_to_metric(fake.float().cpu(), real.float().cpu(), kid_subsets=int(subsets),
                                 kid_subset_size=size, rng_seed=int(seed), verbose=False)
    return {"kid": float(out["kernel_inception_distance_mean"]),
            "kid_std": float(out["kernel_inception_distance_std"]), "kid_subset_size": size}


def read_reference(path: str | Path, num_features: int) -> tuple[Tensor, Tensor]:
    """``(mu, sigma)`` from an ``.npz`` with arrays ``mu`` and ``sigma`` (other arrays are ignored;
    nothing in the file is unpickled), checked against the extractor's feature size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fid.reference: no file {path}")
    if not zipfile.is_zipfile(path):  # numpy would try to unpickle anything else
        raise ValueError(f"fid.reference {path} is not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"fid.reference {path} has no 'mu' and 'sigma' arrays (it has {sorted(data.files)}): "
                                 "give the statistics file that pytorch-fid or the OpenAI evaluator writes")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"fid.reference {path} is not a readable .npz file ({err})") from err
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise ValueError(f"fid.reference {path} holds pickled Python objects, not plain arrays: refused "
                         "(loading them could run code)") from err
    if mu.shape != (num_features,) or sigma.shape != (num_features, num_features):
        raise ValueError(f"fid.reference {path}: mu {mu.shape} and sigma {sigma.shape} do not fit the extractor's "
                         f"{num_features} features (statistics of another network or layer?)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"fid.reference {path} holds NaN or inf")
    return torch.from_numpy(mu), torch.from_numpy(sigma)
