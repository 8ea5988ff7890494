"""Data for DAT: datasets, OOD seed sources, augmentations and the three-stream datamodule."""

from .datamodule import DATDataModule, TransformedDataset
from .datasets import (
    CorruptImageError,
    DatasetNotFoundError,
    cifar10,
    cifar100,
    fashion_mnist,
    image_folder,
    restricted_imagenet,
)
from .generated import HandwrittenDigits, NaturalPhotoCrops, UniformNoise
from .ood import OODImageFolder, TinyImages, UnlabeledImages
from .order import SeededRandomSampler

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
