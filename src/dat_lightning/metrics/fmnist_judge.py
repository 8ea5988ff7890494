"""A Fashion-MNIST judge of sample quality: the features of a plain CNN trained on Fashion-MNIST.

The offline default extractor, a CIFAR-10 ResNet-18 looking at upsampled gray images, ranks
pixel-saturated Fashion-MNIST samples above garment-like ones (README, "CPU-scale reproduction").
This network has seen the domain: it is trained on the Fashion-MNIST train split with one fixed
recipe (``python -m dat_lightning.judge``, a few minutes on a CPU). It is neither
robust nor Inception, so its FIDs are on their own scale, and they carry the name
``fmnist_cnn_<first 8 hex digits of the weights' sha256>``: scores from different weights never
share a label or a cached real-statistics file.

    python -m dat_lightning.judge            # writes the default weights file
    python -m dat_lightning.evaluate ckpt=... metrics=[fid] fid.extractor=fmnist_cnn
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.checkpoints.writing import atomic_torch_save

IMAGE_SIZE = 28


def default_weights_path() -> Path:
    """``$DAT_CACHE/fmnist_cnn_judge.pt`` (``DAT_CACHE`` defaults to ``~/.cache/dat_lightning``)."""
    cache = os.environ.get("DAT_CACHE") or Path.home() / ".cache" / "dat_lightning"
    return Path(cache).expanduser() / "fmnist_cnn_judge.pt"


class FashionMNISTCNN(nn.Module):
    """Three 3x3 convolutions (32, 64, 128 channels, two max-pools) and a 256-unit ReLU layer
    whose output is the feature vector; a linear head gives the class logits."""

    num_features = 256

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * (IMAGE_SIZE // 4) ** 2, self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_judge(images: Tensor, labels: Tensor, *, epochs: int = 3, batch_size: int = 128, lr: float = 1e-3,
                seed: int = 0, progress: bool = False) -> FashionMNISTCNN:
    """The judge's fixed recipe: Adam, cross-entropy, random horizontal flips (garments are
    left-right symmetric), ``images`` (N, 1, 28, 28) in [0, 1]. Returns the network in eval mode."""
    if images.ndim != 4 or images.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"the judge trains on (N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}) images, got {tuple(images.shape)}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeds the layers' initialization, not the caller's RNG
        torch.manual_seed(seed)
        net = FashionMNISTCNN(num_classes=int(labels.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        batches = range(0, len(images), batch_size)
        for start in tqdm(batches, desc=f"judge epoch {epoch + 1}/{epochs}", disable=not progress, unit="batch"):
            idx = order[start : start + batch_size]
            x = images[idx]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


def _weights_tag(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


class FashionMNISTJudgeFeatures(nn.Module):
    """The judge as a feature extractor (``fid.extractor=fmnist_cnn``): 256-d features of
    1-channel images in [0, 1] (other sizes are resized to 28x28), and its 10 class logits for
    the Inception Score."""

    num_features = FashionMNISTCNN.num_features
    classifies = "fmnist"  # its head's classes: a judge of class agreement on Fashion-MNIST samples

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        path = Path(weights_path) if weights_path else default_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"no Fashion-MNIST judge weights at {path}: train them once with "
                f"`python -m dat_lightning.judge out={path}` (a few minutes on a CPU)"
            )
        state = read_checkpoint(path)
        self.net = FashionMNISTCNN(num_classes=state["head.weight"].shape[0])
        self.net.load_state_dict(state)
        self.net.eval().requires_grad_(False)
        self.name = f"fmnist_cnn_{_weights_tag(path)}"
        self.source = f"Fashion-MNIST judge CNN ({path})"

    def train(self, mode: bool = True) -> FashionMNISTJudgeFeatures:
        return super().train(False)  # a metric's network never trains

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 1:
            raise ValueError(f"the Fashion-MNIST judge takes 1-channel images, got {x.shape[1]} channels")
        x = x.float()
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return self.net.features(x)

    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        return self.net.head(features.float())


def dataset_tensors(dataset) -> tuple[Tensor, Tensor]:
    """``(images (N, 1, H, W) in [0, 1], labels)`` of a grayscale dataset returned by
    :func:`dat_lightning.data.datasets.fashion_mnist` (Debian files or torchvision's class)."""
    images = getattr(dataset, "images", None)
    if images is None:
        images, labels = dataset.data.numpy(), dataset.targets.numpy()
    else:
        labels = dataset.labels
    # np.array copies: the arrays read from the idx files are read-only
    x = torch.from_numpy(np.array(images)).float().div(255).unsqueeze(1)
    return x, torch.as_tensor(labels, dtype=torch.long)


def make_judge(out: Path, root: str, epochs: int = 3, limit: int | None = None) -> Path:
    """Train the judge on the Fashion-MNIST train split (``limit``: the first N images only, for
    smoke runs), report its test accuracy, and write its weights to ``out`` (atomically)."""
    from dat_lightning.data.datasets import fashion_mnist

    x_train, y_train = dataset_tensors(fashion_mnist(root, train=True))
    x_test, y_test = dataset_tensors(fashion_mnist(root, train=False))
    if limit:
        x_train, y_train, x_test, y_test = (t[:limit] for t in (x_train, y_train, x_test, y_test))
    net = train_judge(x_train, y_train, epochs=epochs, progress=True)
    with torch.no_grad():
        predictions = torch.cat([net(x_test[i : i + 1000]).argmax(1) for i in range(0, len(x_test), 1000)])
    accuracy = (predictions == y_test).float().mean().item()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(net.state_dict(), out)
    print(f"Fashion-MNIST judge: test accuracy {100 * accuracy:.2f}% ({len(x_test)} images); "
          f"weights {out} (extractor name fmnist_cnn_{_weights_tag(out)})")
    return out
