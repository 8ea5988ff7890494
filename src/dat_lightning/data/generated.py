"""Seed sources generated on the fly: crops of the photos bundled with scikit-image, the digits
bundled with scikit-learn, uniform noise. Nothing to download.

Each has ``generated = True`` and a ``length``; left at ``None`` the datamodule sets it to
``len(train_set)``. Item ``i`` is a pure function of ``(seed, i)``, so the data order, and
therefore a resumed run, is reproducible. Items are float32 tensors ``(C, H, W)`` in [0, 1].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset


def _item_rng(seed: int, index: int) -> np.random.Generator:
    """An RNG that depends only on (seed, index): items do not depend on access order."""
    return np.random.default_rng([int(seed), int(index)])


def _check_channels(channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")


class _GeneratedSource(Dataset):
    """Base for sources that synthesize item ``i`` from ``(seed, i)``; ``length`` may be deferred."""

    generated = True

    def __init__(self, length: int | None, seed: int):
        self.length = None if length is None else int(length)
        self.seed = int(seed)

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(
                f"{type(self).__name__}.length is unset; the datamodule sets it to len(train_set) "
                "in setup(), or give `length` explicitly"
            )
        return self.length

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")


# Photos bundled inside the scikit-image wheel (no download), checked with skimage 0.26. Synthetic
# images (colorwheel, logo, chessboard, horse silhouette) are left out: OOD seeds should look like
# natural images.
SKIMAGE_PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "page",
    "retina",
    "rocket",
    "text",
)


@functools.cache  # decoding all photos takes ~1 s; instances share them
def _load_skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    return getattr(skimage.data, name)()


class NaturalPhotoCrops(_GeneratedSource):
    """Random crops of the photos that ship with scikit-image: an OOD source that needs no download.

    Item ``i`` picks a photo, a crop of ``scale`` of its area with aspect ratio in ``ratio``
    (the RandomResizedCrop recipe), resizes it to ``size`` x ``size`` (antialiased) and flips it
    half of the time, all from an RNG seeded with ``(seed, i)``. ``channels == 1`` converts the
    photos to grayscale; ``channels == 3`` repeats grayscale photos into RGB.
    """

    def __init__(
        self,
        size: int,
        channels: int,
        length: int | None = None,
        seed: int = 0,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        photos: Sequence[str] = SKIMAGE_PHOTOS,
    ):
        super().__init__(length, seed)
        _check_channels(channels)
        self.size, self.channels = int(size), int(channels)
        self.scale, self.log_ratio = tuple(scale), (np.log(ratio[0]), np.log(ratio[1]))
        self.photo_names = tuple(photos)
        self.photos = [self._prepare(_load_skimage_photo(name)) for name in self.photo_names]

    def _prepare(self, photo: np.ndarray) -> torch.Tensor:
        """uint8 (C, H, W) with the requested channels, pre-shrunk for speed.

        Even the smallest crop (``scale[0]`` of the area) is downsampled at least 2x to ``size``,
        so shrinking the photo first so that this still holds loses nothing visible and makes
        each crop several times cheaper for small ``size`` (e.g. 28 px from a 1411 px photo).
        """
        image = torch.from_numpy(np.ascontiguousarray(photo, dtype=np.uint8))
        image = image.unsqueeze(0) if image.ndim == 2 else image.permute(2, 0, 1)[:3]
        if self.channels == 1 and image.shape[0] == 3:
            image = TF.rgb_to_grayscale(image)
        elif self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        max_short_side = math.ceil(2 * self.size / math.sqrt(self.scale[0]))
        if min(image.shape[1:]) > max_short_side:
            image = TF.resize(image, max_short_side, antialias=True)
        return image

    def crop_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, ...]:
        """(top, left, h, w) of a random crop, as torchvision's RandomResizedCrop draws it."""
        area = height * width
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = np.exp(rng.uniform(*self.log_ratio))
            w = round(np.sqrt(target_area * aspect))
            h = round(np.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        side = min(height, width)  # fallback: central square
        return (height - side) // 2, (width - side) // 2, side, side

    def __getitem__(self, index: int) -> torch.Tensor:
        self._check_index(index)
        rng = _item_rng(self.seed, index)
        photo = self.photos[int(rng.integers(len(self.photos)))]
        top, left, h, w = self.crop_box(rng, photo.shape[1], photo.shape[2])
        crop = TF.resized_crop(photo, top, left, h, w, [self.size, self.size], antialias=True)
        if rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop.float().div_(255.0)

    def __repr__(self) -> str:
        return (
            f"NaturalPhotoCrops(size={self.size}, channels={self.channels}, length={self.length}, "
            f"seed={self.seed}, photos={len(self.photos)})"
        )


@functools.cache  # the 1797 digits are decoded once per process
def _load_sklearn_digits() -> torch.Tensor:
    from sklearn.datasets import load_digits  # bundled inside the scikit-learn wheel, no download

    return torch.from_numpy(load_digits().images).float().div_(16.0)  # (1797, 8, 8), 17 levels


class HandwrittenDigits(_GeneratedSource):
    """The 8x8 handwritten digits bundled with scikit-learn (UCI optdigits), drawn MNIST-style.

    Fashion-MNIST's counterpart of 80M Tiny Images for CIFAR: OOD images of the same format
    (a centred grayscale object on black), which is what the chain should start from (MNIST is
    the usual OOD set for Fashion-MNIST). Item ``i`` picks one of the 1797 digits, resizes it
    (bilinear, antialiased) into a ``box`` x ``box`` square (MNIST's 20 px convention), flips it
    half of the time and places it in a black ``size`` x ``size`` frame, centred up to a random
    shift of ``max_shift`` pixels, all from an RNG seeded with ``(seed, i)``. ``channels == 3``
    repeats the gray image into RGB.
    """

    def __init__(
        self,
        size: int = 28,
        channels: int = 1,
        length: int | None = None,
        seed: int = 0,
        box: int = 20,
        max_shift: int = 2,
    ):
        super().__init__(length, seed)
        _check_channels(channels)
        if not 0 < box <= size or 2 * max_shift > size - box:
            raise ValueError(f"a {box} px box shifted by up to {max_shift} px must fit in {size} px")
        self.size, self.channels, self.box, self.max_shift = int(size), int(channels), int(box), int(max_shift)
        # resized once here, not per item: 1797 x box x box floats
        digits = _load_sklearn_digits()[:, None]
        self.digits = TF.resize(digits, [self.box, self.box], antialias=True).clamp_(0.0, 1.0)

    def __getitem__(self, index: int) -> torch.Tensor:
        self._check_index(index)
        rng = _item_rng(self.seed, index)
        digit = self.digits[int(rng.integers(len(self.digits)))]
        if rng.random() < 0.5:
            digit = digit.flip(-1)
        dy, dx = rng.integers(-self.max_shift, self.max_shift + 1, size=2)
        top, left = (self.size - self.box) // 2 + int(dy), (self.size - self.box) // 2 + int(dx)
        image = torch.zeros(1, self.size, self.size)
        image[:, top : top + self.box, left : left + self.box] = digit
        return image.expand(self.channels, -1, -1).contiguous()

    def __repr__(self) -> str:
        return (
            f"HandwrittenDigits(size={self.size}, channels={self.channels}, length={self.length}, "
            f"seed={self.seed}, box={self.box}, max_shift={self.max_shift})"
        )


class UniformNoise(_GeneratedSource):
    """Uniform noise images in [0, 1]; item ``i`` is drawn from an RNG seeded with ``(seed, i)``."""

    def __init__(self, channels: int, size: int, length: int | None = None, seed: int = 0):
        super().__init__(length, seed)
        self.channels, self.size = int(channels), int(size)

    def __getitem__(self, index: int) -> torch.Tensor:
        self._check_index(index)
        noise = _item_rng(self.seed, index).random((self.channels, self.size, self.size))
        return torch.from_numpy(noise.astype(np.float32))

    def __repr__(self) -> str:
        return (
            f"UniformNoise(channels={self.channels}, size={self.size}, length={self.length}, "
            f"seed={self.seed})"
        )
