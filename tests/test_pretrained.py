"""Public robust checkpoints load into our timm models (synthetic files with the real key layouts)."""

from __future__ import annotations

import functools

import pytest
import torch

from dat_lightning.checkpoints import CheckpointError, load_matching, read_checkpoint
from dat_lightning.checkpoints.foreign import convert, detect_format
from dat_lightning.checkpoints.formats import RATIO_CIFAR_MEAN, RATIO_CIFAR_STD
from dat_lightning.models import build_classifier
from dat_lightning.module import DATModule

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def classifier(name: str, mean=CIFAR_MEAN, std=CIFAR_STD, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return build_classifier(name, num_classes=10, in_chans=3, mean=mean, std=std, **kwargs)


def load_robust(kind: str, path, net=None, ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict the loading route (read weights-only, convert) makes of ``path``."""
    return convert(read_checkpoint(path), kind, str(path), net=net, ema=ema)


def backbone_state(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.backbone.state_dict().items()}


def as_buffer(values) -> torch.Tensor:
    return torch.tensor(values).view(3, 1, 1)


def assert_loads_into(state, fresh, reference) -> None:
    load_matching(fresh, state, source="test")
    expected = reference.state_dict()
    got = fresh.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# -- RobustBench ------------------------------------------------------------------------------

def robustbench_file(tmp_path, net, normalizer: bool):
    state = {f"module.{k}": v for k, v in backbone_state(net).items()}
    if normalizer:  # e.g. Augustin2020Adversarial: mu / sigma buffers of the wrapper
        state |= {"module.mu": torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1),
                  "module.sigma": torch.tensor(CIFAR_STD).view(1, 3, 1, 1)}
    return save(tmp_path, "rb.pt", {"state_dict": state})


@pytest.mark.parametrize("kind", ["robustbench", "auto"])
@pytest.mark.parametrize("normalizer", [False, True])
def test_robustbench_wrn(tmp_path, kind, normalizer):
    source = classifier("wrn10_1", seed=1)
    path = robustbench_file(tmp_path, source, normalizer)
    fresh = classifier("wrn10_1")
    assert_loads_into(load_robust(kind, path, net=fresh), fresh, source)


def test_stored_normalization_must_match_the_model(tmp_path):
    path = robustbench_file(tmp_path, classifier("wrn10_1", seed=1), normalizer=True)
    with pytest.raises(CheckpointError, match=r"model.net.mean=\[0.4914, 0.4822, 0.4465\]"):
        load_robust("robustbench", path, net=classifier("wrn10_1", mean=[0.5] * 3, std=[0.5] * 3))


# -- MadryLab robustness -----------------------------------------------------------------------

def madrylab_checkpoint(net, attacker_net=None):
    model = backbone_state(net)
    attacker = backbone_state(attacker_net or net)
    sd = {"module.normalizer.new_mean": as_buffer(IMAGENET_MEAN), "module.normalizer.new_std": as_buffer(IMAGENET_STD),
          "module.attacker.normalize.new_mean": as_buffer(IMAGENET_MEAN),
          "module.attacker.normalize.new_std": as_buffer(IMAGENET_STD)}
    sd |= {f"module.model.{k}": v for k, v in model.items()}
    sd |= {f"module.attacker.model.{k}": v for k, v in attacker.items()}
    return {"model": sd, "optimizer": {"state": {}, "param_groups": []}, "schedule": None, "epoch": 90}


@pytest.mark.parametrize("kind", ["madrylab", "auto"])
def test_madrylab_resnet50(tmp_path, kind):
    source = classifier("resnet50", IMAGENET_MEAN, IMAGENET_STD, seed=1)
    path = save(tmp_path, "madry.pt", madrylab_checkpoint(source))
    fresh = classifier("resnet50", IMAGENET_MEAN, IMAGENET_STD)
    state = load_robust(kind, path, net=fresh)
    assert not any("normalizer" in k or "attacker" in k for k in state)
    assert_loads_into(state, fresh, source)


def test_madrylab_inconsistent_attacker_copy_is_refused(tmp_path):
    source = classifier("resnet18", IMAGENET_MEAN, IMAGENET_STD, seed=1)
    other = classifier("resnet18", IMAGENET_MEAN, IMAGENET_STD, seed=2)
    path = save(tmp_path, "madry.pt", madrylab_checkpoint(source, attacker_net=other))
    with pytest.raises(CheckpointError, match="attacker's copy"):
        load_robust("madrylab", path)


def test_madrylab_normalizer_checked(tmp_path):
    path = save(tmp_path, "madry.pt", madrylab_checkpoint(classifier("resnet18", IMAGENET_MEAN, IMAGENET_STD)))
    with pytest.raises(CheckpointError, match="trained with input normalization"):
        load_robust("madrylab", path, net=classifier("resnet18", CIFAR_MEAN, CIFAR_STD))


# -- RATIO --------------------------------------------------------------------------------------

def test_ratio_wrn(tmp_path):
    source = classifier("wrn10_1", seed=1)
    # an AveragedModel-style file: bare WRN keys behind `module.` plus the averaging counter
    state = {f"module.{k}": v for k, v in backbone_state(source).items()} | {"n_averaged": torch.tensor(7)}
    path = save(tmp_path, "ratio.pth", state)
    fresh = classifier("wrn10_1", mean=RATIO_CIFAR_MEAN, std=RATIO_CIFAR_STD)
    assert_loads_into(load_robust("ratio", path, net=fresh), fresh, source)
    with pytest.raises(CheckpointError, match="trained with input normalization"):
        load_robust("ratio", path, net=classifier("wrn10_1", mean=[0.5] * 3, std=[0.5] * 3))


# -- revisiting-at (ConvNeXt + ConvStem) -----------------------------------------------------------

def revisiting_state(net, prefix: str) -> dict[str, torch.Tensor]:
    state = {f"{prefix}model.{k}": v for k, v in backbone_state(net).items()}
    return state | {f"{prefix}normalize.mean": torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                    f"{prefix}normalize.std": torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)}


@pytest.mark.parametrize("kind", ["revisiting_at", "auto"])
def test_revisiting_at_convnext_convstem(tmp_path, kind):
    raw = classifier("test_convnext_convstem", IMAGENET_MEAN, IMAGENET_STD, seed=1)
    ema = classifier("test_convnext_convstem", IMAGENET_MEAN, IMAGENET_STD, seed=2)
    fresh = classifier("test_convnext_convstem", IMAGENET_MEAN, IMAGENET_STD)
    # weights_N.pt: DDP(WrappedModel(normalize_model(convnext))).state_dict()
    weights = save(tmp_path, "weights_20.pt", revisiting_state(raw, "module.base_model."))
    assert_loads_into(load_robust(kind, weights, net=fresh), fresh, raw)
    # full_model_N.pth: both weight sets; ema picks which
    full = save(tmp_path, "full_model_20.pth", {
        "model_state_dict": revisiting_state(raw, "module.base_model."),
        "state_dict_ema": revisiting_state(ema, "base_model."), "epoch": 20})
    assert_loads_into(load_robust(kind, full, net=fresh, ema=True), fresh, ema)
    assert_loads_into(load_robust(kind, full, net=fresh, ema=False), fresh, raw)


# -- shared behaviour ---------------------------------------------------------------------------

def test_detect_format():
    w = {"conv1.weight": torch.zeros(1)}
    assert detect_format({"state_dict": {"net.backbone.conv1.weight": w}, "pytorch-lightning_version": "2"}) == "dat"
    assert detect_format({"model": {"module.attacker.model.conv1.weight": w}}) == "madrylab"
    assert detect_format({"module.base_model.model.stem.stem.0.weight": w}) == "revisiting_at"
    assert detect_format({"module.conv1.weight": w}) == "robustbench"


def test_wrong_architecture_names_missing_and_unexpected_keys(tmp_path):
    source = backbone_state(classifier("wrn10_1", seed=1))
    source.pop("fc.bias")
    source["logits.weight"] = torch.zeros(3)
    path = save(tmp_path, "rb.pt", {"state_dict": source})
    with pytest.raises(CheckpointError, match=r"missing keys: backbone\.fc\.bias.*unexpected keys: backbone\.logits\.weight"):
        load_matching(classifier("wrn10_1"), load_robust("robustbench", path), source=str(path))


def test_unknown_format_and_unsafe_pickles_are_refused(tmp_path):
    path = save(tmp_path, "x.pt", {"conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown checkpoint format 'timm'"):
        load_robust("timm", path)
    unsafe = save(tmp_path, "unsafe.pt", {"args": functools.partial(print)})
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_robust("madrylab", unsafe)


def test_module_init_ckpt_accepts_public_formats(tmp_path):
    source = classifier("resnet18", IMAGENET_MEAN, IMAGENET_STD, seed=1)
    path = save(tmp_path, "madry.pt", madrylab_checkpoint(source))
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    module = DATModule(
        classifier("resnet18", IMAGENET_MEAN, IMAGENET_STD),
        clf_attack={"norm": "l2", "eps": 3.0, "step_size": 2.0, "steps": 1},
        gen_attack={"step_size": 2.0},
        optimizer_stage1=sgd, optimizer_stage2=sgd, stage2_start_epoch=0,
        init_ckpt=str(path), init_ckpt_format="madrylab",
    )
    expected = source.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in module.net.state_dict().items())
    assert read_checkpoint(path)["epoch"] == 90
