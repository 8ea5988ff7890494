"""CIFAR-style WideResNets (Zagoruyko & Komodakis 2016), registered with timm.

Module and attribute names follow the RobustBench / TRADES / RATIO ``WideResNet`` (``conv1``,
``block{1,2,3}.layer.{i}`` BasicBlocks with ``bn1 relu1 conv1 bn2 relu2 conv2 [convShortcut]``,
then ``bn1``, ``relu``, ``fc``), so public robust checkpoints load by name with
``load_state_dict``. The block's odd pre-activation wiring is reproduced exactly for the same reason.

Registered names: ``wrn34_10`` (the DAT paper's CIFAR backbone), ``wrn28_10``, ``wrn16_4``, and
the CPU-sized ``wrn10_1`` (the Fashion-MNIST default) and ``wrn10_2`` (4x its parameters);
``test_wrn16_2`` for tests (timm's ``test_`` prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import create_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["BasicBlock", "NetworkBlock", "WideResNet"]


def _conv3x3(in_chs: int, out_chs: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Pre-activation residual block (BN-act-conv twice).

    When the channel count or resolution changes, the shortcut is a 1x1 conv applied to the
    *activated* input (``relu1(bn1(x))``), not to ``x``; that is how the reference implementation
    behaves and what its checkpoints were trained with.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        drop_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.bn1 = norm_layer(in_chs)
        self.relu1 = create_act_layer(act_layer, inplace=True)
        self.conv1 = _conv3x3(in_chs, out_chs, stride)
        self.bn2 = norm_layer(out_chs)
        self.relu2 = create_act_layer(act_layer, inplace=True)
        self.conv2 = _conv3x3(out_chs, out_chs, 1)
        self.drop_rate = drop_rate
        self.equal_in_out = in_chs == out_chs and stride == 1
        # None (not an Identity) keeps the state-dict keys identical to the reference.
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        shortcut = x if self.equal_in_out else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """A stage of ``num_blocks`` BasicBlocks; the first one may change width and stride."""

    def __init__(self, num_blocks: int, in_chs: int, out_chs: int, stride: int, **block_kwargs):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                BasicBlock(
                    in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, **block_kwargs
                )
                for i in range(num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen for small images, with timm's classifier interface.

    Args:
        depth: total depth, ``6 n + 4`` (n BasicBlocks per stage).
        widen_factor: width multiplier k; stage widths are 16k, 32k, 64k.
        in_chans: input channels (1 for grayscale works).
        num_classes: classifier outputs; 0 gives a feature extractor (``fc`` is Identity).
        drop_rate: dropout inside each block, between the two convs (as in the original WRN);
            not a pre-classifier dropout.
        norm_layer, act_layer: layer constructors, timm style.
        global_pool: only ``"avg"`` is supported; pooling is adaptive, so any input size works
            (for 32x32 it equals the reference's ``avg_pool2d(8)``).
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_chans: int = 3,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
        act_layer: type[nn.Module] = nn.ReLU,
        global_pool: str = "avg",
    ):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        if global_pool != "avg":
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        blocks_per_stage = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        block_kwargs = dict(drop_rate=drop_rate, norm_layer=norm_layer, act_layer=act_layer)

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = widths[3]
        self.conv1 = _conv3x3(in_chans, widths[0], 1)
        self.block1 = NetworkBlock(blocks_per_stage, widths[0], widths[1], 1, **block_kwargs)
        self.block2 = NetworkBlock(blocks_per_stage, widths[1], widths[2], 2, **block_kwargs)
        self.block3 = NetworkBlock(blocks_per_stage, widths[2], widths[3], 2, **block_kwargs)
        self.bn1 = norm_layer(widths[3])
        self.relu = create_act_layer(act_layer, inplace=True)
        self.fc = self._make_fc(num_classes)
        self.feature_info = [
            dict(num_chs=widths[1], reduction=1, module="block1"),
            dict(num_chs=widths[2], reduction=2, module="block2"),
            dict(num_chs=widths[3], reduction=4, module="relu"),
        ]
        self._init_weights()

    def _make_fc(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # Same init as the reference: He-normal (fan_out) convs, unit BN, zero linear bias.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the last layer by a freshly initialised one with ``num_classes`` outputs."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"only global_pool='avg' is supported, got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = self._make_fc(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled final feature map, after the last BN + activation: (B, num_features, H/4, W/4)."""
        x = self.conv1(x)
        x = self.block3(self.block2(self.block1(x)))
        return self.relu(self.bn1(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs) -> dict:
    # No weights are hosted for these names (url/hf_hub_id empty); load checkpoints explicitly.
    # mean/std are the CIFAR-10 statistics, the usual choice when training from scratch.
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2471, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {name: _cfg() for name in ("wrn34_10", "wrn28_10", "wrn16_4", "wrn10_2", "wrn10_1", "test_wrn16_2")}
)


def _create_wide_resnet(variant: str, pretrained: bool = False, **kwargs) -> WideResNet:
    return build_model_with_cfg(
        WideResNet,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **kwargs,
    )


@register_model
def wrn34_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-34-10 (46M params), the CIFAR backbone of the DAT paper."""
    return _create_wide_resnet("wrn34_10", pretrained, depth=34, widen_factor=10, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-28-10 (36M params)."""
    return _create_wide_resnet("wrn28_10", pretrained, depth=28, widen_factor=10, **kwargs)


@register_model
def wrn16_4(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-4 (2.7M params)."""
    return _create_wide_resnet("wrn16_4", pretrained, depth=16, widen_factor=4, **kwargs)


@register_model
def test_wrn16_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-16-2 (0.7M params), for tests: two blocks per stage, so identity blocks too."""
    return _create_wide_resnet("test_wrn16_2", pretrained, depth=16, widen_factor=2, **kwargs)


@register_model
def wrn10_2(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-10-2 (one block per stage, ~0.3M params): the CPU default's width doubled."""
    return _create_wide_resnet("wrn10_2", pretrained, depth=10, widen_factor=2, **kwargs)


@register_model
def wrn10_1(pretrained: bool = False, **kwargs) -> WideResNet:
    """WRN-10-1 (16-32-64 channels): the fastest one, for the CPU default on Fashion-MNIST."""
    return _create_wide_resnet("wrn10_1", pretrained, depth=10, widen_factor=1, **kwargs)
