"""Every experiment composes with `+experiment=NAME`, carries the authors' numbers (docs/algorithm.md) and
instantiates; the big ones build their model and take one stage-two training step on CPU."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from dat_lightning.cli.run_directory import flatten_config
from dat_lightning.cli.train import build, make_trainer
from dat_lightning.config import CONFIG_DIR
from dat_lightning.data.datasets import DatasetNotFoundError
from helpers import compose_config

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
FMNIST = ("fmnist_dat", "fmnist_reproduce")  # the CPU default and `make reproduce`'s recipe
BIG = [name for name in EXPERIMENTS if name not in FMNIST]  # the GPU-sized ones

# The authors' numbers (docs/algorithm.md, "The authors' settings"), per experiment:
# config key -> value.
SGD_CIFAR = {"_target_": "torch.optim.SGD", "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
CIFAR10 = {
    "model.net.name": "wrn34_10", "data.num_classes": 10, "data.image_size": 32,
    "data.batch_size": 128,
    "model.clf_attack": {"norm": "l2", "eps": 0.5, "steps": 10, "step_size": 0.1},
    "model.gen_attack": {"step_size": 0.1},
    "callbacks.curriculum": {"max_steps": 50, "start_steps": 0, "auc_threshold": 0.8,
                             "min_imgs_per_threshold": 1000},
    "model.optimizer_stage2": {**SGD_CIFAR, "lr": 1e-3},
    "model.scheduler_stage2": None,
    "sampling": {"step_size": 0.2, "steps": 33},
    "callbacks.ema.max_decay": 0.999,
}
AUTHORS = {
    "cifar10_wrn34": CIFAR10,
    # CIFAR-100 as CIFAR-10 but with 100 classes, stage-two LR 1e-2 and test-time T=32.
    "cifar100_wrn34": {**CIFAR10, "data.num_classes": 100,
                       "model.optimizer_stage2": {**SGD_CIFAR, "lr": 1e-2},
                       "sampling": {"step_size": 0.2, "steps": 32}},
    "imagenet256_resnet50": {
        "model.net.name": "resnet50", "data.num_classes": 1000, "data.image_size": 256,
        "model.clf_attack": {"norm": "l2", "eps": 3.0, "steps": 3, "step_size": 2.0},
        "model.gen_attack": {"step_size": 2.0},
        "callbacks.curriculum": {"max_steps": 15, "auc_threshold": 0.4},
        "model.optimizer_stage2": {"_target_": "torch.optim.SGD", "lr": 1e-3},
        "model.scheduler_stage2": None,
        "sampling": {"step_size": 8.0, "steps": 14},
        "callbacks.ema": None,
    },
    # The authors' WideResNet-50x4 configs (their run with T up to 30): weight decay and nesterov
    # and EMA as theirs, unlike the ResNet-50 settings of the papers' text.
    "imagenet256_wrn50x4": {
        "model.net.name": "wide_resnet50_4", "data.num_classes": 1000, "data.image_size": 256,
        "model.clf_attack": {"norm": "l2", "eps": 3.0, "steps": 3, "step_size": 2.0},
        "model.gen_attack": {"step_size": 2.0},
        "callbacks.curriculum": {"max_steps": 30, "auc_threshold": 0.2},
        "model.optimizer_stage2": {"_target_": "torch.optim.SGD", "lr": 1e-3, "momentum": 0.9,
                                   "nesterov": True, "weight_decay": 5e-4},
        "model.scheduler_stage2": None,
        "sampling": {"step_size": 8.0, "steps": 17},
        "callbacks.ema.max_decay": 0.999,
    },
    "imagenet256_convnext": {
        "model.net.name": "convnext_large_convstem", "model.net.drop_path_rate": 0.0,
        "data.num_classes": 1000, "data.image_size": 256,
        "model.clf_attack": {"norm": "l2", "eps": 3.0, "steps": 3, "step_size": 2.0},
        "model.gen_attack": {"step_size": 3.0},
        "callbacks.curriculum": {"max_steps": 100, "auc_threshold": 0.2},
        "model.optimizer_stage2": {"_target_": "torch.optim.AdamW", "lr": 1e-3,
                                   "weight_decay": 0.05, "betas": [0.9, 0.95]},
        "model.scheduler_stage2": None,
        "sampling": {"step_size": 8.0, "steps": 24},
        "callbacks.ema.max_decay": 0.999,
    },
    # The authors give RestrictedImageNet's stage one: 75 epochs, step decay at 30 and 60.
    "rimagenet_resnet50": {
        "model.net.name": "resnet50", "data.num_classes": 9, "data.image_size": 224,
        "stage1_epochs": 75,
        "model.scheduler_stage1": {"_target_": "torch.optim.lr_scheduler.MultiStepLR",
                                   "milestones": [30, 60]},
        "model.scheduler_stage2": None,
    },
}
# The baselines the DAT paper compares with, at their papers' scale (docs/methods.md, per method).
FID_EVERY_10 = {"callbacks.fid.every_n_epochs": 10}
SGD_JEMPP = {"_target_": "torch.optim.SGD", "momentum": 0.9, "weight_decay": 4e-4}
JEMPP = {
    "model.net.name": "wrn28_10", "stage1_epochs": 150, "data.batch_size": 64,
    "model.chain": {"sampler": "pyld", "steps": 10, "step_size": 0.25, "clip": 0.5, "batchnorm": "train"},
    "model.buffer": {"size": 10000, "reinit_prob": 0.05, "init": "class_gaussians"}, **FID_EVERY_10,
}
AUTHORS |= {
    "cifar10_at_wrn34": {
        "method.name": "at", "model.net.name": "wrn34_10", "stage1_epochs": 300, "stage2_epochs": 0,
        "model.clf_attack": {"norm": "l2", "eps": 0.5, "steps": 10, "step_size": 0.1},
        "model.optimizer_stage1": {**SGD_CIFAR, "lr": 0.1}, **FID_EVERY_10,
    },
    "cifar10_ratio_wrn34": {
        "method.name": "ratio", "model.net.name": "wrn34_10", "stage1_epochs": 300, "stage2_epochs": 0,
        "model.clf_attack": {"norm": "l2", "eps": 0.5, "steps": 10, "step_size": 0.1},
        "model.ood_attack": {"norm": "l2", "eps": 1.0, "steps": 20, "step_size": 0.1},
        "model.ood_weight": 1.0, "sampling.steps": 31, **FID_EVERY_10,
    },
    "cifar10_jem_wrn28": {
        "method.name": "jem", "model.net.name": "wrn28_10", "stage1_epochs": 200, "data.batch_size": 64,
        "model.optimizer_stage1": {"_target_": "torch.optim.Adam", "lr": 1e-4},
        "model.scheduler_stage1": {"milestones": [160, 180], "gamma": 0.3},
        "model.chain": {"sampler": "sgld", "steps": 20, "step_size": 0.25, "noise": 0.005},
        "model.buffer": {"size": 10000, "reinit_prob": 0.05, "init": "uniform"}, **FID_EVERY_10,
    },
    # EB-JDAT trains on JEM++ (its chain, starts and network) with its own LR and schedule.
    "cifar10_jempp_wrn28": {**JEMPP, "method.name": "jempp", "model.optimizer_stage1": {**SGD_JEMPP, "lr": 0.1},
                            "model.scheduler_stage1": {"milestones": [50, 100, 125], "gamma": 0.2}},
    "cifar10_eb_jdat_wrn28": {
        **JEMPP, "method.name": "eb_jdat", "model.optimizer_stage1": {**SGD_JEMPP, "lr": 0.01},
        "model.scheduler_stage1": {"milestones": [40, 80, 120], "gamma": 0.2},
        "model.adversarial": {"steps": 5, "energy_weight": 0.1}, **FID_EVERY_10,
    },
}

# Configs that ask for GPUs are instantiated on this CPU machine with these.
CPU = ["trainer.accelerator=cpu", "trainer.devices=1"]


def select(cfg, key):
    value = OmegaConf.select(cfg, key, throw_on_missing=True)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def compose_experiment(tmp_path, name, *overrides):
    return compose_config(tmp_path, [f"+experiment={name}", *overrides], tiny=False)


def test_every_gpu_experiment_has_the_authors_numbers_recorded_here():
    assert set(AUTHORS) == set(BIG)  # a new experiment needs its paper numbers below


@pytest.mark.parametrize("name", BIG)
def test_experiment_carries_the_authors_numbers(name, tmp_path):
    cfg = compose_experiment(tmp_path, name)
    for key, want in AUTHORS[name].items():
        got = select(cfg, key)
        if isinstance(want, dict) and isinstance(got, dict):
            got = {k: got.get(k) for k in want}
        assert got == want, f"{name}: {key}"
    assert cfg.task_name == name
    assert select(cfg, "trainer.max_epochs") == cfg.stage1_epochs + cfg.stage2_epochs


def test_fmnist_dat_is_the_cli_default(tmp_path):
    default = compose_config(tmp_path, [], tiny=False)
    named = compose_experiment(tmp_path, "fmnist_dat")
    a, b = (OmegaConf.to_container(c, resolve=True) for c in (default, named))
    assert a.pop("task_name") == "train" and b.pop("task_name") == "fmnist_dat"
    assert a == b


def test_fmnist_reproduce_is_the_default_with_its_recipe_only(tmp_path):
    """`make reproduce`'s experiment changes the settings docs/reproduce_ratio.md measured, and
    nothing else of the default (its curriculum, LR, attacks, data stay the default's)."""
    default, recipe = (flatten_config(OmegaConf.to_container(c, resolve=True)) for c in
                       (compose_config(tmp_path, [], tiny=False), compose_experiment(tmp_path, "fmnist_reproduce")))
    changed = {k for k in default.keys() | recipe.keys() if default.get(k, "absent") != recipe.get(k, "absent")}
    follow = {"trainer.max_epochs", "model.init_ckpt", "callbacks.fid.steps", "callbacks.sample_grid.steps"}
    assert changed - follow == {"task_name", "init_ckpt", "stage2_epochs", "model.net.act_layer", "model.bce_weight",
                                "data.ood.box", "data.ood.max_shift", "sampling.steps"}
    assert (recipe["model.net.act_layer"], recipe["model.bce_weight"], recipe["sampling.steps"]) == ("silu", 2.0, 25)
    assert (recipe["data.ood.box"], recipe["data.ood.max_shift"], recipe["stage2_epochs"]) == (26, 1, 20)
    assert recipe["init_ckpt"].endswith("fmnist_wrn10_silu_stage1.ckpt")


def fake_pil(height: int, width: int, channels: int) -> Image.Image:
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    return image.convert("L") if channels == 1 else image


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates_data_trainer_and_callbacks(name, tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "no_data_here"))
    cfg = compose_experiment(tmp_path, name, *CPU)
    size, channels = cfg.data.image_size, cfg.data.channels
    if name in FMNIST:  # the one dataset on this machine: the whole stack, as `train` does
        datamodule, module, trainer = build(cfg)
        datamodule.setup("fit")
        assert module.net.num_classes == datamodule.num_classes == 10
    else:
        # The datasets are absent here: the transforms still have to produce model-sized inputs,
        # and the datamodule has to say what is missing.
        # CIFAR images are all 32x32; ImageNet photos come in any size and aspect.
        shape = (size, size) if cfg.data.name.startswith("cifar") else (size + 61, size + 37)
        for key in ("clf_transform", "gen_transform", "val_transform"):
            x = hydra.utils.instantiate(cfg.data[key])(fake_pil(*shape, channels))
            assert x.shape == (channels, size, size) and x.dtype == torch.float32, key
            assert 0 <= x.min() and x.max() <= 1, key
        with pytest.raises(Exception) as err:
            hydra.utils.instantiate(cfg.data)
        assert isinstance(err.value.__cause__ or err.value, (DatasetNotFoundError, FileNotFoundError))
        assert "no_data_here" in str(err.value)
        trainer = make_trainer(cfg)
    assert trainer.max_epochs == cfg.stage1_epochs + cfg.stage2_epochs
    assert not trainer.validate_loop.inference_mode  # robust validation needs gradients
    if cfg.trainer.get("strategy") == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy"


# ---------------------------------------------------------------------------- one training step
STEP_OVERRIDES = [
    *CPU, "++trainer.strategy=auto", "stage1_epochs=0", "stage2_epochs=1", "++trainer.max_steps=1",
    "trainer.limit_val_batches=0", "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "model.clf_attack.steps=1", "callbacks.curriculum.start_steps=1", "callbacks.curriculum.max_steps=1",
    # These need real data or write full-size checkpoints; their code runs in the tiny fits.
    "callbacks.fid=null", "callbacks.sample_grid=null", "callbacks.last_checkpoint=null",
    "callbacks.stage1_checkpoint=null",
]


def one_training_step(tmp_path, name, size, batch_size=2, *overrides):
    """Fit ``name`` for one stage-two step on fake images of ``size`` (stage one = the initial
    weights, saved and passed as ``init_ckpt``); returns the module and the recorded parameters."""
    init = tmp_path / "init.pt"
    cfg = compose_experiment(tmp_path, name, *STEP_OVERRIDES, f"init_ckpt={init}", *overrides)
    net = hydra.utils.instantiate(cfg.model.net)
    torch.save(net.state_dict(), init)
    module = hydra.utils.instantiate(cfg.model, net=net)
    init.unlink()
    trainer = make_trainer(cfg)
    k, c = cfg.data.num_classes, cfg.data.channels
    g = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(batch_size, c, size, size, generator=g)

    batch = {"clf": (images(), torch.randint(k, (batch_size,), generator=g)),
             "gen": (images(), torch.randint(k, (batch_size,), generator=g)), "ood": images()}
    loader = DataLoader(range(1), batch_size=None, collate_fn=lambda _: batch)
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1
    assert module.stage == 2
    metrics = trainer.callback_metrics
    for key in ("train/loss_ce", "train/loss_bce", "train/auc"):
        assert torch.isfinite(metrics[key]), key
    assert any(not torch.equal(before[n], p) for n, p in module.net.named_parameters())
    return module, trainer, cfg


def big_case(name, size, slow=False):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(name, size, id=f"{name}-{size}px", marks=marks)


@pytest.mark.parametrize("name,size", [
    big_case("cifar10_wrn34", 32),
    big_case("cifar100_wrn34", 32),
    big_case("rimagenet_resnet50", 224),
    big_case("imagenet256_resnet50", 256),
    big_case("imagenet256_convnext", 32),  # the same code path at a CPU-sized resolution
    big_case("imagenet256_convnext", 256, slow=True),
])
def test_big_experiment_takes_one_training_step(name, size, tmp_path):
    module, _, cfg = one_training_step(tmp_path, name, size)
    assert module.net.num_classes == cfg.data.num_classes


METHOD_STEP = [  # two steps of a one-stage method: stage one from the initial weights
    *CPU, "++trainer.strategy=auto", "stage2_epochs=0", "++trainer.max_steps=2", "trainer.limit_val_batches=0",
    "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", "model.clf_attack.steps=1",
    "callbacks.fid=null", "callbacks.sample_grid=null", "callbacks.last_checkpoint=null",
    "callbacks.stage1_checkpoint=null",
]
# Fewer chain steps and a small buffer on fake data; the class Gaussians need the dataset (absent
# here), so JEM++'s starts are uniform in this step (they run in the Fashion-MNIST fits).
METHOD_STEP_SIZES = {"cifar10_jem_wrn28": ["model.chain.steps=2", "model.buffer.size=20"],
                     "cifar10_jempp_wrn28": ["model.chain.steps=2", "model.buffer.size=20", "model.buffer.init=uniform"],
                     "cifar10_eb_jdat_wrn28": ["model.chain.steps=2", "model.buffer.size=20", "model.buffer.init=uniform",
                                               "model.adversarial.steps=1"],
                     "cifar10_ratio_wrn34": ["model.ood_attack.steps=1"], "cifar10_at_wrn34": []}


@pytest.mark.parametrize("name", sorted(METHOD_STEP_SIZES))
def test_method_experiment_takes_its_first_training_steps(name, tmp_path):
    cfg = compose_experiment(tmp_path, name, *METHOD_STEP, *METHOD_STEP_SIZES[name])
    module = hydra.utils.instantiate(cfg.model)
    trainer = make_trainer(cfg)
    g = torch.Generator().manual_seed(0)

    def images():
        return torch.rand(2, 3, 32, 32, generator=g)

    batch = {"clf": (images(), torch.tensor([1, 7])), "gen": (images(), torch.tensor([3, 2])), "ood": images()}
    before = {n: p.detach().clone() for n, p in module.net.named_parameters()}
    trainer.fit(module, train_dataloaders=DataLoader(range(2), batch_size=None, collate_fn=lambda _: batch))
    assert trainer.global_step == 2 and module.stage == 1 and module.divergence.total == 0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # two steps: the first of JEM, JEM++ and EB-JDAT runs at LR 0, where their warm-up starts
    assert any(not torch.equal(before[n], p) for n, p in module.net.named_parameters())


def test_fmnist_seed_source_swaps_to_handwritten_digits(tmp_path):
    """The README's alternative seeds: only `_target_` changes, the node's arguments still fit."""
    target = "dat_lightning.data.generated.HandwrittenDigits"
    cfg = compose_config(tmp_path, [f"data.ood._target_={target}", "data.ood.length=8"], tiny=False)
    seeds = hydra.utils.instantiate(cfg.data.ood)
    assert type(seeds).__name__ == "HandwrittenDigits" and len(seeds) == 8
    assert seeds[0].shape == (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
