"""Models: the normalizing :class:`Classifier` wrapper and the timm architectures DAT adds.

Importing this package registers with timm the CIFAR WideResNets (:mod:`.wide_resnet`), the
ConvNeXt + ConvStem family (:mod:`.convnext_convstem`) and the ImageNet WideResNet-50-4
(:mod:`.imagenet_wide_resnet`); :data:`REGISTERED_MODELS` asks timm which they are. Tiny models
for tests carry timm's ``test_`` prefix.
"""

import timm

from dat_lightning.models import convnext_convstem, imagenet_wide_resnet, wide_resnet
from dat_lightning.models.classifier import Classifier, build_classifier
from dat_lightning.models.convnext_convstem import ConvNeXtConvStem, ConvStem
from dat_lightning.models.wide_resnet import WideResNet

# timm files registrations under the defining module's last name.
REGISTERED_MODELS = tuple(timm.list_models(module=[m.__name__.rsplit(".", 1)[-1]
                                                   for m in (wide_resnet, convnext_convstem,
                                                             imagenet_wide_resnet)]))

__all__ = [
    "REGISTERED_MODELS",
    "Classifier",
    "ConvNeXtConvStem",
    "ConvStem",
    "WideResNet",
    "build_classifier",
]
