"""Precision/recall, KID and reference statistics (issue 17, points 5 and 6), each against a direct
computation on tiny feature sets, and through ``SampleQuality`` and ``sample_quality``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from dat_lightning.metrics.feature_sets import (
    kernel_inception_distance,
    precision_recall,
    read_reference,
)
from dat_lightning.metrics.quality import fid_from_features, sample_quality

FID_CFG = {"inception_score": False, "splits": 10, "precision_recall": True, "neighborhood": 3, "kid": True,
           "kid_subsets": 10, "kid_subset_size": 1000, "reference": None}


def features(n: int, shift: float, scale: float, seed: int, dim: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g) * scale + shift


def direct_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """The definition, with loops: a point is covered by a set when it lies within the k-NN radius
    (the set's own points excluded... itself counted as its 0th neighbour) of one of its points."""
    def radii(points):
        d = np.linalg.norm(points[:, None] - points[None], axis=2)
        return np.sort(d, axis=1)[:, k]  # index 0 is the point itself

    def covered(queries, points):
        r = radii(points)
        return np.mean([any(np.linalg.norm(q - p) <= rp for p, rp in zip(points, r, strict=True)) for q in queries])

    return float(covered(fake, real)), float(covered(real, fake))


def direct_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel (x.y / d + 1)^3 over the whole sets."""
    d = real.shape[1]

    def kernel(a, b):
        return (a @ b.T / d + 1) ** 3

    m, n = len(fake), len(real)
    k_ff, k_rr, k_fr = kernel(fake, fake), kernel(real, real), kernel(fake, real)
    return float((k_ff.sum() - np.trace(k_ff)) / (m * (m - 1)) + (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
                 - 2 * k_fr.mean())


def test_precision_and_recall_match_the_definition():
    real, fake = features(40, 0.0, 1.0, 0), features(30, 1.0, 0.5, 1)
    ours = precision_recall(real, fake, neighborhood=3, batch_size=7)  # batches cut across the sets
    p, r = direct_precision_recall(real.double().numpy(), fake.double().numpy(), 3)
    assert (ours["precision"], ours["recall"]) == (pytest.approx(p), pytest.approx(r))
    assert 0 < p < 1 and 0 < r < 1  # a case where both can be wrong
    same = precision_recall(real, real, neighborhood=3)
    assert same == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_needs_more_points_than_neighbours():
    with pytest.raises(ValueError, match="more than 3 generated"):
        precision_recall(features(10, 0, 1, 0), features(3, 0, 1, 1), neighborhood=3)


def test_kid_matches_the_unbiased_mmd_of_the_cubic_kernel():
    real, fake = features(60, 0.0, 1.0, 0), features(50, 0.5, 1.0, 1)
    # one subset of all the points: a permutation, and the unbiased MMD^2 ignores the order
    ours = kernel_inception_distance(real, fake, subsets=1, subset_size=10_000)
    assert ours["kid_subset_size"] == 50
    smaller_real = real[:50]
    ours = kernel_inception_distance(smaller_real, fake, subsets=1, subset_size=50)
    assert ours["kid"] == pytest.approx(direct_kid(smaller_real.double().numpy(), fake.double().numpy()), rel=1e-4)
    assert kernel_inception_distance(real, fake, subsets=5, subset_size=20, seed=3)["kid_std"] > 0


def test_fid_against_reference_statistics_equals_fid_against_their_features(tmp_path):
    real, fake = features(400, 0.0, 1.0, 0), features(300, 0.3, 1.5, 1)
    path = tmp_path / "ref.npz"
    np.savez(path, mu=real.double().numpy().mean(0), sigma=np.cov(real.double().numpy(), rowvar=False),
             arr_0=np.zeros((2, 4, 4, 3), np.uint8))  # an OpenAI reference batch also holds images
    scorer = sample_quality(FID_CFG | {"reference": str(path)}, Identity())
    scores = scorer([fake])
    assert scores["fid_identity"] == pytest.approx(fid_from_features(real, fake), rel=1e-5)
    assert scores["real"] == f"reference statistics {path}"
    assert "precision_identity" not in scores and "precision_recall_kid_not_computed" in scores


@pytest.mark.parametrize("arrays, message", [
    ({"mean": np.zeros(5), "cov": np.eye(5)}, "no 'mu' and 'sigma'"),
    ({"mu": np.zeros(4), "sigma": np.eye(4)}, "do not fit the extractor's 5 features"),
    ({"mu": np.full(5, np.nan), "sigma": np.eye(5)}, "NaN"),
    ({"mu": np.array([object()] * 5), "sigma": np.eye(5)}, "pickled Python objects"),
])
def test_bad_reference_files_are_named(tmp_path, arrays, message):
    path = tmp_path / "ref.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        read_reference(path, 5)


def test_not_an_npz_and_a_missing_file(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npz"):
        read_reference(tmp_path / "text.npz", 5)
    with pytest.raises(FileNotFoundError, match="no file"):
        read_reference(tmp_path / "missing.npz", 5)


class Identity(nn.Module):
    name, num_features = "identity", 5

    def forward(self, x):
        return x.float()


def test_sample_quality_reports_every_score_on_the_same_features_whatever_the_sharing():
    real, fake = features(80, 0.0, 1.0, 0), features(60, 0.4, 1.2, 1)
    scorer = sample_quality(FID_CFG | {"kid_subset_size": 40}, Identity(), real)
    whole = scorer([fake])
    pieces = scorer(torch.split(fake, 7))
    assert whole == pieces
    p, r = direct_precision_recall(real.double().numpy(), fake.double().numpy(), 3)
    assert (whole["precision_identity"], whole["recall_identity"]) == (pytest.approx(p), pytest.approx(r))
    assert whole["kid_subset_size"] == 40 and whole["kid_subsets"] == 10 and whole["kid_identity"] > 0
    assert whole["real"] == "80 real images" and whole["num_real"] == 80
    assert set(itertools.chain(whole)) >= {"fid_identity", "kid_identity_std", "pr_neighborhood", "extractor_source"}
