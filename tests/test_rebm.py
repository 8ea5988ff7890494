"""The DAT authors' checkpoints (github.com/xuwangyin/DAT, format ``rebm``) load into our timm models.

Each file is synthesized here in their exact key layout and nesting (random weights, tiny widths),
and the converted model must compute the logits of a plain-PyTorch forward of *their* layout,
written below from their architecture, not from our models. Full-size layouts are compared on
the meta device (names and shapes only).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dat_lightning.checkpoints import CheckpointError, load_matching, read_checkpoint
from dat_lightning.checkpoints.foreign import convert, detect_format
from dat_lightning.checkpoints.formats import RATIO_CIFAR_MEAN, RATIO_CIFAR_STD
from dat_lightning.checkpoints.loading import load_classifier
from dat_lightning.config import CONFIG_DIR
from dat_lightning.models import build_classifier
from helpers import compose_config

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NO_NORMALIZATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


class Weights:
    """Random tensors for a synthetic state dict (float64, or shape-only on the meta device)."""

    def __init__(self, seed: int = 0, meta: bool = False):
        self.g, self.meta = torch.Generator().manual_seed(seed), meta

    def __call__(self, *shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        if self.meta:
            return torch.empty(shape, device="meta")
        return offset + scale * torch.randn(shape, generator=self.g, dtype=torch.float64)

    def conv(self, out_chs: int, in_chs: int, k: int) -> torch.Tensor:
        return self(out_chs, in_chs, k, k, scale=math.sqrt(2.0 / (in_chs * k * k)))

    def bn(self, name: str, chs: int) -> dict[str, torch.Tensor]:
        var = self(chs, scale=0.0) if self.meta else 0.5 + torch.rand(chs, generator=self.g, dtype=torch.float64)
        return {f"{name}.weight": self(chs, scale=0.1, offset=1.0), f"{name}.bias": self(chs, scale=0.1),
                f"{name}.running_mean": self(chs, scale=0.1), f"{name}.running_var": var,
                f"{name}.num_batches_tracked": torch.tensor(3)}

    def affine(self, name: str, out_f: int, in_f: int | None = None) -> dict[str, torch.Tensor]:
        """A Linear (``in_f`` given) or a LayerNorm's weight and bias."""
        if in_f is None:
            return {f"{name}.weight": self(out_f, scale=0.1, offset=1.0), f"{name}.bias": self(out_f, scale=0.1)}
        return {f"{name}.weight": self(out_f, in_f, scale=1 / math.sqrt(in_f)), f"{name}.bias": self(out_f, scale=0.1)}


# -- their layouts and a reference forward of each ----------------------------------------------

def innout_wrn_state(w: Weights, depth: int = 10, widen: int = 1, num_classes: int = 10) -> OrderedDict:
    """InNOutRobustness / rebm WideResNet: conv1, block{1,2,3}.layer.i (bn1 conv1 bn2 conv2
    [convShortcut]), bn1, fc."""
    widths, n = (16, 16 * widen, 32 * widen, 64 * widen), (depth - 4) // 6
    sd = OrderedDict(**{"conv1.weight": w.conv(16, 3, 3)})
    for stage in (1, 2, 3):
        for i in range(n):
            cin, cout, p = widths[stage - 1] if i == 0 else widths[stage], widths[stage], f"block{stage}.layer.{i}."
            sd |= w.bn(p + "bn1", cin) | {p + "conv1.weight": w.conv(cout, cin, 3)}
            sd |= w.bn(p + "bn2", cout) | {p + "conv2.weight": w.conv(cout, cout, 3)}
            if cin != cout:
                sd[p + "convShortcut.weight"] = w.conv(cout, cin, 1)
    return sd | w.bn("bn1", widths[3]) | w.affine("fc", num_classes, widths[3])


def bn(sd, name, x):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-5)


def innout_wrn_forward(sd, x):
    """Their forward: CIFAR-10 normalization inside; pre-activation blocks whose 1x1 shortcut
    (when the width changes) takes the activated input; 8x8 average pool; fc."""
    x = (x - torch.tensor(RATIO_CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(RATIO_CIFAR_STD).view(1, 3, 1, 1)
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for stage, stride in ((1, 1), (2, 2), (3, 2)):
        i = 0
        while (p := f"block{stage}.layer.{i}.") + "conv1.weight" in sd:
            s = stride if i == 0 else 1
            act = F.relu(bn(sd, p + "bn1", out))
            short = F.conv2d(act, sd[p + "convShortcut.weight"], stride=s) if p + "convShortcut.weight" in sd else out
            h = F.relu(bn(sd, p + "bn2", F.conv2d(act, sd[p + "conv1.weight"], stride=s, padding=1)))
            out, i = short + F.conv2d(h, sd[p + "conv2.weight"], padding=1), i + 1
    out = F.avg_pool2d(F.relu(bn(sd, "bn1", out)), 8).flatten(1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


def timm_resnet_state(w: Weights, layers, channels=(64, 128, 256, 512), base_width=64, num_classes=1000):
    """Their timm fork's ResNet with Bottlenecks (torchvision names): 7x7 stem with 64 channels,
    layer{1-4}.i (conv1 bn1 conv2 bn2 conv3 bn3 [downsample.0 / .1]), fc."""
    sd, inplanes = OrderedDict(**{"conv1.weight": w.conv(64, 3, 7)}) | w.bn("bn1", 64), 64
    for stage, (planes, blocks) in enumerate(zip(channels, layers, strict=True), start=1):
        width, outplanes = planes * base_width // 64, planes * 4
        for i in range(blocks):
            p = f"layer{stage}.{i}."
            sd |= {p + "conv1.weight": w.conv(width, inplanes, 1)} | w.bn(p + "bn1", width)
            sd |= {p + "conv2.weight": w.conv(width, width, 3)} | w.bn(p + "bn2", width)
            sd |= {p + "conv3.weight": w.conv(outplanes, width, 1)} | w.bn(p + "bn3", outplanes)
            if i == 0 and (stage > 1 or inplanes != outplanes):
                sd |= {p + "downsample.0.weight": w.conv(outplanes, inplanes, 1)} | w.bn(p + "downsample.1", outplanes)
            inplanes = outplanes
    return sd | w.affine("fc", num_classes, inplanes)


def timm_resnet_forward(sd, x):
    """ImageNet normalization inside; stride on the 3x3 conv and on the 1x1 downsample."""
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = F.max_pool2d(F.relu(bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], stride=2, padding=3))), 3, 2, 1)
    for stage in (1, 2, 3, 4):
        i = 0
        while (p := f"layer{stage}.{i}.") + "conv1.weight" in sd:
            s = 2 if stage > 1 and i == 0 else 1
            h = F.relu(bn(sd, p + "bn1", F.conv2d(x, sd[p + "conv1.weight"])))
            h = F.relu(bn(sd, p + "bn2", F.conv2d(h, sd[p + "conv2.weight"], stride=s, padding=1)))
            h = bn(sd, p + "bn3", F.conv2d(h, sd[p + "conv3.weight"]))
            down = p + "downsample.0.weight"
            x, i = F.relu(h + (bn(sd, p + "downsample.1", F.conv2d(x, sd[down], stride=s)) if down in sd else x)), i + 1
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def convnext_state(w: Weights, depths, dims, stem, num_classes=1000) -> OrderedDict:
    """timm ConvNeXt whose stem is their ConvStem (``model.stem = ConvBlock...``): stem.stem.{0,3,6}
    convs with LayerNorms at {1,4,7}; stages.i.downsample.{0: LN, 1: 2x2 conv} from stage 1;
    blocks (conv_dw, norm, mlp.fc1/fc2, gamma); head.norm, head.fc."""
    sd, prev = OrderedDict(), 3
    for idx, chs in zip((0, 3, 6), stem, strict=True):
        sd |= {f"stem.stem.{idx}.weight": w.conv(chs, prev, 3), f"stem.stem.{idx}.bias": w(chs, scale=0.1)}
        sd |= w.affine(f"stem.stem.{idx + 1}", chs)
        prev = chs
    for i, (depth, dim) in enumerate(zip(depths, dims, strict=True)):
        if i > 0:
            sd |= w.affine(f"stages.{i}.downsample.0", prev)
            sd |= {f"stages.{i}.downsample.1.weight": w.conv(dim, prev, 2),
                   f"stages.{i}.downsample.1.bias": w(dim, scale=0.1)}
        for j in range(depth):
            p = f"stages.{i}.blocks.{j}."
            sd |= {p + "conv_dw.weight": w(dim, 1, 7, 7, scale=1 / 7), p + "conv_dw.bias": w(dim, scale=0.1)}
            sd |= w.affine(p + "norm", dim) | w.affine(p + "mlp.fc1", 4 * dim, dim)
            sd |= w.affine(p + "mlp.fc2", dim, 4 * dim) | {p + "gamma": w(dim, scale=0.5)}
        prev = dim
    return sd | w.affine("head.norm", prev) | w.affine("head.fc", num_classes, prev)


def layer_norm_2d(sd, name, x):
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], sd[f"{name}.weight"], sd[f"{name}.bias"],
                        eps=1e-6).permute(0, 3, 1, 2)


def convnext_forward(sd, x):
    """Inputs in [0, 1], no normalization; ConvStem (strides 2, 2, 1; LN + GELU after each conv)."""
    for idx, stride in ((0, 2), (3, 2), (6, 1)):
        x = F.conv2d(x, sd[f"stem.stem.{idx}.weight"], sd[f"stem.stem.{idx}.bias"], stride=stride, padding=1)
        x = F.gelu(layer_norm_2d(sd, f"stem.stem.{idx + 1}", x))
    i = 0
    while f"stages.{i}.blocks.0.gamma" in sd:
        if f"stages.{i}.downsample.1.weight" in sd:
            x = layer_norm_2d(sd, f"stages.{i}.downsample.0", x)
            x = F.conv2d(x, sd[f"stages.{i}.downsample.1.weight"], sd[f"stages.{i}.downsample.1.bias"], stride=2)
        j = 0
        while (p := f"stages.{i}.blocks.{j}.") + "gamma" in sd:
            h = F.conv2d(x, sd[p + "conv_dw.weight"], sd[p + "conv_dw.bias"], padding=3, groups=x.shape[1])
            h = F.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2], sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6)
            h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
            x, j = x + h.permute(0, 3, 1, 2) * sd[p + "gamma"].view(1, -1, 1, 1), j + 1
        i += 1
    pooled = layer_norm_2d(sd, "head.norm", x.mean((2, 3), keepdim=True)).flatten(1)
    return F.linear(pooled, sd["head.fc.weight"], sd["head.fc.bias"])


# The tiny cases: (our registered name, their layout, their forward, normalization, input size).
TINY = {
    "wrn": ("wrn10_1", lambda w, k: innout_wrn_state(w, num_classes=k), innout_wrn_forward,
            (RATIO_CIFAR_MEAN, RATIO_CIFAR_STD), 32),
    "wrn50_4": ("test_wide_resnet50_4", lambda w, k: timm_resnet_state(
        w, (2, 1, 1, 1), (8, 16, 32, 64), 256, k), timm_resnet_forward, (IMAGENET_MEAN, IMAGENET_STD), 64),
    "convnext": ("test_convnext_convstem", lambda w, k: convnext_state(
        w, (1, 1, 1, 1), (16, 32, 64, 128), (8, 12, 16), k), convnext_forward, NO_NORMALIZATION, 64),
}


def ours(name: str, num_classes: int, normalization) -> torch.nn.Module:
    mean, std = normalization
    return build_classifier(name, num_classes=num_classes, in_chans=3, mean=mean, std=std).double().eval()


def save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def loads_as_theirs(path, family, their_state, kind="auto", ema=True, num_classes=10) -> str:
    """Load ``path`` the way init_ckpt / sample do; the logits must be their forward's."""
    name, _, forward, normalization, size = TINY[family]
    net = ours(name, num_classes, normalization)
    ckpt = read_checkpoint(path)
    load_matching(net, convert(ckpt, kind, str(path), net=net, ema=ema), source=str(path))
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), forward(their_state, x))
    return detect_format(ckpt)


# -- the rows of their table ---------------------------------------------------------------------

@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("file", ["best_avg.pth", "model_bestfid.pth"])
def test_cifar_wrn_rows(tmp_path, file, num_classes):
    """Standard AT / RATIO (best_avg.pth) and DAT (model_bestfid.pth): the bare WideResNet."""
    state = TINY["wrn"][1](Weights(1), num_classes)
    path = save(tmp_path, file, state)
    assert loads_as_theirs(path, "wrn", state, num_classes=num_classes) == "rebm"


@pytest.mark.parametrize("prefix,kind", [("", "auto"), ("module.", "rebm")])
def test_imagenet_resnet_rows(tmp_path, prefix, kind):
    """WRN-50-4 / ResNet-50, AT (``*_l2_eps3_model.ckpt``, also ``module.``) and DAT (bestfid)."""
    state = TINY["wrn50_4"][1](Weights(2), 10)
    path = save(tmp_path, "wide_resnet50_4_l2_eps3_model.ckpt", OrderedDict((prefix + k, v) for k, v in state.items()))
    assert loads_as_theirs(path, "wrn50_4", state, kind=kind) == ("rebm" if not prefix else "robustbench")


@pytest.mark.parametrize("prefix,file", [("", "model_bestfid.pth"), ("base_model.", "convnext_large_cvst_robust.pt")])
def test_convnext_rows(tmp_path, prefix, file):
    """DAT ConvNeXt-L (bestfid, bare) and the AT ConvNeXt-L they start from (revisiting-at,
    no normalizer: ``base_model.``)."""
    state = TINY["convnext"][1](Weights(3), 10)
    path = save(tmp_path, file, OrderedDict((prefix + k, v) for k, v in state.items()))
    assert loads_as_theirs(path, "convnext", state) == "rebm"
    # The route `sample` / `load_classifier` takes, with a config that has their normalization.
    mean, std = NO_NORMALIZATION
    net_cfg = {"_target_": "dat_lightning.models.build_classifier", "name": "test_convnext_convstem",
               "num_classes": 10, "in_chans": 3, "mean": list(mean), "std": list(std)}
    net = load_classifier(path, config={"model": {"net": net_cfg}})
    assert torch.equal(net.backbone.stem.stem[0].weight, state["stem.stem.0.weight"].float())


def training_state(raw, ema, averaged=5):
    """Their save_training_state: DataParallel weights, AveragedModel EMA weights, the rest."""
    return {"model_state_dict": OrderedDict((f"module.{k}", v) for k, v in raw.items()),
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "training_state": {"global_step": 700, "cur_outdist_steps": 12},
            "metrics": {"image_generation_metrics": {"fid": 9.5, "best_fid": 9.1},
                        "classification_metrics": {"test_acc": 0.9, "robust_test_acc": None,
                                                   "best_robust_test_acc": None}},
            "config": {"model": {"model_type": "WideResNet34x10", "normalize_input": True},
                       "tags": ("cifar10",), "use_ema": True},
            "wandb_run_id": "4oni26z2",
            "ema_state_dict": OrderedDict(n_averaged=torch.tensor(averaged)) | {f"module.{k}": v for k, v in ema.items()}}


@pytest.mark.parametrize("ema", [True, False])
def test_training_state_file_holds_both_weight_sets(tmp_path, ema):
    raw, averaged = (TINY["wrn"][1](Weights(seed), 10) for seed in (4, 5))
    path = save(tmp_path, "training_state_latest.pth", training_state(raw, averaged))
    assert loads_as_theirs(path, "wrn", averaged if ema else raw, ema=ema) == "rebm"


def test_averaged_model_under_data_parallel(tmp_path):
    """What their loader unwraps: ``DataParallel(AveragedModel(net)).state_dict()``."""
    state = TINY["wrn50_4"][1](Weights(6), 10)
    wrapped = OrderedDict(**{"module.n_averaged": torch.tensor(9)}) | {f"module.module.{k}": v for k, v in state.items()}
    assert loads_as_theirs(save(tmp_path, "model.pth", wrapped), "wrn50_4", state) == "rebm"


# -- full-size layouts (meta device: names and shapes) --------------------------------------------

FULL_SIZE = {
    "wrn34_10-cifar10": ("wrn34_10", 10, lambda w: innout_wrn_state(w, 34, 10, 10)),
    "wrn34_10-cifar100": ("wrn34_10", 100, lambda w: innout_wrn_state(w, 34, 10, 100)),
    "resnet50": ("resnet50", 1000, lambda w: timm_resnet_state(w, (3, 4, 6, 3))),
    "wide_resnet50_4": ("wide_resnet50_4", 1000, lambda w: timm_resnet_state(w, (3, 4, 6, 3), base_width=256)),
    "convnext_large": ("convnext_large_convstem", 1000,
                       lambda w: convnext_state(w, (3, 3, 27, 3), (192, 384, 768, 1536), (96, 144, 192))),
}


@pytest.mark.parametrize("case", FULL_SIZE)
def test_full_size_layouts_are_exactly_our_backbones(case):
    name, num_classes, layout = FULL_SIZE[case]
    theirs = layout(Weights(meta=True))
    assert detect_format(theirs) == "rebm"
    with torch.device("meta"):
        expected = timm.create_model(name, num_classes=num_classes).state_dict()
    got = convert(theirs, "rebm")
    assert got.keys() == expected.keys()
    assert all(got[k].shape == expected[k].shape for k in got)


# -- normalization -------------------------------------------------------------------------------

def model_config_normalization(name: str):
    net = OmegaConf.load(CONFIG_DIR / "model" / f"{name}.yaml").net
    return tuple(net.mean), tuple(net.std)


@pytest.mark.parametrize("family,config", [("wrn", "cifar_wrn34"), ("wrn50_4", "resnet50")])
def test_our_experiment_defaults_accept_their_normalization(tmp_path, family, config):
    name, layout, *_ = TINY[family]
    path = save(tmp_path, "model_bestfid.pth", layout(Weights(7), 10))
    net = ours(name, 10, model_config_normalization(config))
    load_matching(net, convert(read_checkpoint(path), "auto", str(path), net=net))


def test_convnext_needs_no_normalization_and_says_what_to_set(tmp_path):
    name, layout, *_ = TINY["convnext"]
    path = save(tmp_path, "model_bestfid.pth", layout(Weights(8), 10))
    net = ours(name, 10, model_config_normalization("convnext_large"))  # our default: ImageNet's
    with pytest.raises(CheckpointError, match=r"format rebm, detected from its keys.*model\.net\.mean="
                       r"\[0\.0000, 0\.0000, 0\.0000\] model\.net\.std=\[1\.0000, 1\.0000, 1\.0000\]"):
        convert(read_checkpoint(path), "auto", str(path), net=net)


def test_cifar_wrn_refuses_other_normalization_with_their_values(tmp_path):
    path = save(tmp_path, "best_avg.pth", TINY["wrn"][1](Weights(9), 10))
    with pytest.raises(CheckpointError, match=r"model\.net\.mean=\[0\.4914, 0\.4822, 0\.4465\] "
                                              r"model\.net\.std=\[0\.2470, 0\.2435, 0\.2616\]"):
        convert(read_checkpoint(path), "rebm", str(path), net=ours("wrn10_1", 10, ((0.5,) * 3, (0.5,) * 3)))


def test_wrn50x4_experiment_builds_their_architecture_with_their_normalization(tmp_path):
    cfg = compose_config(tmp_path, ["+experiment=imagenet256_wrn50x4"], tiny=False)
    assert cfg.model.net.name == "wide_resnet50_4" and cfg.data.image_size == 256
    assert (tuple(cfg.model.net.mean), tuple(cfg.model.net.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    with torch.device("meta"):
        expected = timm.create_model(cfg.model.net.name, num_classes=cfg.data.num_classes).state_dict()
    got = convert(FULL_SIZE["wide_resnet50_4"][2](Weights(meta=True)), "auto")
    assert got.keys() == expected.keys() and all(got[k].shape == expected[k].shape for k in got)


# -- what is not theirs --------------------------------------------------------------------------

def test_detection_leaves_other_layouts_alone():
    wrn = TINY["wrn"][1](Weights(10), 10)
    assert detect_format({f"module.{k}": v for k, v in wrn.items()}) == "robustbench"
    assert detect_format({f"backbone.{k}": v for k, v in wrn.items()}) == "robustbench"  # our Classifier
    assert detect_format(wrn | {"mu": torch.zeros(3), "sigma": torch.ones(3)}) == "robustbench"
    gray = wrn | {"conv1.weight": torch.zeros(16, 1, 3, 3)}  # our Fashion-MNIST WRN, saved bare
    assert detect_format(gray) == "robustbench"
    convnext = TINY["convnext"][1](Weights(11), 10)
    normalized = {f"base_model.model.{k}": v for k, v in convnext.items()}
    normalized |= {"base_model.normalize.mean": torch.zeros(1, 3, 1, 1), "base_model.normalize.std": torch.ones(1, 3, 1, 1)}
    assert detect_format(normalized) == "revisiting_at"
    assert detect_format({"model_state_dict": normalized, "state_dict_ema": normalized}) == "revisiting_at"


def test_foreign_files_named_rebm_are_refused_with_the_reason(tmp_path):
    madry = {"model": {"module.model.conv1.weight": torch.zeros(1), "module.normalizer.new_mean": torch.zeros(3)}}
    with pytest.raises(CheckpointError, match=r"not a checkpoint of the DAT authors' code.*no tensors.*keys: model"):
        convert(madry, "rebm", "madry.pt")
    with pytest.raises(CheckpointError, match=r"none of the families' keys.*first keys: model\.conv1\.weight"):
        convert(madry["model"], "rebm", "madry_inner.pt")
    wrn = TINY["wrn"][1](Weights(12), 10)
    with pytest.raises(CheckpointError, match=r"keys outside the InNOutRobustness WideResNet .*: mu"):
        convert(wrn | {"mu": torch.zeros(3)}, "rebm", "odd.pth")
    broken = {"model_state_dict": {}, "training_state": {}, "ema_state_dict": [1, 2]}
    with pytest.raises(CheckpointError, match="'ema_state_dict' holds a list"):
        convert(broken, "auto", "state.pth")


def test_damaged_files_are_refused(tmp_path):
    state = TINY["wrn"][1](Weights(13), 10)
    whole = save(tmp_path, "model_bestfid.pth", state)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(cut)
    short = save(tmp_path, "short.pth", state | {"fc.weight": state["fc.weight"][:7]})
    with pytest.raises(CheckpointError, match=r"wrong shapes: backbone\.fc\.weight"):
        loads_as_theirs(short, "wrn", state)
    net = ours("test_wide_resnet50_4", 10, (IMAGENET_MEAN, IMAGENET_STD))  # a WRN file, a ResNet net
    with pytest.raises(CheckpointError, match=r"missing keys: backbone\.layer1\..*unexpected keys: "
                                              r"backbone\.block1\."):
        load_matching(net, convert(read_checkpoint(whole), "rebm", str(whole)), source=str(whole))
