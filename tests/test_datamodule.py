"""The datamodule: three independent seeded streams (classification, generation, OOD seeds),
the same order with worker processes, per-epoch reshuffles driven by Lightning, ordered
evaluation splits, and clear errors for mismatched shapes and classes."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from dat_lightning.data import DATDataModule, OODImageFolder, TinyImages, UniformNoise
from dat_lightning.data import transforms as T
from helpers import write_tiny_images


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


