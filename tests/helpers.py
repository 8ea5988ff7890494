"""Shared test helpers: compose the repository's Hydra config the way the CLI does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import Callback
from omegaconf import DictConfig, open_dict

from dat_lightning.config import CONFIG_DIR, register_resolvers

register_resolvers()

# A run small enough for a CPU test: the shipped debug=tiny config (a few steps of the tiny WRN on
# Fashion-MNIST with every callback of the default config, each shrunk).
TINY_FMNIST = ("debug=tiny",)
# Append to drop the FID machinery (extractor, real statistics, best-FID checkpoint) from a run.
NO_FID = ("callbacks.fid=null",)


def compose_config(tmp_path: Path, overrides: Sequence[str] = (), tiny: bool = True,
                   config_name: str = "train") -> DictConfig:
    """The resolved-on-access config of a CLI (``train``, ``sample``, ``evaluate``) for
    ``overrides``, outputs under ``tmp_path``.

    Sets the HydraConfig singleton too, so ``${hydra:...}`` interpolations resolve as in a CLI run,
    and returns the config without its ``hydra`` node, as ``@hydra.main`` hands it to ``run``.
    ``tiny`` prepends :data:`TINY_FMNIST` to a training config (later overrides win).
    """
    base = [*TINY_FMNIST] if tiny and config_name == "train" else []
    overrides = [*base, f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}/cache",
                 *overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=_dedupe(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)
    return drop_hydra(cfg)


def _dedupe(overrides: Sequence[str]) -> list[str]:
    """Hydra rejects the same key twice; keep the last value of each key (in first position)."""
    def key(item: str) -> str:
        return item.split("=", 1)[0].lstrip("+~")

    last = {key(item): item for item in overrides}
    seen, out = set(), []
    for item in overrides:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(last[k])
    return out


def drop_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its ``hydra`` node (what a @hydra.main task function receives)."""
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def save_fresh_state(net: torch.nn.Module, path: Path) -> Path:
    """Save ``net``'s weights as a plain state dict (a stand-in stage-one model for init_ckpt)."""
    torch.save(net.state_dict(), path)
    return path


def _batchnorm_tensors(module: torch.nn.Module, named) -> dict[str, torch.Tensor]:
    """Copies of ``named(bn)`` tensors of every BatchNorm, keyed ``<layer>.<name>``."""
    from dat_lightning.batchnorm import batchnorm_layers

    names = {id(m): n for n, m in module.named_modules()}
    return {
        f"{names[id(bn)]}.{key}": t.detach().clone()
        for bn in batchnorm_layers(module)
        for key, t in named(bn)
        if t is not None
    }


def batchnorm_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm buffer (running mean/var, num_batches_tracked) by name."""
    return _batchnorm_tensors(module, lambda bn: bn.named_buffers(recurse=False))


def batchnorm_affine(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every BatchNorm's affine weight and bias by name."""
    return _batchnorm_tensors(module, lambda bn: bn.named_parameters(recurse=False))


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fit_tiny(tmp_path: Path, overrides: Sequence[str] = (), callbacks: Sequence = (),
             ckpt_path: str | None = None):
    """Build the tiny run of ``overrides`` with extra ``callbacks`` and fit it.

    Returns ``(cfg, datamodule, module, trainer)``.
    """
    from dat_lightning.cli.train import build

    cfg = compose_config(tmp_path, overrides)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.extend(callbacks)
    # weights_only=True as in dat_lightning.train.run: a resumable checkpoint must load safely.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return cfg, datamodule, module, trainer


class Recorder(Callback):
    """Copies of what a test needs to see at training hooks, in order, as dicts in ``events``.

    Every event has the hook name, epoch, batch index (or None), global step, the module's stage
    and T, the raw (training) model's BatchNorm buffers, BN affine weights and all parameters,
    and per optimizer the number of parameters with state the learning rate and copies of its state tensors. At epoch end
    it also copies the parameters of ``evaluation_net`` (what grids and FID sample from).
    """

    def __init__(self) -> None:
        self.events: list[dict] = []

    def _record(self, hook: str, trainer, pl_module, batch_idx=None, **extra) -> None:
        optimizers = [getattr(o, "optimizer", o) for o in trainer.optimizers]
        self.events.append({
            "hook": hook, "epoch": trainer.current_epoch, "batch_idx": batch_idx,
            "global_step": trainer.global_step, "stage": pl_module.stage,
            "gen_steps": pl_module.gen_steps,
            "bn": batchnorm_stats(pl_module.net), "affine": batchnorm_affine(pl_module.net),
            "params": {n: p.detach().clone() for n, p in pl_module.net.named_parameters()},
            "opt_state": [len(o.state) for o in optimizers],
            "lr": [o.param_groups[0]["lr"] for o in optimizers],
            "opt_tensors": [[v.detach().clone() for st in o.state.values() for v in st.values()
                             if isinstance(v, torch.Tensor)] for o in optimizers],
            **extra,
        })

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record("batch_start", trainer, pl_module, batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        auc = outputs.get("auc") if isinstance(outputs, dict) else None
        self._record("batch_end", trainer, pl_module, batch_idx,
                     auc=None if auc is None else float(auc))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._record("epoch_start", trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._record("validation_end", trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from dat_lightning.callbacks.ema import evaluation_net

        net = evaluation_net(trainer, pl_module)
        self._record("epoch_end", trainer, pl_module, eval_is_raw=net is pl_module.net,
                     eval_params={n: p.detach().clone() for n, p in net.named_parameters()})

    def where(self, **match) -> list[dict]:
        """The events whose fields equal ``match`` (e.g. ``hook="batch_end", stage=2``)."""
        return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]


_SHARED_RUNS: dict[str, object] = {}


def two_stage_run(tmp_path_factory):
    """One tiny fit shared by the tests of a session (module and callback tests read it, never
    change it): stage one for 1 epoch, stage two for 2, every callback of the default config
    (EMA, grid, FID, checkpoints), validation after the 2nd of 3 batches so training batches
    follow it, and a :class:`Recorder`. Returns a namespace: cfg, module, trainer, recorder, dir.
    """
    if "two_stage" not in _SHARED_RUNS:
        from types import SimpleNamespace

        run_dir = tmp_path_factory.mktemp("two_stage")
        recorder = Recorder()
        cfg, _, module, trainer = fit_tiny(
            run_dir, ["stage1_epochs=1", "stage2_epochs=2", "++trainer.val_check_interval=2"],
            callbacks=[recorder])
        _SHARED_RUNS["two_stage"] = SimpleNamespace(
            cfg=cfg, module=module, trainer=trainer, recorder=recorder, dir=run_dir)
    return _SHARED_RUNS["two_stage"]


def train_tiny_checkpoints(tmp_path: Path) -> Path:
    """Train the tiny default run (one epoch per stage) with ``train.run``; returns its output dir,
    holding ``checkpoints/stage1.ckpt`` and ``checkpoints/last.ckpt`` (for evaluation tests)."""
    from dat_lightning.cli.train import run

    run(compose_config(tmp_path, ["stage1_epochs=1", "stage2_epochs=1", *NO_FID]))
    return tmp_path


# -- the command line, as a user runs it ---------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a CLI subprocess: one CPU thread (tests share the cores), Hydra's short
    error reports (no HYDRA_FULL_ERROR), unbuffered output."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra})  # extra may set the threads
    return env


def fault_cli_env() -> dict[str, str]:
    """:func:`cli_env` for a CLI whose command line names a callback of ``tests/fault_callbacks.py``
    (``+callbacks.hang={_target_: fault_callbacks.WaitForever}``): the tests folder is importable."""
    return cli_env(PYTHONPATH=str(Path(__file__).resolve().parent))


def session_cache(tmp_path: Path) -> Path:
    """A ``DAT_CACHE`` shared by the tests of one session (beside their ``tmp_path``): the default
    starts in stage two, whose first FID computes the real images' statistics (5000 images, over a
    minute on one thread); files are keyed by data, extractor and size, so sharing them is safe."""
    return tmp_path.parent / "session_dat_cache"


def tiny_judge(tmp_path: Path) -> Path:
    """A Fashion-MNIST judge trained in seconds (one epoch on 256 images): weights for scripts that
    score with the judge (``JUDGE=``), not a judge to believe."""
    judge = tmp_path / "judge.pt"
    made = run_cli([f"out={judge}", "epochs=1", "limit=256"], cwd=tmp_path, module="dat_lightning.judge")
    assert made.returncode == 0, made.stderr[-2000:]
    return judge


def run_cli(args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300,
            module: str = "dat_lightning.train"):
    """``python -m <module> *args`` in ``cwd``; returns the CompletedProcess (stdout, stderr text)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_checks_in_process(args: Sequence[str], cwd: Path, monkeypatch, capsys, module: str = "dat_lightning.train"):
    """``python -m <module> *args`` as far as its checks go, in this process: the entry point's
    ``main()`` runs with its Hydra task replaced by one that fails the test, so a command line the
    checks let through is reported, not run. For the mistakes :func:`~dat_lightning.cli.launcher.launch`
    catches before any work starts; a subprocess (:func:`run_cli`) costs ~6 s of imports. Returns
    a CompletedProcess (exit code; stdout and stderr as captured here, a traceback's text if
    anything other than SystemExit escapes)."""
    import importlib
    import subprocess
    import sys

    entry = importlib.import_module(module.replace("dat_lightning.", "dat_lightning.cli."))

    def task_reached() -> None:
        raise AssertionError(f"{list(args)}: the checks let it through to the run")

    with monkeypatch.context() as patch:
        patch.setattr(entry, "hydra_main", task_reached)
        patch.setattr(sys, "argv", [module, *args])
        patch.chdir(cwd)
        code, escaped = 0, ""
        try:
            entry.main()
        except SystemExit as stop:
            code = stop.code
        except Exception as err:  # noqa: BLE001 - what escapes main() is a traceback for a user
            code, escaped = -1, f"\nTraceback: {type(err).__name__}: {err}"
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([module, *args], code, out, err + escaped)


# -- small pieces of a training step ---------------------------------------------------------------


def tiny_module(tmp_path: Path, *overrides: str):
    """The tiny default run's DATModule (stage one for one epoch), built from its config."""
    import hydra

    return hydra.utils.instantiate(compose_config(tmp_path, ["stage1_epochs=1", *overrides]).model)


def fake_images(n: int, seed: int, channels: int = 1, size: int = 28, classes: int = 10):
    """``(images in [0, 1], labels)`` from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(classes, (n,), generator=g)


def grads(net: torch.nn.Module) -> list:
    """Copies of every parameter's gradient (None where there is none)."""
    return [None if p.grad is None else p.grad.clone() for p in net.parameters()]


def write_tiny_images(path: Path, count: int) -> np.ndarray:
    """Tiny Images format: each 32x32x3 image flattened in Fortran (column-major) order."""
    images = np.random.default_rng(3).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    path.write_bytes(b"".join(img.reshape(-1, order="F").tobytes() for img in images))
    return images
