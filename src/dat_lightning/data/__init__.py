"""Data for DAT: datasets, OOD seed sources, augmentations and the three-stream datamodule."""

from .datamodule import DATDataModule, SeededRandomSampler, TransformedDataset
from .datasets import (
    CorruptImageError,
    DatasetNotFoundError,
    cifar10,
    cifar100,
    fashion_mnist,
    image_folder,
    restricted_imagenet,
)
from .ood import (
    HandwrittenDigits,
    NaturalPhotoCrops,
    OODImageFolder,
    TinyImages,
    UniformNoise,
    UnlabeledImages,
)

__all__ = [
    "CorruptImageError",
    "DATDataModule",
    "DatasetNotFoundError",
    "HandwrittenDigits",
    "NaturalPhotoCrops",
    "OODImageFolder",
    "SeededRandomSampler",
    "TinyImages",
    "TransformedDataset",
    "UniformNoise",
    "UnlabeledImages",
    "cifar10",
    "cifar100",
    "fashion_mnist",
    "image_folder",
    "restricted_imagenet",
]
