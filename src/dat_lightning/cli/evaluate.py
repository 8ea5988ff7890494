"""``python -m dat_lightning.evaluate ckpt=PATH [metrics=[...]] [key=value ...]``: measure a checkpoint.

Runs the metrics of :class:`~dat_lightning.evaluation.Evaluation` asked for (in a fixed order),
writes ``report.json`` after each (a later failure keeps the earlier results) and the pictures to
the run directory, then logs the same numbers to the configured loggers. Config:
``conf/evaluate.yaml``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dat_lightning.cli.instantiate import launch_sharded, make_loggers
from dat_lightning.cli.launcher import in_run_directory, launch
from dat_lightning.cli.settings_checks import EVALUATION_METRICS, check_evaluate_settings
from dat_lightning.config import CONFIG_DIR, register_resolvers
from dat_lightning.evaluation import Evaluation
from dat_lightning.reporting import (
    close_loggers,
    flatten_numbers,
    log_numbers,
    log_pictures,
    write_json,
)

register_resolvers()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.metrics`` on ``cfg.ckpt``; returns the report written to ``report.json``."""
    started = time.time()
    check_evaluate_settings(cfg)
    fabric, shards = launch_sharded(cfg)
    ev = Evaluation(cfg, fabric.device, shards, fabric.autocast)
    report: dict[str, Any] = {
        "checkpoint": str(ev.run.path), "ema": bool(cfg.ema), "config": cfg.get("config"),
        "dataset": ev.dm.name, "task_name": ev.run.config.get("task_name"),
        "checkpoint_gen_steps": ev.run.gen_steps, "seed": int(cfg.seed), "device": str(ev.device),
        "processes": shards.world, "precision": str(OmegaConf.select(cfg, "trainer.precision")),
        "metrics": {}, "wall_time_s": {},
    }
    for metric in EVALUATION_METRICS:  # a fixed order, whatever the order asked for
        if metric not in cfg.metrics:
            continue
        t0 = time.time()
        print(f"[evaluate] {metric} ...", flush=True)
        report["metrics"][metric] = getattr(ev, metric)()
        report["wall_time_s"][metric] = round(time.time() - t0, 2)
        if shards.is_main:
            write_json(ev.out_dir / "report.json", report)  # partial reports survive a later failure
    report["wall_time_s"]["total"] = round(time.time() - started, 2)
    report["pictures"] = {k: str(v) for k, v in ev.pictures.items()}
    if not shards.is_main:
        return report  # every process holds the same numbers; the main one writes them
    write_json(ev.out_dir / "report.json", report)
    loggers = make_loggers(cfg.get("logger"))
    log_numbers(loggers, flatten_numbers(report["metrics"]))
    log_pictures(loggers, ev.pictures)
    close_loggers(loggers)
    print_report(report)
    return report


def print_report(report: Mapping[str, Any]) -> None:
    numbers = flatten_numbers(report["metrics"])
    width = max((len(k) for k in numbers), default=10)
    lines = ["", f"DAT evaluation of {report['checkpoint']}", "-" * (width + 14)]
    lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in numbers.items()]
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def hydra_main(cfg: DictConfig) -> None:
    in_run_directory(cfg, run)


def main() -> None:
    """The CLI: overrides, values and the checkpoint file checked first, then the evaluation."""
    launch(sys.argv[1:], "evaluate", hydra_main, validate=check_evaluate_settings, checkpoints=("ckpt",))
