"""Stage-two step benchmarks: ``python -m bench.run [--device cpu|cuda] [--quick]`` (``make bench``).

One configuration per line, everything measured side by side in one run:

- ``pass``: one forward + backward (parameter gradients) of a batch of B images, the network in
  stage-two mode (BatchNorm frozen), on the same device and precision as the step.
  Every time is the minimum over repetitions (the least disturbed run on a shared machine), and
  compared numbers are measured interleaved: a reference pass right before each step, fused and
  unfused steps alternating within one training run, chain and pass alternating.
- step efficiency: stage-two step time / ((K + T + 3) x pass). K attack steps and T chain steps on
  B images, plus the three loss forwards (x_adv, x_hat, x_T) of B images each, are the passes a
  step must make. Attack and chain passes back-propagate to the input only (no weight gradients),
  so a step without overhead comes out below 1. The step is Lightning's real ``training_step``
  (attack, chain, loss, backward, optimizer step, divergence check, logging), timed by a callback.
- fused vs unfused step time (:mod:`dat_lightning.fused`), and the largest relative difference of
  their losses on the same weights and batch.
- peak memory of one stage-two step at T=5 and T=50 (CPU: the profiler's peak of bytes allocated
  during the step; CUDA: ``max_memory_allocated`` above what was allocated before). Equal values
  mean no autograd graph survives a chain step; a control loop that keeps its graphs shows the
  measurement sees the difference.
- sampling: images/s of the chain for T steps (eval mode) and its time / (T x pass).
- GPU only (CUDA available): ResNet-50 and ConvNeXt-L + ConvStem at 256 px, fp32 vs bf16 vs
  bf16 + ``torch.compile``: images/s of a stage-two step (B classification images per step) and
  model FLOPs utilization (FLOPs of one step counted with ``torch.utils.flop_counter``).
  Without CUDA the section prints ``skipped: no GPU``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from bench.measure import FlopCount, best_time, describe_device, peak_flops, peak_memory_mb, sync
from dat_lightning.batchnorm import eval_mode, freeze_batchnorm
from dat_lightning.callbacks import FreezeBatchNorm
from dat_lightning.models import build_classifier
from dat_lightning.module import DATModule
from dat_lightning.sampling import pgd_sample

ROOT = Path(__file__).resolve().parent.parent
MINI_CONVNEXT = {"depths": (1, 1, 3, 1), "dims": (32, 64, 128, 256), "stem_widths": (16, 24, 32)}


@dataclass(frozen=True)
class Config:
    name: str
    model: str
    image_size: int
    batch: int
    attack_steps: int  # K
    chain_steps: int  # T
    num_classes: int = 10
    model_kwargs: dict = field(default_factory=dict)
    optimizer: str = "sgd"

    @property
    def passes(self) -> int:
        """Forward+backward passes of B images a stage-two step must make: K + T + 3."""
        return self.attack_steps + self.chain_steps + 3


CPU_CONFIGS = [
    Config("wrn10_1 32px B16 K10 T10", "wrn10_1", 32, 16, 10, 10),
    Config("wrn10_1 32px B16 K10 T50", "wrn10_1", 32, 16, 10, 50),
    Config("convnext-mini+ConvStem 32px B16 K3 T15", "test_convnext_convstem", 32, 16, 3, 15,
           model_kwargs=MINI_CONVNEXT, optimizer="adamw"),
]
GPU_CONFIGS = [
    Config("resnet50 256px B64 K3 T15", "resnet50", 256, 64, 3, 15, num_classes=1000),
    Config("convnext_large_convstem 256px B32 K3 T24", "convnext_large_convstem", 256, 32, 3, 24,
           num_classes=1000, optimizer="adamw"),
]
# Dense peak FLOP/s (no sparsity) by device-name substring: (fp32 without tensor cores, bf16).


# -- building blocks --------------------------------------------------------------------------

def build_module(cfg: Config, tmpdir: str, fused: bool = True, compile_: bool = False) -> DATModule:
    """A DATModule in stage two from the first step (a saved copy of the net as "stage one")."""
    torch.manual_seed(0)
    net = build_classifier(cfg.model, num_classes=cfg.num_classes, in_chans=3, mean=[0.5] * 3,
                           std=[0.25] * 3, **cfg.model_kwargs)
    init = Path(tmpdir) / f"{cfg.model}_init.pt"
    if not init.exists():
        torch.save(net.state_dict(), init)
    if cfg.optimizer == "adamw":
        opt = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    else:
        opt = functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    module = DATModule(
        net, clf_attack={"norm": "l2", "eps": 0.5, "step_size": 0.1, "steps": cfg.attack_steps},
        gen_attack={"step_size": 0.1},
        optimizer_stage1=opt, optimizer_stage2=opt, stage2_start_epoch=0, init_ckpt=str(init),
        fused=fused, compile=compile_,
    )
    module.gen_steps = cfg.chain_steps
    return module


def make_batch(cfg: Config, device: str = "cpu", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def images() -> torch.Tensor:
        return torch.rand(cfg.batch, 3, cfg.image_size, cfg.image_size, generator=g).to(device)

    def labels() -> torch.Tensor:
        return torch.randint(cfg.num_classes, (cfg.batch,), generator=g).to(device)

    return {"clf": (images(), labels()), "gen": (images(), labels()), "ood": images()}


def stage_two_args(batch: dict) -> tuple:
    (x, y), (x_hat, y_hat) = batch["clf"], batch["gen"]
    return x, y, x_hat, y_hat, batch["ood"]


class SameBatch(Dataset):
    """``n`` times the same prepared batch (data loading is not what is measured)."""

    def __init__(self, batch: dict, n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.batch


def reference_pass(net: torch.nn.Module, x: torch.Tensor) -> None:
    """One forward + backward (parameter gradients) of ``x``: the unit a step is measured in."""
    net.zero_grad(set_to_none=True)
    net(x).float().logsumexp(1).sum().backward()
    net.zero_grad(set_to_none=True)


class StepTimer(Callback):
    """Wall time of every training step (``training_step`` + Lightning's per-step work).

    With ``alternate``, even steps run fused and odd steps unfused (same results, so the run is
    unchanged); with ``reference``, a reference pass on the step's batch is timed just before
    each step. Interleaving keeps every compared number under the same machine load.
    """

    def __init__(self, alternate: bool = False, reference: bool = False) -> None:
        self.alternate, self.reference = alternate, reference
        self.times: dict[str, list[float]] = {"fused": [], "unfused": [], "pass": []}
        self._start, self._mode = 0.0, "fused"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        device = str(pl_module.device)
        if self.reference:
            with trainer.precision_plugin.train_step_context():
                self.times["pass"].append(best_time(
                    lambda: reference_pass(pl_module.net, batch["clf"][0]), 1, device, warmup=0))
        if self.alternate:
            pl_module.fused = batch_idx % 2 == 0
        self._mode = "fused" if pl_module.fused else "unfused"
        sync(device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(str(pl_module.device))
        self.times[self._mode].append(time.perf_counter() - self._start)


def timed_run(module: DATModule, cfg: Config, device: str, precision: str, steps: int, warmup: int,
              alternate: bool = False, reference: bool = False) -> dict[str, float]:
    """Best times of ``steps`` stage-two training steps run by a Lightning Trainer (after
    ``warmup`` steps), per mode (``fused``/``unfused``) and of the reference ``pass``."""
    timer = StepTimer(alternate, reference)
    total = warmup + steps
    trainer = Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, precision=precision,
        max_epochs=1, limit_train_batches=total, limit_val_batches=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, inference_mode=False, callbacks=[FreezeBatchNorm(), timer],
    )
    trainer.fit(module, train_dataloaders=DataLoader(SameBatch(make_batch(cfg), total), batch_size=None))
    skip = {"fused": warmup, "unfused": warmup, "pass": warmup}
    if alternate:  # warm-up steps alternate too
        skip["fused"], skip["unfused"] = (warmup + 1) // 2, warmup // 2
    return {mode: min(times[skip[mode]:]) for mode, times in timer.times.items() if times[skip[mode]:]}


def sampling_times(module: DATModule, cfg: Config, device: str, steps: int, reps: int) -> tuple[float, float]:
    """Best times of a T-step chain (eval mode) and, interleaved, of the reference pass."""
    net = module.net.to(device)
    freeze_batchnorm(net)
    batch = make_batch(cfg, device)
    x, x0, y = batch["clf"][0], batch["ood"], batch["gen"][1]

    def chain() -> None:
        with eval_mode(net):
            pgd_sample(net, x0, y, step_size=0.1, steps=steps)

    chain()
    pairs = [(best_time(chain, 1, device, 0), best_time(lambda: reference_pass(net, x), 1, device, 0))
             for _ in range(reps)]
    return min(p[0] for p in pairs), min(p[1] for p in pairs)


def fused_unfused_difference(cfg: Config, tmpdir: str) -> float:
    """Largest relative difference between the fused and unfused stage-two losses and gradients."""
    diffs = []
    grads = []
    for fused in (True, False):
        module = build_module(cfg, tmpdir, fused=fused)
        freeze_batchnorm(module.net)
        loss, _ = module.stage_two_loss(*stage_two_args(make_batch(cfg)))
        loss.backward()
        grads.append((loss.detach(), torch.cat([p.grad.flatten() for p in module.net.parameters()])))
    (loss_f, g_f), (loss_u, g_u) = grads
    diffs.append(float((loss_f - loss_u).abs() / loss_u.abs()))
    diffs.append(float((g_f - g_u).norm() / g_u.norm()))
    return max(diffs)


def step_peak_memory(cfg: Config, chain_steps: int, device: str, fused: bool, tmpdir: str) -> float:
    """Peak memory of one stage-two step (attack, chain, loss, backward, optimizer step) at T."""
    module = build_module(cfg, tmpdir, fused=fused).to(device)
    freeze_batchnorm(module.net)
    module.gen_steps = chain_steps
    optimizer = module.optimizer_stage2(params=module.net.parameters())
    args = stage_two_args(make_batch(cfg, device))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = module.stage_two_loss(*args)
        loss.backward()
        optimizer.step()

    step()  # the optimizer's state exists before the measured step, as in training
    return peak_memory_mb(step, device)


def graph_keeping_control(cfg: Config, chain_steps: int, device: str, tmpdir: str) -> float:
    """A chain written the wrong way (each step's graph kept alive): its memory grows with T."""
    net = build_module(cfg, tmpdir).net.to(device)
    freeze_batchnorm(net)
    x0 = make_batch(cfg, device)["ood"]

    def chain() -> None:
        kept, z = [], x0.requires_grad_(True)
        for _ in range(chain_steps):
            value = net(z).logsumexp(1).sum()
            (g,) = torch.autograd.grad(value, z, retain_graph=True)
            kept.append(value)  # the bug: a logged objective that holds on to its forward graph
            z = (z.detach() + 0.1 * g).clamp(0, 1).requires_grad_(True)

    return peak_memory_mb(chain, device)


# -- sections ---------------------------------------------------------------------------------

def main_section(device: str, quick: bool, tmpdir: str) -> list[dict]:
    steps, reps = (4, 2) if quick else (20, 6)
    rows = []
    for cfg in CPU_CONFIGS:
        times = timed_run(build_module(cfg, tmpdir), cfg, device, "32-true", steps, warmup=2,
                          alternate=True, reference=True)
        t_pass, t_fused, t_unfused = times["pass"], times["fused"], times["unfused"]
        t_sample, t_pass_sampling = sampling_times(build_module(cfg, tmpdir), cfg, device, cfg.chain_steps, reps)
        bound = cfg.passes * t_pass
        row = {
            "config": cfg.name, "pass_ms": 1e3 * t_pass, "passes": cfg.passes,
            "step_fused_s": t_fused, "step_unfused_s": t_unfused,
            "eff_fused": t_fused / bound, "eff_unfused": t_unfused / bound,
            "fused_speedup": t_unfused / t_fused, "max_rel_diff": fused_unfused_difference(cfg, tmpdir),
            "sample_img_s": cfg.batch / t_sample, "sample_eff": t_sample / (cfg.chain_steps * t_pass_sampling),
        }
        rows.append(row)
        print(
            f"{cfg.name}: pass {row['pass_ms']:.1f} ms | step fused {t_fused:.3f} s (eff {row['eff_fused']:.2f}) "
            f"unfused {t_unfused:.3f} s (eff {row['eff_unfused']:.2f}) speedup x{row['fused_speedup']:.2f} "
            f"rel.diff {row['max_rel_diff']:.1e} | sampling T={cfg.chain_steps}: {row['sample_img_s']:.1f} img/s "
            f"(eff {row['sample_eff']:.2f})", flush=True,
        )
    return rows


def memory_section(device: str, tmpdir: str) -> list[dict]:
    cfg = CPU_CONFIGS[0]
    rows = []
    for label, measure in (
        ("fused", lambda t: step_peak_memory(cfg, t, device, True, tmpdir)),
        ("unfused", lambda t: step_peak_memory(cfg, t, device, False, tmpdir)),
        ("control: chain keeping its graphs", lambda t: graph_keeping_control(cfg, t, device, tmpdir)),
    ):
        row = {"config": cfg.name.rsplit(" T", 1)[0], "what": label, "T5_mb": measure(5), "T50_mb": measure(50)}
        rows.append(row)
        print(f"memory {row['config']} {label}: T=5 {row['T5_mb']:.1f} MB, T=50 {row['T50_mb']:.1f} MB", flush=True)
    return rows


def step_flops(cfg: Config, tmpdir: str, device: str) -> float:
    """FLOPs of one (fused, fp32) stage-two step: forward and backward of every pass."""
    module = build_module(cfg, tmpdir).to(device)
    freeze_batchnorm(module.net)
    args = stage_two_args(make_batch(cfg, device))
    with FlopCount() as counter:
        loss, _ = module.stage_two_loss(*args)
        loss.backward()
    return float(counter.total)


def gpu_section(quick: bool, tmpdir: str, overrides: dict[str, float | None], device: str = "cuda") -> list[dict]:
    if not device.startswith("cuda") or not torch.cuda.is_available():
        print("GPU section (ResNet-50, ConvNeXt-L 256px; fp32 / bf16 / bf16+compile, MFU): skipped: no GPU")
        return []
    steps = 2 if quick else 5
    rows = []
    for cfg in GPU_CONFIGS:
        flops = step_flops(cfg, tmpdir, device)
        for mode in ("fp32", "bf16", "bf16+compile"):
            bf16, compiled = mode != "fp32", mode.endswith("compile")
            module = build_module(cfg, tmpdir, compile_=compiled)
            # compiling makes a few graphs (inner loop, loss forward): the warm-up steps pay for them
            t = timed_run(module, cfg, device, "bf16-mixed" if bf16 else "32-true", steps,
                          warmup=3 if compiled else 1)["fused"]
            peak = peak_flops(bf16, overrides)
            row = {"config": cfg.name, "mode": mode, "step_s": t, "img_s": cfg.batch / t,
                   "tflops": flops / t / 1e12, "mfu": None if peak is None else flops / t / peak}
            rows.append(row)
            mfu = "n/a (unknown peak)" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
            print(f"{cfg.name} {mode}: {row['img_s']:.1f} img/s, step {t:.3f} s, "
                  f"{row['tflops']:.1f} TFLOP/s, MFU {mfu}", flush=True)
            del module
            torch.cuda.empty_cache()
    return rows


def markdown(main_rows: list[dict], memory_rows: list[dict], gpu_rows: list[dict]) -> str:
    lines = [
        "| config | K+T+3 passes | pass (ms) | step fused (s) | eff. fused | step unfused (s) | eff. unfused "
        "| fused speed-up | max rel. diff | sampling img/s | sampling eff. |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ] if main_rows else []
    for r in main_rows:
        lines.append(
            f"| {r['config']} | {r['passes']} | {r['pass_ms']:.1f} | {r['step_fused_s']:.3f} | {r['eff_fused']:.2f} "
            f"| {r['step_unfused_s']:.3f} | {r['eff_unfused']:.2f} | x{r['fused_speedup']:.2f} "
            f"| {r['max_rel_diff']:.1e} | {r['sample_img_s']:.1f} | {r['sample_eff']:.2f} |"
        )
    if memory_rows:
        lines += ["", "| config | what | peak memory of one step, T=5 (MB) | T=50 (MB) |", "|---|---|---|---|"]
        for r in memory_rows:
            lines.append(f"| {r['config']} | {r['what']} | {r['T5_mb']:.1f} | {r['T50_mb']:.1f} |")
    if gpu_rows:
        lines += ["", "| config | mode | images/s | step (s) | TFLOP/s | MFU |", "|---|---|---|---|---|---|"]
        for r in gpu_rows:
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"| {r['config']} | {r['mode']} | {r['img_s']:.1f} | {r['step_s']:.3f} "
                         f"| {r['tflops']:.1f} | {mfu} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the GPU section needs cuda)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: with more, OpenMP spin-waiting makes "
                             "timings swing by 10x on a shared machine)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--peak-tflops-fp32", type=float, default=None, help="override the MFU peak")
    parser.add_argument("--peak-tflops-bf16", type=float, default=None, help="override the MFU peak")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("dat_lightning").setLevel(logging.ERROR)
    started = time.time()
    print(f"# bench: torch {torch.__version__}, device {describe_device(args.device)}", flush=True)
    with tempfile.TemporaryDirectory() as tmpdir:
        main_rows = main_section(args.device, args.quick, tmpdir)
        memory_rows = [] if args.skip_memory else memory_section(args.device, tmpdir)
        overrides = {"fp32": args.peak_tflops_fp32, "bf16": args.peak_tflops_bf16}
        gpu_rows = gpu_section(args.quick, tmpdir, overrides, "cuda" if torch.cuda.is_available() else args.device)
    print()
    print(markdown(main_rows, memory_rows, gpu_rows))
    print(f"\n(total {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
