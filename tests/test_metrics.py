"""Each evaluation metric against an independent computation on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from dat_lightning.attacks import pgd_maximize
from dat_lightning.metrics import calibration, counterfactual, ood, robustness
from dat_lightning.metrics.quality import (
    SampleQuality,
    classwise_fid,
    fid_from_features,
    inception_score,
    real_features,
)


# ------------------------------------------------------------------------------------ FID / IS
def gaussian(n: int, mean: list[float], std: list[float], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) * torch.tensor(std) + torch.tensor(mean)


def frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)) with scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_fid_of_two_gaussians_matches_the_closed_form():
    mean_a, std_a, mean_b, std_b = [0.0, 1.0, -1.0, 2.0], [1.0, 0.5, 2.0, 1.0], [1.0, 1.0, 0.0, 2.0], [2.0, 0.5, 1.0, 3.0]
    a, b = gaussian(40_000, mean_a, std_a, 0), gaussian(40_000, mean_b, std_b, 1)
    # Diagonal covariances: FID = ||mu_a - mu_b||^2 + sum_i (s_a,i - s_b,i)^2
    closed = sum((x - y) ** 2 for x, y in zip(mean_a, mean_b, strict=True)) + sum((x - y) ** 2 for x, y in zip(std_a, std_b, strict=True))
    value = fid_from_features(a, b)
    assert value == pytest.approx(closed, rel=0.03)
    assert value == pytest.approx(frechet_numpy(a.numpy(), b.numpy()), rel=1e-5)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-6)


class FeatureIdentity(nn.Module):
    """An "extractor" whose images are already features; logits = the first 3 features."""

    name = "identity"
    num_features = 4

    def forward(self, x):
        return x.flatten(1).float()

    def logits_from_features(self, f):
        return f[:, :3]


def test_sample_quality_scores_against_cached_real_features_and_labels_the_scores(tmp_path):
    real, fake = gaussian(500, [0, 0, 0, 0], [1, 1, 1, 1], 0), gaussian(300, [1, 0, 0, 0], [1, 2, 1, 1], 1)
    cache = tmp_path / "real.pt"
    labelled = [(x, torch.zeros(len(x), dtype=torch.long)) for x in torch.split(real, 128)]
    first_real, _ = real_features(FeatureIdentity(), labelled, cache)

    def no_real_images():
        raise AssertionError("the cached features should have been used")
        yield

    cached_real, _ = real_features(FeatureIdentity(), no_real_images(), cache)
    assert torch.equal(first_real, cached_real)
    scores = SampleQuality(FeatureIdentity(), cached_real, splits=3)(torch.split(fake, 100))
    assert set(scores) >= {"fid_identity", "is_identity", "is_identity_std"} and scores["extractor"] == "identity"
    assert scores["fid_identity"] == pytest.approx(frechet_numpy(real.float().numpy(), fake.float().numpy()), rel=1e-3)
    assert (scores["num_samples"], scores["num_real"]) == (300, 500)


def test_an_extractor_without_a_head_gets_fid_and_says_why_there_is_no_is():
    class NoLogits(nn.Module):
        name, num_features, source = "headless", 4, "a test network"

        def forward(self, x):
            return x

    real, fake = gaussian(50, [0] * 4, [1] * 4, 0), gaussian(40, [1] * 4, [1] * 4, 1)
    scores = SampleQuality(NoLogits(), real, inception_score=True)([fake])
    assert "fid_headless" in scores and not any(k.startswith("is_") for k in scores)
    assert scores["inception_score_not_computed"] == "headless (a test network) has no classification head"


@pytest.mark.filterwarnings("ignore:std\(\)")  # one split has no spread
def test_inception_score_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 5, generator=g) * 3
    p = logits.double().softmax(1).numpy()
    marginal = p.mean(0)
    direct = math.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))
    mean, _ = inception_score(logits, splits=1)
    assert mean == pytest.approx(direct, rel=1e-4)
    # Confident, class-balanced predictions over K classes score K.
    confident = 50.0 * torch.eye(5).repeat(20, 1)
    assert inception_score(confident, splits=1)[0] == pytest.approx(5.0, rel=1e-3)


def test_classwise_fid_scores_each_class_against_its_own_real_images():
    real = torch.cat([gaussian(200, [0, 0], [1, 1], 0), gaussian(200, [5, 5], [1, 1], 1)])
    real_labels = torch.tensor([0] * 200 + [1] * 200)
    fake = torch.cat([gaussian(100, [0, 0], [1, 1], 2), gaussian(100, [5, 5], [1, 1], 3), gaussian(1, [0, 0], [1, 1], 4)])
    fake_labels = torch.tensor([0] * 100 + [1] * 100 + [2])
    scores = classwise_fid(real, real_labels, fake, fake_labels)
    assert set(scores) == {0, 1}  # class 2 has a single fake (and no real) image
    assert max(scores.values()) < 0.5  # same distributions; swapped classes would give ~50
    swapped = classwise_fid(real, real_labels, fake[:200], 1 - fake_labels[:200])
    assert min(swapped.values()) > 40


# ------------------------------------------------------------------------------------ calibration
def two_class_logits(confidences, predicted):
    """Logits whose softmax gives ``confidence`` to class ``predicted`` (2 classes)."""
    rows = []
    for c, k in zip(confidences, predicted, strict=True):
        row = [math.log(1 - c), math.log(1 - c)]
        row[k] = math.log(c)
        rows.append(row)
    return torch.tensor(rows)


def test_ece_on_hand_made_logits():
    # Two samples at confidence 0.92 (one right, one wrong), two at 0.62 (both right), 20 bins:
    # ECE = 2/4 |0.5 - 0.92| + 2/4 |1.0 - 0.62| = 0.21 + 0.19 = 0.40
    logits = two_class_logits([0.92, 0.92, 0.62, 0.62], [0, 0, 1, 1])
    labels = torch.tensor([0, 1, 1, 1])
    assert calibration.expected_calibration_error(logits, labels, n_bins=20) == pytest.approx(0.40, abs=1e-5)
    bins = calibration.reliability_bins(logits, labels, n_bins=20)
    assert bins["count"].sum() == 4 and bins["count"][18] == 2 and bins["count"][12] == 2
    assert bins["accuracy"][18] == pytest.approx(0.5) and bins["confidence"][12] == pytest.approx(0.62)


def test_reliability_bins_reproduce_the_ece():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 10, generator=g) * 2, torch.randint(0, 10, (500,), generator=g)
    bins = calibration.reliability_bins(logits, labels, n_bins=20)
    filled = bins["count"] > 0
    from_bins = (bins["count"][filled] / 500 * (bins["accuracy"][filled] - bins["confidence"][filled]).abs()).sum()
    assert float(from_bins) == pytest.approx(calibration.expected_calibration_error(logits, labels, 20), rel=1e-4)


def test_reliability_diagram_is_written(tmp_path):
    logits, labels = two_class_logits([0.92, 0.62], [0, 1]), torch.tensor([0, 0])
    bins = calibration.reliability_bins(logits, labels)
    path = calibration.plot_reliability_diagram(bins, 0.3, tmp_path / "r.png")
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------------------------ OOD
def test_auroc_equals_the_pairwise_count_with_ties():
    g = torch.Generator().manual_seed(0)
    s_in, s_out = torch.randint(0, 6, (40,), generator=g).float(), torch.randint(0, 5, (30,), generator=g).float()
    wins = (s_in[:, None] > s_out[None, :]).float().sum() + 0.5 * (s_in[:, None] == s_out[None, :]).float().sum()
    assert ood.auroc(s_in, s_out) == pytest.approx(float(wins) / (40 * 30), abs=1e-6)


def test_scores_are_confidence_and_negative_energy():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(ood.max_softmax(logits), torch.tensor([math.exp(3) / sum(map(math.exp, [1, 2, 3])), 1 / 3]))
    assert torch.allclose(ood.negative_energy(logits), torch.tensor([math.log(sum(map(math.exp, [1, 2, 3]))), math.log(3)]))


def test_adversarial_ood_raises_the_score_inside_the_ball(linear_model):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(8, 3, 2, 2, generator=g, dtype=torch.float64)
    for score in ood.SCORES.values():
        x_adv = ood.adversarial_ood(linear_model, x, score, eps=0.3, step_size=0.05, steps=10)
        assert (score(linear_model(x_adv)) >= score(linear_model(x)) - 1e-9).all()
        assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.3 + 1e-9).all() and x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_maximize_reaches_the_closed_form_optimum_of_a_linear_objective():
    w = torch.tensor([3.0, -4.0, 0.0, 0.0], dtype=torch.float64)  # ||w|| = 5
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    out = pgd_maximize(lambda z: z @ w, x, norm="l2", eps=0.1, step_size=0.05, steps=5)
    assert torch.allclose(out, x + 0.1 * w / 5, atol=1e-9)  # the ball's point furthest along w


# ------------------------------------------------------------------------------------ counterfactuals
def test_counterfactual_targets_are_uniform_over_the_other_classes():
    y = torch.arange(10).repeat(500)
    t = counterfactual.counterfactual_targets(y, 10, torch.Generator().manual_seed(0))
    assert (t != y).all() and t.min() >= 0 and t.max() <= 9
    shifts = torch.bincount((t - y) % 10, minlength=10)
    assert shifts[0] == 0 and shifts[1:].min() > 0.8 * 5000 / 9


def test_counterfactuals_raise_target_confidence_with_eps(linear_model):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 2, 2, generator=g, dtype=torch.float64)
    targets = counterfactual.counterfactual_targets(linear_model(x).argmax(1), 3, g)
    previous = counterfactual.target_confidence(linear_model(x), targets)
    for eps in (0.1, 0.3, 1.0):
        x_cf = counterfactual.counterfactuals(linear_model, x, targets, eps=eps, steps=20)
        conf = counterfactual.target_confidence(linear_model(x_cf), targets)
        assert (conf >= previous - 1e-9).all()
        assert ((x_cf - x).flatten(1).norm(dim=1) <= eps + 1e-9).all()
        previous = conf
    assert (previous > counterfactual.target_confidence(linear_model(x), targets)).all()


def test_counterfactual_grid_is_written(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    path = counterfactual.plot_counterfactual_grid(x, [x, x], [0.5, 1.0], torch.tensor([0, 1]), torch.tensor([1, 0]),
                                                   tmp_path / "g.png", confidences=[torch.ones(2)] * 2)
    assert path.stat().st_size > 1000


# ------------------------------------------------------------------------------------ AutoAttack
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
        self.num_classes = 3

    def forward(self, x):
        return self.body(x)


def test_autoattack_refuses_a_model_in_train_mode():
    net = TinyNet().eval()
    net.body[1].train()  # one BatchNorm left in train mode is enough to falsify the result
    with pytest.raises(RuntimeError, match="train mode"):
        robustness.autoattack(net, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), eps=0.5)


@pytest.mark.parametrize("x", [torch.rand(4, 1, 8, 8) * 2 - 0.5, (torch.rand(4, 1, 8, 8) - 0.45) / 0.3])
def test_autoattack_refuses_inputs_outside_the_unit_interval(x):
    with pytest.raises(ValueError, match=r"not in \[0, 1\]"):
        robustness.autoattack(TinyNet().eval(), x, torch.zeros(4, dtype=torch.long), eps=0.5)


def test_autoattack_custom_list_reports_its_threat_model():
    net = TinyNet().eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)  # all correct: the clean accuracy is 1 by construction
    out = robustness.autoattack(net, x, y, eps=0.5, norm="l2", attacks=["apgd-ce"], n_restarts=1, n_iter=5)
    tm = out["threat_model"]
    assert out["clean_accuracy"] == 1.0 and 0.0 <= out["robust_accuracy"] <= 1.0
    assert (tm["norm"], tm["eps"], tm["n_examples"], tm["attacks"]) == ("L2", 0.5, 16, ["apgd-ce"])
    assert tm["max_perturbation"] <= 0.5 + 1e-6 and tm["library"].startswith("pyautoattack")
    with pytest.raises(ValueError, match="custom"):
        robustness.autoattack(net, x, y, eps=0.5, version="standard", n_iter=5)


# ------------------------------------------------------------------------------------ extractors
def test_offline_extractor_scores_fashion_mnist_sized_images():
    from dat_lightning.metrics.extractors import build_extractor

    ext = build_extractor("cifar_resnet18")
    gray = torch.rand(2, 1, 28, 28)
    feats = ext(gray)
    assert feats.shape == (2, 512) and ext.logits_from_features(feats).shape == (2, 10)
    assert torch.allclose(feats, ext(gray.expand(-1, 3, -1, -1)))  # grayscale = repeated RGB
