"""ImageNet WideResNet-50-4 (timm's ``ResNet`` with four times wider bottlenecks), registered with timm.

timm ships ``wide_resnet50_2`` but not the 4x variant. Salman et al. 2020 ("Do adversarially robust
ImageNet models transfer better?") released an L2 (eps 3) robust WRN-50-4, and the DAT authors
(github.com/xuwangyin/DAT) start their ImageNet WRN-50x4 runs from it. Their timm fork registers
``wide_resnet50_4`` as ``ResNet(Bottleneck, layers=(3, 4, 6, 3), base_width=256)``; the same
constructor here gives the same module tree, so their state dicts load by name (and torchvision's
``wide_resnet50_2``-style key names are timm's). Only the bottleneck's inner width changes:
``base_width=256`` makes it ``4 x planes`` (the last block is 2048-2048-2048 instead of
ResNet-50's 2048-512-2048).

Registered names: ``wide_resnet50_4`` (223M params) and ``test_wide_resnet50_4`` (tiny, for tests,
with timm's ``test_`` prefix: the same blocks and width ratio at 1/8 of the stage channels).
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet

__all__: list[str] = []


def _cfg(**kwargs) -> dict:
    # No hosted weights for these names: load a robust checkpoint explicitly (init_ckpt=...).
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 256, 256),
        "pool_size": (8, 8),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"wide_resnet50_4": _cfg(), "test_wide_resnet50_4": _cfg()})


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs) -> ResNet:
    return build_model_with_cfg(ResNet, variant, pretrained, **kwargs)


@register_model
def wide_resnet50_4(pretrained: bool = False, **kwargs) -> ResNet:
    """WRN-50-4: ResNet-50 with bottlenecks four times wider (``base_width=256``)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), base_width=256)
    return _create_wide_resnet("wide_resnet50_4", pretrained, **dict(model_args, **kwargs))


@register_model
def test_wide_resnet50_4(pretrained: bool = False, **kwargs) -> ResNet:
    """A tiny WRN-50-4 for tests (1M params): stage channels 8-16-32-64 (x4 out; the 7x7 stem keeps
    its 64), two blocks in the first stage (so an identity shortcut too) and one in the others,
    the same 4x bottleneck width."""
    model_args = dict(block=Bottleneck, layers=(2, 1, 1, 1), base_width=256, channels=(8, 16, 32, 64))
    return _create_wide_resnet("test_wide_resnet50_4", pretrained, **dict(model_args, **kwargs))
