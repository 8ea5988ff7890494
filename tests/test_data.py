"""Tests of the data sub-package: datasets, OOD sources, transforms, datamodule and configs.

Everything runs offline on small fixtures written to tmp_path in the real on-disk formats
(CIFAR pickles, Tiny Images Fortran-order binary, ImageNet wnid folders); Fashion-MNIST uses the
Debian files when installed.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from PIL import Image
from torch.utils.data import Dataset

from dat_lightning.config import CONFIG_DIR
from dat_lightning.data import (
    CorruptImageError,
    DatasetNotFoundError,
    DATDataModule,
    HandwrittenDigits,
    NaturalPhotoCrops,
    OODImageFolder,
    TinyImages,
    UniformNoise,
    cifar10,
    cifar100,
    fashion_mnist,
    image_folder,
    restricted_imagenet,
)
from dat_lightning.data import transforms as T
from dat_lightning.data.datasets import (
    FASHION_MNIST_DEBIAN_ROOT,
    RESTRICTED_IMAGENET_CLASSES,
    RESTRICTED_IMAGENET_RANGES,
)
from dat_lightning.data.generated import SKIMAGE_PHOTOS

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


def write_tiny_images(path: Path, count: int) -> np.ndarray:
    """Tiny Images format: each 32x32x3 image flattened in Fortran (column-major) order."""
    images = np.random.default_rng(3).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    path.write_bytes(b"".join(img.reshape(-1, order="F").tobytes() for img in images))
    return images


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


# ------------------------------------------------------------------------------------------------
# datamodule
# ------------------------------------------------------------------------------------------------


class NumberedImages(Dataset):
    """n grayscale images whose label is their index, so batches reveal the sampling order."""

    def __init__(self, n: int, size: int = 28, mode: str = "L"):
        self.n, self.size, self.mode = n, size, mode

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return Image.new(
            self.mode,
            (self.size, self.size),
            color=index % 256 if self.mode == "L" else (index % 256,) * 3,
        ), index


def make_datamodule(n: int = 64, batch_size: int = 8, seed: int = 0, ood=None, **overrides):
    kwargs = dict(
        train_set=NumberedImages(n),
        val_set=NumberedImages(n),
        ood=UniformNoise(channels=1, size=28) if ood is None else ood,
        clf_transform=T.fmnist_clf(),
        gen_transform=T.fmnist_gen(),
        val_transform=T.to_tensor(),
        num_classes=n,
        channels=1,
        image_size=28,
        batch_size=batch_size,
        seed=seed,
    )
    kwargs.update(overrides)
    dm = DATDataModule(**kwargs)
    dm.setup("fit")
    return dm


def epoch_labels(dm: DATDataModule, epoch: int) -> dict[str, list[int]]:
    loader = dm.train_dataloader()
    for stream_loader in loader.flattened:
        stream_loader.sampler.set_epoch(epoch)  # what Lightning's fit loop does
    order = {"clf": [], "gen": []}
    for batch, _, _ in loader:
        order["clf"] += batch["clf"][1].tolist()
        order["gen"] += batch["gen"][1].tolist()
    return order


def test_three_streams_shapes_and_range():
    dm = make_datamodule()
    assert (dm.num_classes, dm.channels, dm.image_size) == (64, 1, 28)
    assert dm.ood.length == 64  # generated source sized to the train set
    loader = dm.train_dataloader()
    assert [len(stream) for stream in loader.flattened] == [8, 8, 8]
    steps = 0
    for batch, _, _ in loader:
        steps += 1
        assert set(batch) == {"clf", "gen", "ood"}
        (x, y), (x_hat, y_hat), x0 = batch["clf"], batch["gen"], batch["ood"]
        for images in (x, x_hat, x0):
            assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32
            assert 0 <= images.min() and images.max() <= 1
        assert y.shape == y_hat.shape == (8,) and y.dtype == torch.int64
    assert steps == 8


def test_stream_orders_independent_reproducible_and_per_epoch():
    epoch0 = epoch_labels(make_datamodule(seed=3), 0)
    assert sorted(epoch0["clf"]) == sorted(epoch0["gen"]) == list(range(64))  # one full pass each
    assert epoch0["clf"] != epoch0["gen"]  # independent streams
    assert epoch_labels(make_datamodule(seed=3), 0) == epoch0  # reproducible
    epoch1 = epoch_labels(make_datamodule(seed=3), 1)
    assert epoch1["clf"] != epoch0["clf"] and epoch1["gen"] != epoch0["gen"]
    assert epoch_labels(make_datamodule(seed=4), 0)["clf"] != epoch0["clf"]


def test_ood_stream_matches_the_train_epoch_length():
    larger = make_datamodule(ood=UniformNoise(1, 28, length=1000))
    smaller = make_datamodule(ood=UniformNoise(1, 28, length=10))
    for dm in (larger, smaller):
        loaders = dm.train_dataloader().flattened
        assert len(loaders[2]) == len(loaders[0]) == 8
    assert len(set(smaller.stream_sampler("ood").epoch_indices(0).tolist())) == 10  # cycles all
    assert len(set(larger.stream_sampler("ood").epoch_indices(0).tolist())) == 64  # no repeats


def test_worker_processes_give_the_same_order(tmp_path):
    write_tiny_images(tmp_path / "tiny.bin", 40)
    tiny = TinyImages(
        tmp_path / "tiny.bin",
        transform=lambda image: T.to_tensor()(image.convert("L").resize((28, 28))),
    )
    in_process = make_datamodule(n=32, seed=1, ood=tiny)
    workers = make_datamodule(n=32, seed=1, ood=tiny, num_workers=2)
    assert workers.persistent_workers
    batches = [list(dm.train_dataloader()) for dm in (in_process, workers)]
    for (a, _, _), (b, _, _) in zip(*batches, strict=True):
        assert torch.equal(a["clf"][1], b["clf"][1]) and torch.equal(a["gen"][1], b["gen"][1])
        assert torch.equal(a["ood"], b["ood"])  # memmap reopened in each worker


def test_setup_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    make_datamodule()  # runs setup("fit"), which applies random augmentations
    assert torch.equal(torch.rand(3), expected)


class RecordOrder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        assert isinstance(batch["ood"], torch.Tensor)
        self.seen.setdefault(self.current_epoch, []).extend(batch["clf"][1].tolist())
        return (self.weight * batch["clf"][0].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_trainer_advances_the_sampler_epochs():
    dm, model = make_datamodule(seed=5), RecordOrder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    expected = [dm.stream_sampler("clf").epoch_indices(e).tolist() for e in (0, 1)]
    assert model.seen[0] == expected[0] and model.seen[1] == expected[1]
    assert model.seen[0] != model.seen[1]


def test_val_and_test_loaders_are_ordered():
    dm = make_datamodule(val_size=10)
    assert torch.cat([y for _, y in dm.val_dataloader()]).tolist() == list(range(10))
    assert torch.cat([y for _, y in dm.test_dataloader()]).tolist() == list(range(64))
    spread = make_datamodule(val_size=4, val_subset="spread")
    assert torch.cat([y for _, y in spread.val_dataloader()]).tolist() == [0, 21, 42, 63]
    real = make_datamodule().real_eval_dataset(4)
    assert [real[i][1] for i in range(4)] == [0, 21, 42, 63] and real[0][0].shape == (1, 28, 28)


def test_shape_mismatch_names_the_config_keys():
    with pytest.raises(ValueError) as err:
        make_datamodule(channels=3)
    assert "(1, 28, 28)" in str(err.value) and "channels=3" in str(err.value)
    assert "data.channels" in str(err.value)
    with pytest.raises(ValueError, match=r"image_size=32.*data.image_size"):
        make_datamodule(image_size=32, ood=UniformNoise(1, 32))
    with pytest.raises(ValueError, match="OOD source.*shape"):
        make_datamodule(ood=UniformNoise(3, 28))
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        make_datamodule(val_transform=lambda image: T.to_tensor()(image) * 2 - 1)


def test_class_count_mismatch():
    train = NumberedImages(16)
    train.classes = ["a", "b"]
    with pytest.raises(ValueError, match="num_classes=2"):
        make_datamodule(n=16, train_set=train, num_classes=10)


def test_empty_ood_source_is_named(tmp_path):
    (tmp_path / "openimage_o").mkdir()
    with pytest.raises(ValueError, match="OOD source.*openimage_o.*empty"):
        make_datamodule(ood=OODImageFolder(tmp_path / "openimage_o"))
    write_tiny_images(tmp_path / "tiny.bin", 2)
    (tmp_path / "all.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match="TinyImages.*empty"):
        make_datamodule(
            ood=TinyImages(tmp_path / "tiny.bin", exclude_idx_file=tmp_path / "all.txt")
        )


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
