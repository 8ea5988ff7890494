"""Feature extractors for FID/IS, addressed by name.

Inception weights cannot be fetched offline; the offline default is the standard CIFAR-10
ResNet-18 that ships inside ``pyautoattack``. Scores from it are NOT Inception FID, and
every score carries its extractor's name so nobody mistakes one for the other.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.error import URLError

import hydra
import torch
import torch.nn.functional as F
import torch_fidelity.feature_extractor_inceptionv3 as _fidelity_inception
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dat_lightning.checkpoints import read_checkpoint
from dat_lightning.metrics.fmnist_judge import FashionMNISTJudgeFeatures


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

    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        """CIFAR-10 class logits of the network's own head, for the Inception Score."""
        return self.net.linear(features.float())


INCEPTION_URL = _fidelity_inception.URL_INCEPTION_V3


def _inception_state(weights_path: str | Path | None) -> dict[str, Tensor]:
    """The standard FID Inception-v3 weights (torch-fidelity's TF port), loaded weights-only."""
    if weights_path is not None:
        return read_checkpoint(weights_path)
    try:
        return torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=False, weights_only=True)
    except (OSError, URLError) as err:  # no network, DNS failure, refused connection, ...
        raise RuntimeError(
            f"cannot download the Inception-v3 FID weights ({type(err).__name__}: {err}). Offline, copy "
            f"{INCEPTION_URL} to this machine and pass its path as the extractor's weights_path "
            "(evaluate/sample: fid.weights_path=/path/to/weights-inception-2015-12-05-6726825d.pth), "
            "or use the offline extractor fid.extractor=cifar_resnet18 (its scores are not Inception FID)."
        ) from err


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048-d) and logits of the standard FID network (torch-fidelity).

    Takes images in [0, 1] with 1 or 3 channels at any size: grayscale is repeated to RGB, then
    the images are quantized to uint8 and resized to 299 exactly as torch-fidelity does, so
    scores are comparable with published Inception FID / IS (for RGB data).
    """

    name = "inception_v3"
    num_features = 2048

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        state = _inception_state(weights_path)
        # torch-fidelity would load (or download) the file itself with weights_only=False; hand it
        # the weights read above instead, so every load in the project stays weights-only.
        with mock.patch.object(_fidelity_inception, "load_state_dict_from_url", lambda *a, **k: state):
            self.net = _fidelity_inception.FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"])
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        return super().train(False)  # a metric's network never trains

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        features, _ = self.net((x.clamp(0, 1) * 255).round().to(torch.uint8))
        return features

    @torch.no_grad()
    def logits_from_features(self, features: Tensor) -> Tensor:
        """The unbiased 1008-way logits torch-fidelity uses for the Inception Score."""
        return features.float() @ self.net.fc.weight.T


EXTRACTORS = {
    "cifar_resnet18": CifarResNet18Features,
    "inception": InceptionFeatures,
    "fmnist_cnn": FashionMNISTJudgeFeatures,
}


def build_extractor(name: str, **kwargs) -> nn.Module:
    """An extractor by registry name (``cifar_resnet18``, ``inception``, ``fmnist_cnn``; each takes
    ``weights_path``); unknown names list the valid ones."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**kwargs)


def build_feature_extractor(fid_cfg: Mapping[str, Any]) -> nn.Module:
    """``fid.extractor``: a registry name (with ``fid.weights_path``) or a node with ``_target_``."""
    spec = fid_cfg["extractor"]
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, str):
        kwargs = {"weights_path": fid_cfg["weights_path"]} if fid_cfg.get("weights_path") else {}
        return build_extractor(spec, **kwargs)
    if isinstance(spec, Mapping) and "_target_" in spec:
        return hydra.utils.instantiate(spec)
    raise ValueError(f"fid.extractor must be a name or a node with _target_, got {spec!r}")
