"""OOD seed sources (Tiny Images' binary format, photo crops, handwritten digits, noise) and the
image transforms, on small fixtures written in the real formats."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dat_lightning.data import (
    DatasetNotFoundError,
    HandwrittenDigits,
    NaturalPhotoCrops,
    TinyImages,
    UniformNoise,
)
from dat_lightning.data import transforms as T
from dat_lightning.data.generated import SKIMAGE_PHOTOS
from helpers import write_tiny_images


def chw(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_hwc).permute(2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------------------
# OOD sources
# ------------------------------------------------------------------------------------------------


def test_tiny_images_fortran_order_exclusion_and_length(tmp_path):
    images = write_tiny_images(tmp_path / "tiny_images.bin", 10)
    full = TinyImages(tmp_path / "tiny_images.bin")
    assert len(full) == 10
    assert torch.equal(full[3], chw(images[3]))  # round-trips through the Fortran layout

    (tmp_path / "exclude.txt").write_text("3\n5\n")  # 1-based, as in 80mn_cifar_idxs.txt
    kept = TinyImages(tmp_path / "tiny_images.bin", exclude_idx_file=tmp_path / "exclude.txt")
    assert len(kept) == 8
    assert [kept.file_index(i) for i in range(8)] == [0, 1, 3, 5, 6, 7, 8, 9]
    assert torch.equal(kept[2], chw(images[3])) and torch.equal(kept[3], chw(images[5]))
    zero_based = TinyImages(
        tmp_path / "tiny_images.bin",
        exclude_idx_file=tmp_path / "exclude.txt",
        exclude_idx_one_based=False,
    )
    assert [zero_based.file_index(i) for i in range(8)] == [0, 1, 2, 4, 6, 7, 8, 9]

    capped = TinyImages(tmp_path / "tiny_images.bin", length=4)
    assert len(capped) == 4
    with pytest.raises(IndexError):
        capped[4]
    # the memory map is per process: pickling (DataLoader workers) must not copy the file
    assert len(pickle.dumps(kept)) < 3072


def test_tiny_images_missing_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="tiny_images.bin"):
        TinyImages(tmp_path / "tiny_images.bin")


def test_natural_photo_crops_shape_range_determinism():
    gray = NaturalPhotoCrops(size=28, channels=1, length=50, seed=0)
    assert len(gray.photos) == len(SKIMAGE_PHOTOS)  # every bundled photo loads offline
    crop = gray[7]
    assert crop.shape == (1, 28, 28) and crop.dtype == torch.float32
    assert 0 <= crop.min() and crop.max() <= 1 and crop.std() > 0.01
    assert torch.equal(crop, NaturalPhotoCrops(28, 1, length=50, seed=0)[7])  # (seed, index)
    assert not torch.equal(crop, gray[8])
    assert not torch.equal(crop, NaturalPhotoCrops(28, 1, length=50, seed=1)[7])
    assert len({gray[i].sum().item() for i in range(50)}) == 50  # all distinct crops

    color = NaturalPhotoCrops(size=32, channels=3, length=5)
    assert color[0].shape == (3, 32, 32)
    with pytest.raises(TypeError, match="length"):
        len(NaturalPhotoCrops(28, 1))  # unset length is an error, not a silent default


def test_handwritten_digits_are_centred_objects_on_black():
    digits = HandwrittenDigits(size=28, channels=1, length=40, seed=0, box=20, max_shift=2)
    image = digits[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.max() > 0.5
    # MNIST's frame: the digit lies in a 20 px box shifted at most 2 px, so a 2 px border is black
    assert image[:, :2].abs().sum() == 0 and image[:, -2:].abs().sum() == 0
    assert image[:, :, :2].abs().sum() == 0 and image[:, :, -2:].abs().sum() == 0
    assert torch.equal(image, HandwrittenDigits(28, 1, length=40, seed=0)[3])  # (seed, index)
    assert not torch.equal(image, HandwrittenDigits(28, 1, length=40, seed=1)[3])
    assert len({digits[i].sum().item() for i in range(40)}) > 30  # distinct digits and placements
    assert len(digits.digits) == 1797  # the whole bundled set, offline
    assert "box=20, max_shift=2" in repr(digits)  # reports label the seeds with their geometry

    color = HandwrittenDigits(size=32, channels=3, length=2)
    assert color[0].shape == (3, 32, 32) and torch.equal(color[0][0], color[0][2])
    with pytest.raises(ValueError, match="fit"):
        HandwrittenDigits(size=28, box=28, max_shift=1)
    with pytest.raises(TypeError, match="length"):
        len(HandwrittenDigits())


def test_uniform_noise_is_deterministic_per_index():
    noise = UniformNoise(channels=3, size=8, length=4, seed=2)
    assert noise[1].shape == (3, 8, 8) and noise[1].dtype == torch.float32
    assert 0 <= noise[1].min() and noise[1].max() <= 1
    assert torch.equal(noise[1], UniformNoise(3, 8, 4, seed=2)[1])
    assert not torch.equal(noise[1], noise[2])
    with pytest.raises(IndexError):
        noise[4]


# ------------------------------------------------------------------------------------------------
# transforms
# ------------------------------------------------------------------------------------------------


def test_transforms_shapes_range_and_channels():
    rgb32 = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    gray28 = Image.fromarray(np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8))
    photo = Image.fromarray(
        np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    )
    cases = [
        (T.cifar_clf(), rgb32, (3, 32, 32)),
        (T.cifar_gen(), rgb32, (3, 32, 32)),
        (T.fmnist_clf(), gray28, (1, 28, 28)),
        (T.fmnist_gen(), gray28, (1, 28, 28)),
        (T.to_tensor(), gray28, (1, 28, 28)),
        (T.imagenet_clf(64), photo, (3, 64, 64)),
        (T.imagenet_gen(64), photo, (3, 64, 64)),
        (T.imagenet_ood(64), photo, (3, 64, 64)),
        (T.imagenet_val(256), photo, (3, 256, 256)),
    ]
    for transform, image, shape in cases:
        for _ in range(3):
            out = transform(image)
            assert out.shape == shape and out.dtype == torch.float32, transform
            assert 0 <= out.min() and out.max() <= 1, transform
    assert T.imagenet_val(256).transforms[0].size == 292  # floor(256 / 0.875)


def test_cutout_fills_one_clipped_square():
    torch.manual_seed(0)
    cutout = T.Cutout(size=16, fill=0.5)
    for _ in range(20):
        out = cutout(torch.ones(3, 32, 32))
        rows, cols = torch.nonzero(out[0] == 0.5, as_tuple=True)
        assert 0 < len(rows) <= 256
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 16 and width <= 16 and len(rows) == height * width  # one rectangle
        assert torch.equal(out[0], out[2])
