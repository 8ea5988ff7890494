"""Models: the normalizing :class:`Classifier` wrapper and extra timm architectures.

Importing this package registers with timm: ``wrn34_10``, ``wrn28_10``, ``wrn16_4``, ``wrn16_2``,
``wrn10_2`` (CIFAR WideResNets) and ``convnext_large_convstem``, ``convnext_tiny_convstem``.
"""

from dat_lightning.models import convnext_convstem, wide_resnet  # noqa: F401  (registers models)
from dat_lightning.models.classifier import Classifier, build_classifier
from dat_lightning.models.convnext_convstem import ConvNeXtConvStem, ConvStem
from dat_lightning.models.wide_resnet import WideResNet

REGISTERED_MODELS = (
    "wrn34_10",
    "wrn28_10",
    "wrn16_4",
    "wrn16_2",
    "wrn10_2",
    "wrn10_1",
    "convnext_large_convstem",
    "convnext_tiny_convstem",
)

__all__ = [
    "REGISTERED_MODELS",
    "Classifier",
    "ConvNeXtConvStem",
    "ConvStem",
    "WideResNet",
    "build_classifier",
]
