"""Feature extractors for FID/IS, addressed by name.

Inception weights cannot be fetched offline; the offline default is the standard CIFAR-10
ResNet-18 that ships inside ``pyautoattack``. Scores from it are NOT Inception FID, and
every score carries its extractor's name so nobody mistakes one for the other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dat_lightning.checkpoints import read_checkpoint


def _pyautoattack_examples() -> Path:
    spec = importlib.util.find_spec("pyautoattack")
    if spec is None or spec.origin is None:
        raise ImportError("pyautoattack is not installed: pip install pyautoattack")
    return Path(spec.origin).parent / "examples"


def _load_module_from(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CifarResNet18Features(nn.Module):
    """Penultimate (512-d) features of pyautoattack's CIFAR-10 ResNet-18 checkpoint.

    Takes images in [0, 1] of any size and 1 or 3 channels: they are resized to 32x32 and
    grayscale is repeated to RGB, which is how Fashion-MNIST samples get scored offline.
    """

    name = "cifar10_resnet18"
    num_features = 512

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        examples = _pyautoattack_examples()
        resnet = _load_module_from(examples / "resnet.py", "_pyautoattack_resnet")
        self.net = resnet.ResNet18()
        path = Path(weights_path) if weights_path else examples / "model_test.pt"
        self.net.load_state_dict(read_checkpoint(path))
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> CifarResNet18Features:
        return super().train(False)  # a metric's network never trains

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (32, 32):
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        n = self.net
        out = F.relu(n.bn1(n.conv1(x)))
        out = n.layer4(n.layer3(n.layer2(n.layer1(out))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


EXTRACTORS = {"cifar_resnet18": CifarResNet18Features}


def build_extractor(name: str, **kwargs) -> nn.Module:
    """An extractor by registry name (``cifar_resnet18``); unknown names list the valid ones."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**kwargs)
