"""The Fashion-MNIST judge: its training recipe learns, its weights load weights-only into an
extractor that computes the same features and carries the weights' fingerprint in its name."""

from __future__ import annotations

import hashlib

import pytest
import torch

from dat_lightning.metrics.extractors import build_extractor
from dat_lightning.metrics.fmnist_judge import (
    FashionMNISTCNN,
    FashionMNISTJudgeFeatures,
    train_judge,
)
from dat_lightning.metrics.quality import check_extractor, has_head
from helpers import run_cli


def bright_half(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: the top half is bright; class 1: the bottom half (both survive a left-right flip)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    x[y == 0, :, :14] += 0.6
    x[y == 1, :, 14:] += 0.6
    return x, y


def test_the_recipe_learns_a_separable_task():
    x, y = bright_half(64, seed=0)
    net = train_judge(x, y, epochs=4, batch_size=16)
    x_new, y_new = bright_half(64, seed=1)
    with torch.no_grad():
        assert (net(x_new).argmax(1) == y_new).all()
    assert not net.training


def test_the_recipe_refuses_images_of_another_shape():
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        train_judge(torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))


def test_trained_weights_load_into_the_extractor_with_their_fingerprint(tmp_path):
    weights = tmp_path / "judge.pt"  # the CLI, as a user makes the judge
    made = run_cli([f"out={weights}", "epochs=1", "limit=256"], cwd=tmp_path, module="dat_lightning.judge")
    assert made.returncode == 0 and "Fashion-MNIST judge: test accuracy" in made.stdout, made.stderr[-3000:]
    ext = build_extractor("fmnist_cnn", weights_path=weights)
    assert ext.name == f"fmnist_cnn_{hashlib.sha256(weights.read_bytes()).hexdigest()[:8]}"
    check_extractor(ext)
    assert has_head(ext)

    state = torch.load(weights, weights_only=True)
    x = torch.rand(5, 1, 28, 28)
    h = torch.relu(torch.nn.functional.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1))
    h = torch.relu(torch.nn.functional.conv2d(h, state["conv2.weight"], state["conv2.bias"], padding=1))
    h = torch.nn.functional.max_pool2d(h, 2)
    h = torch.relu(torch.nn.functional.conv2d(h, state["conv3.weight"], state["conv3.bias"], padding=1))
    h = torch.nn.functional.max_pool2d(h, 2)
    expected = torch.relu(h.flatten(1) @ state["fc.weight"].T + state["fc.bias"])
    torch.testing.assert_close(ext(x), expected)
    torch.testing.assert_close(ext.logits_from_features(expected), expected @ state["head.weight"].T + state["head.bias"])
    assert ext(torch.rand(2, 1, 32, 32)).shape == (2, 256)  # other sizes are resized

    ext.train()
    assert not ext.net.training  # a metric's network never trains

    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in state.items()}, other)
    assert FashionMNISTJudgeFeatures(other).name != ext.name  # other weights, other label and cache


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dat_lightning.judge"):
        FashionMNISTJudgeFeatures(tmp_path / "absent.pt")


def test_rgb_images_are_refused(tmp_path):
    weights = tmp_path / "judge.pt"
    torch.save(FashionMNISTCNN().state_dict(), weights)  # any weights: the check is on the input
    with pytest.raises(ValueError, match="1-channel"):
        FashionMNISTJudgeFeatures(weights)(torch.rand(2, 3, 28, 28))
