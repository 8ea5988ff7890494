"""ConvNeXt with a convolutional stem (ConvStem), registered with timm.

Singh, Croce & Hein 2023, "Revisiting Adversarial Training for ImageNet" (code:
github.com/nmndeep/revisiting-at) show that replacing ConvNeXt's 4x4 patchify stem by a small
stack of 3x3 convs improves adversarial robustness. DAT's ImageNet-256 ConvNeXt-L uses their
ConvNeXt-L + ConvStem. For ConvNeXt-B/L their stem (``ConvBlock3``) is::

    conv3x3 s2 (in -> w) - LN - GELU - conv3x3 s2 (w -> 1.5w) - LN - GELU - conv3x3 s1 (1.5w -> 2w) - LN - GELU

with w = 96 for ConvNeXt-L (96-144-192; 2w = dims[0] = 192), biased convs and channels-first
LayerNorm (eps 1e-6). Total stride is 4, like the patchify stem, so every stage keeps its shape.
Their model is timm's ConvNeXt with ``model.stem = ConvBlock3(96)``, so the stem's parameters are
named ``stem.stem.{0,1,3,4,6,7}.{weight,bias}``; ``ConvStem`` keeps that nesting so their state
dict loads by name. Everything after the stem is timm's ``ConvNeXt`` unchanged.

Registered names: ``convnext_large_convstem`` (198M params) and ``test_convnext_convstem`` (tiny,
for tests, with timm's ``test_`` prefix).
"""

from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import named_apply
from timm.models.convnext import ConvNeXt, _init_weights
from torch import nn

__all__ = ["ConvStem", "ConvNeXtConvStem"]


class ConvStem(nn.Module):
    """Three 3x3 convs (strides 2, 2, 1), each followed by LayerNorm2d and GELU; total stride 4.

    The layers live in ``self.stem`` (an ``nn.Sequential``) to match the reference key names.
    """

    stride = 4

    def __init__(
        self,
        in_chans: int,
        widths: tuple[int, int, int],
        norm_eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        layers: list[nn.Module] = []
        prev_chs = in_chans
        for out_chs, stride in zip(widths, (2, 2, 1), strict=True):
            layers += [
                nn.Conv2d(prev_chs, out_chs, kernel_size=3, stride=stride, padding=1, **dd),
                LayerNorm2d(out_chs, eps=norm_eps, **dd),
                nn.GELU(),
            ]
            prev_chs = out_chs
        self.stem = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class ConvNeXtConvStem(ConvNeXt):
    """timm ``ConvNeXt`` whose patchify stem is replaced by a :class:`ConvStem`.

    Args:
        stem_widths: output channels of the three stem convs; the last must equal ``dims[0]``.
        **kwargs: passed to ``timm.models.convnext.ConvNeXt`` (depths, dims, drop_path_rate, ...).
    """

    def __init__(self, stem_widths: tuple[int, int, int], in_chans: int = 3, **kwargs):
        super().__init__(in_chans=in_chans, **kwargs)
        dims = kwargs.get("dims", (96, 192, 384, 768))
        if stem_widths[-1] != dims[0]:
            raise ValueError(f"stem_widths[-1]={stem_widths[-1]} must equal dims[0]={dims[0]}")
        # Same device/dtype as the rest (e.g. "meta"), and initialised like timm's ConvNeXt.
        dd = dict(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self.stem = ConvStem(in_chans, stem_widths, **dd)
        named_apply(_init_weights, self.stem)


def _cfg(**kwargs) -> dict:
    # No hosted weights for these names: load the robust checkpoint explicitly (or via
    # pretrained_cfg_overlay=dict(file=...)).
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.stem.0",
        "classifier": "head.fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"convnext_large_convstem": _cfg(), "test_convnext_convstem": _cfg()}
)


def _create_convnext_convstem(variant: str, pretrained: bool = False, **kwargs) -> ConvNeXtConvStem:
    return build_model_with_cfg(
        ConvNeXtConvStem,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


@register_model
def convnext_large_convstem(pretrained: bool = False, **kwargs) -> ConvNeXtConvStem:
    """ConvNeXt-L + ConvStem 96-144-192 (198M params), as in Singh et al. 2023 and DAT ImageNet."""
    model_args = dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), stem_widths=(96, 144, 192))
    return _create_convnext_convstem(
        "convnext_large_convstem", pretrained, **dict(model_args, **kwargs)
    )


@register_model
def test_convnext_convstem(pretrained: bool = False, **kwargs) -> ConvNeXtConvStem:
    """A tiny ConvNeXt + ConvStem (one block per stage, dims 16-128, stem 8-12-16) for tests of the
    large model's code path: the same layers, small enough for float64 on a CPU."""
    model_args = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), stem_widths=(8, 12, 16))
    return _create_convnext_convstem(
        "test_convnext_convstem", pretrained, **dict(model_args, **kwargs)
    )
