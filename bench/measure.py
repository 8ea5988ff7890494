"""How the benchmarks measure: timing (minimum over repetitions, synchronized on CUDA), peak
memory (CUDA allocator or the CPU profiler), FLOPs of matmuls and convolutions, the device's
peak FLOP rate for MFU, and the device's name for the results table."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

PEAK_FLOPS = {"H200": (66.9e12, 989.4e12), "H100 PCIe": (51.2e12, 756.5e12), "H100": (66.9e12, 989.4e12),
              "A100": (19.5e12, 312e12), "L40S": (91.6e12, 362e12)}

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], reps: int, device: str, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times)

def peak_memory_mb(fn: Callable[[], Any], device: str) -> float:
    """Peak of the memory allocated while ``fn`` runs, above what was allocated before it."""
    if device.startswith("cuda"):
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmpdir:
        path = os.path.join(tmpdir, "trace.json")
        prof.export_chrome_trace(path)
        events = json.loads(Path(path).read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0) / 2**20

class FlopCount(TorchDispatchMode):
    """FLOPs of the matmuls and convolutions run inside (``torch.utils.flop_counter``'s formulas).

    ``FlopCounterMode`` itself also tracks modules with backward hooks, which do not support
    ``torch.autograd.grad`` with respect to inputs, i.e. every attack and chain step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

def peak_flops(bf16: bool, overrides: dict[str, float | None]) -> float | None:
    key = "bf16" if bf16 else "fp32"
    if overrides.get(key):
        return overrides[key] * 1e12
    name = torch.cuda.get_device_name()
    for pattern, peaks in PEAK_FLOPS.items():
        if pattern in name:
            return peaks[1] if bf16 else peaks[0]
    return None

def describe_device(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{model}, {torch.get_num_threads()} torch threads"
