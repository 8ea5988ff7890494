"""Labelled image datasets: each returns ``(PIL.Image, int)`` pairs.

Every builder fails early with a message that names the dataset, where it looked and how to get
it, instead of the library's generic "not found or corrupted". Transforms are *not* applied here:
the datamodule applies a different transform per stream (classification vs. generation) to the
same raw images.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

FASHION_MNIST_DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# RestrictedImageNet as in MadryLab's `robustness` library: inclusive ranges of indices into the
# sorted list of the 1000 ImageNet wnids; range i becomes label i.
RESTRICTED_IMAGENET_RANGES = (
    (151, 268),
    (281, 285),
    (30, 32),
    (33, 37),
    (80, 100),
    (365, 382),
    (389, 397),
    (118, 121),
    (300, 319),
)
RESTRICTED_IMAGENET_CLASSES = (
    "dog",
    "cat",
    "frog",
    "turtle",
    "bird",
    "primate",
    "fish",
    "crab",
    "insect",
)
NUM_IMAGENET_CLASSES = 1000


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the config says; the message explains how to get them."""


class CorruptImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


def _not_found(dataset: str, looked_at: str | os.PathLike, how_to_get: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{dataset} not found at '{looked_at}'. {how_to_get}")


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format: big-endian header, then raw uint8)."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise CorruptImageError(f"could not read IDX file '{path}': {err}") from err
    magic = int.from_bytes(raw[0:4], "big")
    dtype_code, ndim = magic >> 8, magic & 0xFF
    if dtype_code != 0x08:  # 0x08 = unsigned byte, the only type the (Fashion-)MNIST files use
        raise CorruptImageError(f"'{path}' is not a uint8 IDX file (magic number {magic:#x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise CorruptImageError(
            f"'{path}' is truncated: header says {dims}, found {data.size} bytes"
        )
    return data.reshape(dims)


class ArrayImageDataset(Dataset):
    """Images held in a uint8 array ``(N, H, W)`` (grayscale) or ``(N, H, W, C)`` with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])


def _fashion_mnist_files(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


def fashion_mnist(
    root: str | os.PathLike = FASHION_MNIST_DEBIAN_ROOT,
    train: bool = True,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Fashion-MNIST (60000 train / 10000 test, 28x28 grayscale, 10 classes).

    Reads the gzipped IDX files directly from ``root`` (the layout of Debian's
    ``dataset-fashion-mnist`` package, and of ``<torchvision root>/FashionMNIST/raw``). If they are
    missing and ``download`` is true, torchvision downloads them into ``cache_dir`` (default
    ``~/.cache/dat_lightning``).
    """
    image_file, label_file = _fashion_mnist_files(train)
    root = Path(root).expanduser()
    candidates = [root, root / "FashionMNIST" / "raw"]
    for folder in candidates:
        if (folder / image_file).is_file() and (folder / label_file).is_file():
            images = _read_idx(folder / image_file)
            labels = _read_idx(folder / label_file)
            return ArrayImageDataset(images, labels, FASHION_MNIST_CLASSES)

    if download:
        from torchvision.datasets import FashionMNIST

        cache = Path(cache_dir or Path.home() / ".cache" / "dat_lightning").expanduser()
        try:
            # torchvision's download also writes the raw .gz files, which the reader above parses,
            # but its own dataset class is just as good: it returns (PIL 'L' image, int).
            return FashionMNIST(str(cache), train=train, download=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise _not_found(
                "Fashion-MNIST",
                " or ".join(str(c) for c in candidates),
                f"Downloading it into '{cache}' failed too ({err}). Install the Debian package "
                "(`apt-get install dataset-fashion-mnist`) or run with internet access.",
            ) from err
    raise _not_found(
        "Fashion-MNIST",
        " or ".join(str(c) for c in candidates),
        f"Expected {image_file} and {label_file}. Install them with "
        "`apt-get install dataset-fashion-mnist` (files land in "
        f"{FASHION_MNIST_DEBIAN_ROOT}), point `data.train_set.root`/`data.val_set.root` at "
        "a folder holding them, or set `download: true` with internet access.",
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision)
# --------------------------------------------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches and nothing else.

    A batch file is a dict of numpy arrays, lists, strings and bytes: the numpy globals those need
    are allowed, every other global is refused. A file planted under a dataset root (the root can
    come from a downloaded checkpoint's config) therefore cannot run code, as a plain
    ``pickle.load`` (torchvision's reader) would let it.
    """

    _ALLOWED = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused the global {module}.{name}: a CIFAR batch holds arrays and lists only, and "
            "loading this file could run code"
        )


def _read_batch(path: Path) -> dict:
    with open(path, "rb") as f:
        batch = _BatchUnpickler(f, encoding="latin1").load()
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict")
    return batch


class LocalCIFAR(Dataset):
    """CIFAR-10/100 from the python release's batch files, read without running pickled code.

    The layout (folder, file names, label and class-name keys) is torchvision's (``release``:
    ``torchvision.datasets.CIFAR10`` or ``CIFAR100``); files are checked for presence, not
    hashed, so small test fixtures in the same format load too (a download still checks the
    archive's md5). Items are ``(PIL RGB image, int label)``.
    """

    def __init__(self, release: type, root: str | os.PathLike, train: bool = True) -> None:
        folder = Path(root).expanduser() / release.base_folder
        files = [name for name, _ in (release.train_list if train else release.test_list)]
        missing = [name for name in [*files, release.meta["filename"]] if not (folder / name).is_file()]
        if missing:
            raise RuntimeError(f"missing files {missing} in {folder}")
        data, targets = [], []
        for name in files:
            batch = _read_batch(folder / name)
            data.append(np.asarray(batch["data"], dtype=np.uint8))
            targets += list(batch["labels"] if "labels" in batch else batch["fine_labels"])
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        self.targets = [int(t) for t in targets]
        self.classes = list(_read_batch(folder / release.meta["filename"])[release.meta["key"]])
        self.root = str(root)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.data[index]), self.targets[index]


def _cifar(name: str, release: type, root: str | os.PathLike, train: bool, download: bool) -> Dataset:
    folder = Path(root).expanduser() / release.base_folder
    if not download and not folder.is_dir():
        raise _not_found(
            name,
            folder,
            f"Point `root` (e.g. `data.train_set.root`, default ${{DATA_ROOT}}/cifar) at the folder "
            f"that contains '{release.base_folder}', or set `download: true` with internet "
            "access to let torchvision fetch it there.",
        )
    if download and not folder.is_dir():
        try:  # torchvision fetches the archive and checks its md5; the reading is ours
            release(str(Path(root).expanduser()), train=train, download=True)
        except Exception as err:  # network errors come in many types (URLError, OSError, ...)
            raise _not_found(
                name,
                folder,
                f"Downloading it failed ({type(err).__name__}: {err}); no internet? Without "
                f"internet, fetch {release.url} elsewhere and extract it into "
                f"'{Path(root).expanduser()}' (so that '{folder}' exists), then set `download: false`.",
            ) from err
    try:
        return LocalCIFAR(release, root, train=train)
    except RuntimeError as err:  # a partial folder
        raise _not_found(name, folder, f"The folder is incomplete ({err}).") from err
    except (OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as err:
        raise CorruptImageError(f"could not read {name} batches under '{folder}': {err}") from err


def cifar10(root: str | os.PathLike, train: bool = True, download: bool = False) -> Dataset:
    """CIFAR-10 from ``<root>/cifar-10-batches-py`` (the python pickle release)."""
    return _cifar("CIFAR-10", torchvision.datasets.CIFAR10, root, train, download)


def cifar100(root: str | os.PathLike, train: bool = True, download: bool = False) -> Dataset:
    """CIFAR-100 (fine labels) from ``<root>/cifar-100-python``."""
    return _cifar("CIFAR-100", torchvision.datasets.CIFAR100, root, train, download)


# --------------------------------------------------------------------------------------------
# Image folders (ImageNet, RestrictedImageNet)
# --------------------------------------------------------------------------------------------


def load_rgb_image(path: str) -> Image.Image:
    """Open an image as RGB; a file PIL cannot decode raises an error naming its path."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")  # also forces the lazy decode inside the try
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(f"could not read image '{path}': {err}") from err


def _check_folder(name: str, root: Path, config_key: str) -> None:
    if not root.is_dir():
        raise _not_found(
            name,
            root,
            f"Expected one sub-folder of images per class (torchvision ImageFolder layout); set "
            f"`{config_key}` or the DATA_ROOT environment variable.",
        )


def image_folder(root: str | os.PathLike, allow_empty: bool = False) -> Dataset:
    """torchvision ``ImageFolder`` (one sub-folder per class, sorted) with RGB images."""
    root = Path(root).expanduser()
    _check_folder("Image folder", root, "data.train_set.root / data.val_set.root")
    return ImageFolder(str(root), loader=load_rgb_image, allow_empty=allow_empty)


def restricted_imagenet_class_map(wnids: Sequence[str], complement: bool = False) -> dict[str, int]:
    """Map ImageNet wnids to RestrictedImageNet labels 0..8 (or keep the others, if ``complement``).

    ``wnids`` must be the 1000 ImageNet class folder names; the ranges index their sorted order.
    With ``complement`` the wnids *outside* every range are kept with their ImageNet index as label
    (used as the out-of-distribution source, where labels are ignored).
    """
    ordered = sorted(wnids)
    if len(ordered) != NUM_IMAGENET_CLASSES:
        raise ValueError(
            f"RestrictedImageNet needs all {NUM_IMAGENET_CLASSES} ImageNet class folders (its class "
            f"ranges are positions in the sorted wnid list), found {len(ordered)}"
        )
    label_of_index = {
        index: label
        for label, (first, last) in enumerate(RESTRICTED_IMAGENET_RANGES)
        for index in range(first, last + 1)
    }
    if complement:
        return {wnid: i for i, wnid in enumerate(ordered) if i not in label_of_index}
    return {wnid: label_of_index[i] for i, wnid in enumerate(ordered) if i in label_of_index}


class RestrictedImageFolder(ImageFolder):
    """ImageFolder over an ImageNet split that keeps only the RestrictedImageNet classes.

    ``class_to_idx`` maps each kept wnid to its label; ``classes`` names the labels.
    """

    def __init__(self, root: str, complement: bool = False, **kwargs):
        self.complement = complement  # read by find_classes, which ImageFolder calls in __init__
        super().__init__(root, **kwargs)
        if not complement:
            self.classes = list(RESTRICTED_IMAGENET_CLASSES)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        wnids = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
        class_to_idx = restricted_imagenet_class_map(wnids, self.complement)
        return sorted(class_to_idx), class_to_idx


def restricted_imagenet(root: str | os.PathLike, complement: bool = False) -> Dataset:
    """RestrictedImageNet: the 9 super-classes of MadryLab's ``robustness`` library.

    ``root`` is an ImageNet split (``train`` or ``val``) in ImageFolder layout with all 1000 wnid
    folders. Images of the other classes are dropped; labels are 0..8 (``classes`` names them).
    ``complement=True`` instead returns only the images of the *other* 797 classes, the
    out-of-distribution source the DAT paper uses for RestrictedImageNet.
    """
    root = Path(root).expanduser()
    _check_folder("ImageNet split for RestrictedImageNet", root, "data.train_set.root")
    return RestrictedImageFolder(str(root), complement=complement, loader=load_rgb_image)
