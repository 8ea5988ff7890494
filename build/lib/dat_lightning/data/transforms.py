"""Augmentation pipelines: PIL image -> float32 tensor ``(C, H, W)`` in [0, 1].

DAT decouples augmentation (paper Sec. 3.4): the classification (``*_clf``) stream gets strong
augmentation for robustness, the generative (``*_gen``) stream only mild augmentation so the
energy model learns the real data distribution. No ``Normalize`` anywhere: normalization lives
inside the model, so attack radii stay in pixel units. Grayscale stays one channel.

Each builder is a plain function so Hydra can ``_target_`` it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision import transforms as T

# Per-channel means, used (as in RATIO, whose CIFAR augmentation DAT reuses) to fill the padding,
# the AutoAugment borders and the Cutout square with a neutral colour instead of black.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)

# ImageNet PCA lighting noise (AlexNet), as in MadryLab's `robustness` ImageNet training transform.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# Val/test crop ratio: Resize(size / 0.875) then CenterCrop(size), e.g. 292 -> 256, 256 -> 224.
IMAGENET_CROP_PCT = 0.875


class Cutout:
    """Cutout (DeVries & Taylor, 2017) on a tensor image: one ``size`` x ``size`` square set to ``fill``.

    The square's centre is uniform over the image, so near the border only part of it is inside,
    as in the reference implementation. ``fill`` is a per-channel colour in [0, 1].
    """

    def __init__(self, size: int = 16, fill: float | Sequence[float] = CIFAR10_MEAN):
        self.size = int(size)
        fill = [float(fill)] if isinstance(fill, int | float) else [float(v) for v in fill]
        self.fill = torch.tensor(fill, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        # torch RNG, so DataLoader worker seeding makes it reproducible like torchvision's ops
        cy = int(torch.randint(height, (1,)))
        cx = int(torch.randint(width, (1,)))
        top, bottom = max(cy - self.size // 2, 0), min(cy + self.size // 2, height)
        left, right = max(cx - self.size // 2, 0), min(cx + self.size // 2, width)
        image = image.clone()
        image[:, top:bottom, left:right] = self.fill.to(image.dtype)
        return image

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, fill={self.fill.flatten().tolist()})"


class Lighting:
    """AlexNet-style PCA lighting noise on an RGB tensor, clamped back to [0, 1]."""

    def __init__(self, alpha_std: float = 0.05):
        self.alpha_std = alpha_std
        self.eigval = torch.tensor(IMAGENET_PCA_EIGVAL)
        self.eigvec = torch.tensor(IMAGENET_PCA_EIGVEC)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.alpha_std == 0:
            return image
        alpha = torch.randn(3) * self.alpha_std
        rgb_shift = (self.eigvec * (alpha * self.eigval).reshape(1, 3)).sum(dim=1)
        # `robustness` does not clamp; we do, because every stream promises images in [0, 1]
        return (image + rgb_shift.reshape(3, 1, 1)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"Lighting(alpha_std={self.alpha_std})"


def _fill_uint8(mean: Sequence[float]) -> list[int]:
    return [round(255 * m) for m in mean]


def to_tensor() -> T.Compose:
    """Validation / test: no augmentation."""
    return T.Compose([T.ToTensor()])


def cifar_clf(cutout_size: int = 16, fill: Sequence[float] = CIFAR10_MEAN) -> T.Compose:
    """CIFAR classification stream: RandomCrop(32, pad 4) + flip + AutoAugment(CIFAR10) + Cutout.

    Padding, AutoAugment borders and the Cutout square are filled with the dataset mean ``fill``
    (RATIO's recipe; pass ``CIFAR100_MEAN`` for CIFAR-100). ``cutout_size=0`` disables Cutout.
    """
    steps = [
        T.RandomCrop(32, padding=4, fill=tuple(_fill_uint8(fill))),
        T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=_fill_uint8(fill)),
        T.ToTensor(),
    ]
    if cutout_size > 0:
        steps.append(Cutout(cutout_size, fill))
    return T.Compose(steps)


def cifar_gen() -> T.Compose:
    """CIFAR generative stream (and Tiny Images OOD seeds): RandomCrop(32, pad 4) + flip."""
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])


def imagenet_clf(size: int = 224, color_jitter: float = 0.1, lighting: float = 0.05) -> T.Compose:
    """ImageNet classification stream: RandomResizedCrop + flip + ColorJitter + PCA lighting.

    The `robustness` library's ImageNet recipe (jitter 0.1 for brightness/contrast/saturation,
    lighting std 0.05), which RATIO and DAT use for RestrictedImageNet.
    """
    steps = [
        T.RandomResizedCrop(size),
        T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter),
        T.ToTensor(),
    ]
    if lighting > 0:
        steps.append(Lighting(lighting))
    return T.Compose(steps)


def imagenet_gen(size: int = 224) -> T.Compose:
    """ImageNet generative stream: Resize + CenterCrop + flip (no scale change: mild)."""
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


def imagenet_ood(size: int = 224) -> T.Compose:
    """ImageNet OOD seeds (OpenImage-O, other ImageNet classes): RandomResizedCrop + flip."""
    return T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])


def imagenet_val(size: int = 224) -> T.Compose:
    """ImageNet validation: Resize(floor(size / 0.875)) + CenterCrop(size)."""
    return T.Compose(
        [T.Resize(math.floor(size / IMAGENET_CROP_PCT)), T.CenterCrop(size), T.ToTensor()]
    )


def fmnist_clf() -> T.Compose:
    """Fashion-MNIST classification stream: RandomCrop(28, pad 2) + flip (small data, mild)."""
    return T.Compose([T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(), T.ToTensor()])


def fmnist_gen() -> T.Compose:
    """Fashion-MNIST generative stream: horizontal flip only."""
    return T.Compose([T.RandomHorizontalFlip(), T.ToTensor()])
