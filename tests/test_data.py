"""Tests of the data sub-package: the datasets and the data configs (OOD sources and transforms
are in ``test_ood_and_transforms.py``, the datamodule in ``test_datamodule.py``).

Everything runs offline on small fixtures written to tmp_path in the real on-disk formats
(CIFAR pickles, Tiny Images Fortran-order binary, ImageNet wnid folders); Fashion-MNIST uses the
Debian files when installed.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image

from dat_lightning.config import CONFIG_DIR
from dat_lightning.data import (
    CorruptImageError,
    DatasetNotFoundError,
    DATDataModule,
    cifar10,
    cifar100,
    fashion_mnist,
    image_folder,
    restricted_imagenet,
)
from dat_lightning.data.datasets import (
    FASHION_MNIST_DEBIAN_ROOT,
    RESTRICTED_IMAGENET_CLASSES,
    RESTRICTED_IMAGENET_RANGES,
)
from helpers import write_tiny_images

REPO = Path(__file__).resolve().parents[1]
HAVE_FMNIST = (Path(FASHION_MNIST_DEBIAN_ROOT) / "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(
    not HAVE_FMNIST, reason="Debian dataset-fashion-mnist not installed"
)


# ------------------------------------------------------------------------------------------------
# fixtures: tiny datasets in the real formats
# ------------------------------------------------------------------------------------------------


def write_cifar(
    root: Path,
    folder: str,
    files: dict[str, int],
    label_key: str,
    meta: tuple,
    num_classes: int,
    seed: int = 0,
) -> dict[str, dict]:
    """Write CIFAR python-pickle batches (uint8 rows of R,G,B planes) and return their contents."""
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True, exist_ok=True)
    written = {}
    for name, count in files.items():
        batch = {
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            label_key: rng.integers(0, num_classes, count).tolist(),
        }
        with open(root / folder / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = batch
    meta_file, meta_key = meta
    with open(root / folder / meta_file, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, f)
    return written


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("cifar")
    c10 = write_cifar(
        root,
        "cifar-10-batches-py",
        {**{f"data_batch_{i}": 2 for i in range(1, 6)}, "test_batch": 3},
        "labels",
        ("batches.meta", "label_names"),
        10,
    )
    c100 = write_cifar(
        root,
        "cifar-100-python",
        {"train": 4, "test": 3},
        "fine_labels",
        ("meta", "fine_label_names"),
        100,
        seed=1,
    )
    return root, c10, c100


def wnid(index: int) -> str:
    return f"n{index:08d}"


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """1000 fake wnid folders with one 8x8 PNG each; the red channel encodes the class index."""
    root = tmp_path_factory.mktemp("imagenet") / "train"
    for i in range(1000):
        (root / wnid(i)).mkdir(parents=True)
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[..., 0], pixels[..., 1] = i % 256, i // 256
        Image.fromarray(pixels).save(root / wnid(i) / "img.png")
    return root


def chw(image_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_hwc).permute(2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_sizes_labels_and_pixels_match_the_idx_files():
    train, test = fashion_mnist(train=True), fashion_mnist(train=False)
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10  # balanced, labels 0..9
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert len(train.classes) == 10

    # Independent read of image 123 of the test file: 16-byte header, then 784 bytes per image.
    with gzip.open(Path(FASHION_MNIST_DEBIAN_ROOT) / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    expected = np.frombuffer(raw, np.uint8, 784, offset=16 + 123 * 784).reshape(28, 28)
    with gzip.open(Path(FASHION_MNIST_DEBIAN_ROOT) / "t10k-labels-idx1-ubyte.gz") as f:
        expected_label = f.read()[8 + 123]
    image, label = test[123]
    assert image.mode == "L" and image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert label == expected_label and isinstance(label, int)


def test_fashion_mnist_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        fashion_mnist(tmp_path / "nowhere")
    message = str(err.value)
    assert "Fashion-MNIST" in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message and "download" in message


def test_cifar10_reads_pickle_batches(cifar_root):
    root, written, _ = cifar_root
    train, test = cifar10(root, train=True), cifar10(root, train=False)
    assert (len(train), len(test)) == (10, 3)
    assert train.classes == [f"class{i}" for i in range(10)]
    # train image 3 is the second image of data_batch_2
    row = written["data_batch_2"]["data"][1]
    image, label = train[3]
    assert image.mode == "RGB" and image.size == (32, 32)
    r, c = 5, 17  # planes are R, G, B, each row-major 32x32
    assert image.getpixel((c, r)) == tuple(int(row[p * 1024 + r * 32 + c]) for p in range(3))
    assert label == written["data_batch_2"]["labels"][1]
    assert test[2][1] == written["test_batch"]["labels"][2]


def test_cifar100_reads_fine_labels(cifar_root):
    root, _, written = cifar_root
    train = cifar100(root, train=True)
    assert len(train) == 4 and len(train.classes) == 100
    assert [train[i][1] for i in range(4)] == written["train"]["fine_labels"]
    expected = written["train"]["data"][2].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(train[2][0]), expected)


def test_cifar_missing_root_gives_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 not found at .*cifar-10-batches-py"):
        cifar10(tmp_path / "empty")
    with pytest.raises(DatasetNotFoundError, match="download: true"):
        cifar100(tmp_path / "empty")


def test_image_folder_rgb_labels_and_corrupt_file_named(tmp_path):
    for cls, mode in (("a", "RGB"), ("b", "L")):
        (tmp_path / cls).mkdir()
        Image.new(mode, (5, 4)).save(tmp_path / cls / "x.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"definitely not a png")
    dataset = image_folder(tmp_path)
    assert dataset.classes == ["a", "b"] and len(dataset) == 3
    image, label = dataset[dataset.samples.index((str(tmp_path / "b" / "x.png"), 1))]
    assert image.mode == "RGB" and label == 1  # grayscale files come out RGB
    broken = dataset.samples.index((str(tmp_path / "b" / "broken.png"), 1))
    with pytest.raises(CorruptImageError, match="broken.png"):
        dataset[broken]
    with pytest.raises(DatasetNotFoundError, match="missing"):
        image_folder(tmp_path / "missing")


def test_restricted_imagenet_keeps_the_nine_superclasses(imagenet_root):
    dataset = restricted_imagenet(imagenet_root)
    assert dataset.classes == list(RESTRICTED_IMAGENET_CLASSES)
    assert len(dataset) == sum(last - first + 1 for first, last in RESTRICTED_IMAGENET_RANGES)
    label_by_index = {int(Path(path).parent.name[1:]): label for path, label in dataset.samples}
    spot_checks = {
        151: 0,
        268: 0,
        281: 1,
        285: 1,
        30: 2,
        32: 2,
        33: 3,
        37: 3,
        80: 4,
        100: 4,
        365: 5,
        382: 5,
        389: 6,
        397: 6,
        118: 7,
        121: 7,
        300: 8,
        319: 8,
    }
    assert {i: label_by_index.get(i) for i in spot_checks} == spot_checks
    for dropped in (0, 29, 38, 79, 101, 150, 269, 280, 286, 299, 320, 999):
        assert dropped not in label_by_index
    image, label = dataset[0]
    assert image.mode == "RGB" and 0 <= label < 9
    assert (
        int(np.asarray(image)[0, 0, 0]) + 256 * int(np.asarray(image)[0, 0, 1]) == 30
    )  # first kept

    others = restricted_imagenet(imagenet_root, complement=True)
    kept = {int(Path(path).parent.name[1:]) for path, _ in others.samples}
    assert len(others) == 1000 - len(dataset) and kept.isdisjoint(label_by_index)


def test_restricted_imagenet_needs_all_1000_classes(tmp_path):
    for i in range(10):
        (tmp_path / wnid(i)).mkdir()
    with pytest.raises(ValueError, match="1000"):
        restricted_imagenet(tmp_path)


# ------------------------------------------------------------------------------------------------
# Hydra configs
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path, monkeypatch, cifar_root, imagenet_root) -> Path:
    """A DATA_ROOT with every dataset the configs name, as tiny fixtures."""
    root = tmp_path / "data"
    (root / "imagenet").mkdir(parents=True)
    (root / "cifar").symlink_to(cifar_root[0])
    (root / "imagenet" / "train").symlink_to(imagenet_root)
    (root / "imagenet" / "val").symlink_to(imagenet_root)
    write_tiny_images(root / "tiny_images.bin", 20)
    (root / "80mn_cifar_idxs.txt").write_text("1\n7\n")
    (root / "openimage_o" / "sub").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40, 30), (i, 0, 0)).save(root / "openimage_o" / "sub" / f"{i}.jpg")
    monkeypatch.setenv("DATA_ROOT", str(root))
    return root


@pytest.mark.parametrize(
    ("name", "classes", "channels", "size"),
    [
        ("cifar10", 10, 3, 32),
        ("cifar100", 100, 3, 32),
        ("imagenet256", 1000, 3, 256),
        ("rimagenet", 9, 3, 224),
    ]
    + ([("fmnist", 10, 1, 28)] if HAVE_FMNIST else []),
)
def test_configs_instantiate_and_yield_batches(data_root, name, classes, channels, size):
    # composed as the CLI does: the data group (with its base) under `data`, next to the top-level `seed`
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={name}", "seed=7", "data.batch_size=2", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, DATDataModule) and dm.name == name and dm.seed == 7
    assert (dm.num_classes, dm.channels, dm.image_size) == (classes, channels, size)
    dm.setup("fit")
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert batch["clf"][0].shape == batch["gen"][0].shape == batch["ood"].shape
    assert batch["ood"].shape == (2, channels, size, size)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (2, channels, size, size)
