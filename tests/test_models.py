"""Tests for dat_lightning.models: timm registration, architectures, the normalizing Classifier."""

from __future__ import annotations

import pytest
import timm
import timm.models._builder as timm_builder
import torch
from torch import nn

import dat_lightning.models as models
from dat_lightning.models import Classifier, ConvNeXtConvStem, WideResNet, build_classifier

SMALL_MODELS = ("wrn10_1", "wrn10_2", "wrn16_4", "test_wrn16_2", "test_convnext_convstem")
LARGE_MODELS = ("wrn34_10", "wrn28_10", "convnext_large_convstem")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_registered_model_is_built_by_timm_and_fetches_nothing():
    assert set(SMALL_MODELS + LARGE_MODELS) <= set(models.REGISTERED_MODELS)
    for name in models.REGISTERED_MODELS:
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=3)
        assert model.num_classes == 3, name
        cfg = model.pretrained_cfg
        assert not any(cfg.get(k) for k in ("url", "hf_hub_id", "file")), name  # no weights to download


def test_every_model_a_config_names_is_registered():
    from omegaconf import OmegaConf

    from dat_lightning.config import CONFIG_DIR

    configs = [OmegaConf.load(p) for p in (CONFIG_DIR / "model").glob("*.yaml")]
    names = {c.net.name for c in configs if "name" in c.get("net", {})}
    assert len(names) >= 4 and all(timm.is_model(n) for n in names), names


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_small_models_build_and_classify(name):
    model = timm.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", LARGE_MODELS)
def test_large_models_build_on_meta_device(name):
    # Meta tensors carry shapes only: the full architecture is built and run without memory/time.
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
        logits = model(torch.empty(2, 3, 64, 64))
    assert logits.shape == (2, 10)


def test_wrn34_10_has_the_papers_parameter_count():
    with torch.device("meta"):
        model = timm.create_model("wrn34_10")
    assert isinstance(model, WideResNet)
    assert n_params(model) == 46_160_474  # WRN-34-10, 10 classes: the usual "46.2M"


def test_convnext_large_convstem_swaps_only_the_stem():
    with torch.device("meta"):
        ours = timm.create_model("convnext_large_convstem")
        reference = timm.create_model("convnext_large")
    patchify_stem = 3 * 192 * 4 * 4 + 192 + 2 * 192  # 4x4 conv + bias + LayerNorm
    conv_stem = sum(
        c_in * c_out * 9 + c_out + 2 * c_out  # 3x3 conv + bias + LayerNorm
        for c_in, c_out in ((3, 96), (96, 144), (144, 192))
    )
    assert isinstance(ours, ConvNeXtConvStem)
    assert n_params(ours) == n_params(reference) - patchify_stem + conv_stem
    assert round(n_params(ours) / 1e6) == 198  # the paper's "198M"


def test_convnext_large_convstem_keys_match_revisiting_at_layout():
    with torch.device("meta"):
        model = timm.create_model("convnext_large_convstem")
    stem_shapes = {
        k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith("stem.")
    }
    assert stem_shapes == {
        "stem.stem.0.weight": (96, 3, 3, 3),
        "stem.stem.0.bias": (96,),
        "stem.stem.1.weight": (96,),
        "stem.stem.1.bias": (96,),
        "stem.stem.3.weight": (144, 96, 3, 3),
        "stem.stem.3.bias": (144,),
        "stem.stem.4.weight": (144,),
        "stem.stem.4.bias": (144,),
        "stem.stem.6.weight": (192, 144, 3, 3),
        "stem.stem.6.bias": (192,),
        "stem.stem.7.weight": (192,),
        "stem.stem.7.bias": (192,),
    }


def test_convstem_layout_and_output_stride_4():
    model = timm.create_model("test_convnext_convstem", num_classes=10).eval()
    layers = list(model.stem.stem)
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1)]
    assert [c.out_channels for c in convs] == [8, 12, 16]
    assert [type(m).__name__ for m in layers[:3]] == ["Conv2d", "LayerNorm2d", "GELU"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        stem_out = model.stem(x)
        logits = model(x)
    assert stem_out.shape == (1, 16, 16, 16)
    assert logits.shape == (1, 10)


def test_convnext_drop_path_rate_passes_through():
    default = timm.create_model("test_convnext_convstem")
    with_drop_path = timm.create_model("test_convnext_convstem", drop_path_rate=0.2)
    assert isinstance(default.stages[3].blocks[-1].drop_path, nn.Identity)
    assert with_drop_path.stages[3].blocks[-1].drop_path.drop_prob == pytest.approx(0.2)


def test_grayscale_wrn_on_fashion_mnist_size():
    model = timm.create_model("wrn10_2", in_chans=1, num_classes=10).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_wrn_feature_and_head_interface():
    model = timm.create_model("wrn10_2", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    assert features.shape == (2, 128, 8, 8)
    assert model.num_features == 128
    assert pooled.shape == (2, 128)
    torch.testing.assert_close(pooled, features.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, model.fc(pooled))


def _reference_wrn_keys(depth: int) -> set[str]:
    """State-dict keys of the RobustBench/TRADES WideResNet (3 input stages, BN with stats)."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in bn}
    for stage in (1, 2, 3):
        for i in range((depth - 4) // 6):
            prefix = f"block{stage}.layer.{i}"
            keys |= {f"{prefix}.bn1.{s}" for s in bn} | {f"{prefix}.bn2.{s}" for s in bn}
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            if i == 0:  # width changes in every stage's first block (16 -> 32 for test_wrn16_2)
                keys.add(f"{prefix}.convShortcut.weight")
    return keys


def test_wrn_state_dict_matches_robustbench_layout():
    keys = set(timm.create_model("test_wrn16_2").state_dict())
    assert "block1.layer.0.bn1.weight" in keys
    assert "fc.weight" in keys
    assert keys == _reference_wrn_keys(16)


def test_wrn_block_wiring_matches_reference():
    """Shortcut of a widening block takes the *activated* input; identity blocks take raw x."""
    torch.manual_seed(0)
    model = timm.create_model("test_wrn16_2").eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    widening, identity = model.block2.layer[0], model.block2.layer[1]
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        act = torch.relu(widening.bn1(x))
        expected = widening.convShortcut(act) + widening.conv2(
            torch.relu(widening.bn2(widening.conv1(act)))
        )
        torch.testing.assert_close(widening(x), expected)
        y = torch.randn(2, 64, 4, 4)
        expected = y + identity.conv2(
            torch.relu(identity.bn2(identity.conv1(torch.relu(identity.bn1(y)))))
        )
        torch.testing.assert_close(identity(y), expected)


def test_reset_classifier():
    classifier = build_classifier("wrn10_2", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    classifier.backbone.reset_classifier(5)
    assert classifier.num_classes == 5
    assert classifier.backbone.get_classifier().out_features == 5
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    classifier.backbone.reset_classifier(0)
    assert isinstance(classifier.backbone.get_classifier(), nn.Identity)
    assert classifier(torch.rand(2, 3, 32, 32)).shape == (2, 128)


def test_classifier_normalizes_inside_forward():
    torch.manual_seed(0)
    mean, std = (0.2, 0.5, 0.8), (0.1, 0.3, 0.9)
    backbone = timm.create_model("wrn10_2", num_classes=10).eval()
    classifier = Classifier(backbone, mean, std).eval()
    x = torch.rand(3, 3, 32, 32)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), backbone((x - mean_t) / std_t))
        assert not torch.allclose(classifier(x), backbone(x), atol=1e-3)
    assert classifier.mean.shape == classifier.std.shape == (1, 3, 1, 1)
    assert classifier.in_chans == 3 and classifier.num_classes == 10


def test_classifier_buffers_are_not_in_the_state_dict():
    classifier = build_classifier("wrn10_2", num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    keys = classifier.state_dict().keys()
    assert all(k.startswith("backbone.") for k in keys)
    assert {k.removeprefix("backbone.") for k in keys} == set(classifier.backbone.state_dict())
    assert classifier.to(torch.float64).mean.dtype == torch.float64  # buffers still follow .to()


def test_build_classifier_grayscale_and_default_mean_std():
    gray = build_classifier("wrn10_2", num_classes=10, in_chans=1, mean=(0.286,), std=(0.353,))
    assert gray.in_chans == 1
    assert gray(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    default = build_classifier("wrn10_2", num_classes=10)
    torch.testing.assert_close(default.mean.flatten(), torch.tensor(CIFAR10_MEAN))
    torch.testing.assert_close(default.std.flatten(), torch.tensor(CIFAR10_STD))


def test_mean_std_length_mismatch_raises():
    with pytest.raises(ValueError, match="in_chans"):
        build_classifier("wrn10_2", 10, in_chans=1, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    with pytest.raises(ValueError, match="mean and std explicitly"):
        build_classifier("wrn10_2", 10, in_chans=1)  # CIFAR defaults have 3 channels
    backbone = timm.create_model("wrn10_2")
    with pytest.raises(ValueError, match="std"):
        Classifier(backbone, CIFAR10_MEAN, CIFAR10_STD[:2])
    with pytest.raises(ValueError, match="backbone expects 1"):
        Classifier(timm.create_model("wrn10_2", in_chans=1), CIFAR10_MEAN, CIFAR10_STD)


def test_pretrained_download_failure_raises_instead_of_falling_back(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("simulated: no network")

    monkeypatch.setattr(timm_builder, "load_pretrained", offline)
    with pytest.raises(RuntimeError, match="pretrained=False") as info:
        build_classifier("resnet18", num_classes=10, pretrained=True)
    assert isinstance(info.value.__cause__, OSError)


def test_pretrained_without_any_weights_raises(monkeypatch):
    with pytest.raises(RuntimeError, match="pretrained=False"):
        build_classifier("wrn10_2", num_classes=10, pretrained=True)
    # Even if timm only warned and kept the random init, build_classifier must refuse.
    monkeypatch.setattr(timm_builder, "load_pretrained", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="knows no weights"):
        build_classifier("wrn10_2", num_classes=10, pretrained=True)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_channels_last_classifier_computes_the_same_logits_and_input_gradients(in_chans):
    kwargs = dict(num_classes=10, in_chans=in_chans, mean=[0.3] * in_chans, std=[0.3] * in_chans)
    torch.manual_seed(0)
    plain = build_classifier("wrn10_1", **kwargs).eval()
    fast = build_classifier("wrn10_1", channels_last=True, **kwargs).eval()
    fast.load_state_dict(plain.state_dict())
    conv = [m.weight for m in fast.backbone.modules()
            if isinstance(m, nn.Conv2d) and m.in_channels > 1 and m.kernel_size == (3, 3)][-1]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = torch.rand(4, in_chans, 28, 28)
    grads = []
    for net in (plain, fast):
        z = x.clone().requires_grad_(True)
        logits = net(z)
        grads.append(torch.autograd.grad(logits.logsumexp(1).sum(), z)[0])
        grads.append(logits)
    torch.testing.assert_close(grads[1], grads[3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-6)
    # and back: a channels-last state dict loads into a plain network unchanged
    plain.load_state_dict(fast.state_dict())
    torch.testing.assert_close(plain(x), fast(x), rtol=1e-5, atol=1e-5)
