"""Out-of-distribution (OOD) seed sources for the generative chain, read from stored images.

Every source is a map-style Dataset whose items are float32 tensors ``(C, H, W)`` in [0, 1]
(no label): :class:`TinyImages`, :class:`OODImageFolder`, :class:`UnlabeledImages`. The
datamodule's OOD sampler draws ``len(train_set)`` of them per epoch, so their size does not have
to match the training set. Sources generated on the fly (photo crops, digits, uniform noise) are
in :mod:`dat_lightning.data.generated`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from .datasets import CorruptImageError, DatasetNotFoundError, load_rgb_image

ImageTransform = Callable[[Image.Image], torch.Tensor]

TINY_IMAGE_BYTES = 32 * 32 * 3


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return TF.to_tensor(image)


# --------------------------------------------------------------------------------------------
# 80M Tiny Images
# --------------------------------------------------------------------------------------------


def _kept_index_lookup(excluded_sorted: np.ndarray) -> np.ndarray:
    """Offsets that turn "k-th kept image" into a file index without a 79M-entry table.

    With ``e`` the sorted excluded indices, the k-th kept index is
    ``k + searchsorted(e - arange(len(e)), k, side="right")``.
    """
    return excluded_sorted - np.arange(len(excluded_sorted), dtype=np.int64)


class TinyImages(Dataset):
    """The 80 Million Tiny Images binary (``tiny_images.bin``), optionally minus CIFAR.

    The file is a flat array of uint8 images, 3072 bytes each, stored column-major (Fortran
    order, from MATLAB) as 32x32x3. It is memory-mapped lazily per process, so pickling the
    dataset into DataLoader workers does not copy the ~240 GB file.

    Args:
        path: the ``tiny_images.bin`` file.
        length: use only the first ``length`` (non-excluded) images; ``None`` = all of them.
        exclude_idx_file: text file with one image index per line to leave out (the CIFAR
            overlap list ``80mn_cifar_idxs.txt`` of Hendrycks et al.'s Outlier Exposure code).
        exclude_idx_one_based: that list counts from 1 (true for ``80mn_cifar_idxs.txt``).
        transform: PIL -> tensor augmentation (CIFAR: random crop 32 pad 4 + flip); default
            plain to-tensor.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        length: int | None = None,
        exclude_idx_file: str | os.PathLike | None = None,
        transform: ImageTransform | None = None,
        exclude_idx_one_based: bool = True,
    ):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DatasetNotFoundError(
                f"80M Tiny Images not found at '{self.path}'. Place tiny_images.bin there (set "
                "DATA_ROOT or `data.ood.path`), or use another OOD source such as "
                "dat_lightning.data.generated.UniformNoise."
            )
        size = self.path.stat().st_size
        if size % TINY_IMAGE_BYTES:
            raise CorruptImageError(
                f"'{self.path}' has {size} bytes, not a multiple of {TINY_IMAGE_BYTES} (32x32x3)"
            )
        self.num_images_in_file = size // TINY_IMAGE_BYTES
        self.excluded = self._read_excluded(exclude_idx_file, exclude_idx_one_based)
        self._kept_offsets = _kept_index_lookup(self.excluded)
        available = self.num_images_in_file - len(self.excluded)
        self.length = available if length is None else min(int(length), available)
        self.transform = transform or _to_tensor
        self._images: np.ndarray | None = None

    def _read_excluded(self, idx_file: str | os.PathLike | None, one_based: bool) -> np.ndarray:
        if idx_file is None:
            return np.zeros(0, dtype=np.int64)
        idx_path = Path(idx_file).expanduser()
        if not idx_path.is_file():
            raise DatasetNotFoundError(
                f"Tiny Images exclusion list not found at '{idx_path}'. Get 80mn_cifar_idxs.txt "
                "from github.com/hendrycks/outlier-exposure (utils/), or set "
                "`data.ood.exclude_idx_file: null` to keep the CIFAR overlap."
            )
        excluded = np.loadtxt(idx_path, dtype=np.int64, ndmin=1) - (1 if one_based else 0)
        excluded = np.unique(excluded)  # sorted, duplicates dropped
        if len(excluded) and (excluded[0] < 0 or excluded[-1] >= self.num_images_in_file):
            raise ValueError(
                f"'{idx_path}' lists indices outside 0..{self.num_images_in_file - 1} "
                f"(after one_based={one_based} adjustment)"
            )
        return excluded

    def file_index(self, index: int) -> int:
        """The position in ``tiny_images.bin`` of this dataset's ``index``-th image."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} images")
        return index + int(np.searchsorted(self._kept_offsets, index, side="right"))

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None  # never pickle the memmap; each worker maps the file itself
        return state

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._images is None:
            self._images = np.memmap(self.path, dtype=np.uint8, mode="r").reshape(
                self.num_images_in_file, TINY_IMAGE_BYTES
            )
        flat = np.asarray(self._images[self.file_index(index)])
        image = Image.fromarray(flat.reshape(32, 32, 3, order="F"))
        return self.transform(image)

    def __repr__(self) -> str:
        return (
            f"TinyImages(path='{self.path}', length={self.length}, excluded={len(self.excluded)})"
        )


# --------------------------------------------------------------------------------------------
# Folders and labelled datasets used as OOD
# --------------------------------------------------------------------------------------------


class OODImageFolder(Dataset):
    """Every image file under ``root`` (recursively, any layout; labels ignored), e.g. OpenImage-O.

    Args:
        root: folder to scan; files are sorted so the index -> file map is stable.
        transform: PIL -> tensor augmentation; default plain to-tensor.
        subset_size: keep a random subset of this many files (the DAT ImageNet runs use 300K
            OpenImage-O images); chosen once from ``subset_seed``, so it is the same every run.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: ImageTransform | None = None,
        subset_size: int | None = None,
        subset_seed: int = 0,
    ):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"OOD image folder not found at '{self.root}'. Set `data.ood.root` (or DATA_ROOT) to "
                "a folder of images, e.g. OpenImage-O."
            )
        extensions = tuple(ext.lower() for ext in IMG_EXTENSIONS)
        files = sorted(
            str(Path(dirpath) / name)
            for dirpath, _, names in os.walk(self.root, followlinks=True)
            for name in names
            if name.lower().endswith(extensions)
        )
        if subset_size is not None and subset_size < len(files):
            keep = np.random.default_rng(subset_seed).choice(len(files), subset_size, replace=False)
            files = [files[i] for i in np.sort(keep)]
        self.files = files
        self.transform = transform or _to_tensor

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(load_rgb_image(self.files[index]))

    def __repr__(self) -> str:
        return f"OODImageFolder(root='{self.root}', images={len(self.files)})"


class UnlabeledImages(Dataset):
    """Any ``(PIL image, label)`` dataset as an OOD source: the label is dropped.

    RestrictedImageNet uses this around ``restricted_imagenet(root, complement=True)``, the
    ImageNet classes outside the nine super-classes.
    """

    def __init__(self, dataset: Dataset, transform: ImageTransform | None = None):
        self.dataset = dataset
        self.transform = transform or _to_tensor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        image, _ = self.dataset[index]
        return self.transform(image)

    def __repr__(self) -> str:
        root = getattr(self.dataset, "root", None)
        where = f", root='{root}'" if root is not None else ""
        return f"UnlabeledImages({type(self.dataset).__name__}{where}, images={len(self)})"


# --------------------------------------------------------------------------------------------
# Generated sources (offline defaults)
# --------------------------------------------------------------------------------------------


# Configs stored in checkpoints of earlier versions name the generated sources by this module.
from dat_lightning.data.generated import HandwrittenDigits, NaturalPhotoCrops, UniformNoise  # noqa: E402, F401
