"""CPU precision and memory-format benchmark of the default's inner-loop pass (issue 18, point 3):
``python -m bench.cpu_precision [--batch 128] [--reps 15] [--threads 1 2] [--net wrn10_1] [--compile]
[--act relu silu]``.

The pass is what every attack and chain step makes: one forward and one input-gradient backward of
the CPU default's WRN-10-1 (``--net``: another network) on B Fashion-MNIST-sized images (28 px),
in eval mode. Variants: float32, channels-last memory format, bfloat16 autocast, and both; with
``--compile`` also both under ``torch.compile`` (what ``model.compile=true`` does; compilation is
left out of the timing); with ``--act`` each variant for each activation (``model.net.act_layer``;
``make reproduce``'s recipe uses SiLU); for each torch thread count. All variants
of a thread count are timed round-robin (one pass each per round, ``--reps`` rounds) and the
minimum is kept, so a load change on a shared machine hits them alike; speed is reported as the
ratio to the first activation's float32 in the same run. Next to the speed, how far each variant's input gradient is from
float32's: the cosine of the two (the direction a PGD or chain step takes) and the sign agreement.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dat_lightning.models import build_classifier

VARIANTS = ("fp32", "channels_last", "bf16", "bf16+channels_last")
COMPILED = "bf16+channels_last+compile"


def make_pass(variant: str, batch: int, net_name: str = "wrn10_1",
              act: str = "relu") -> tuple[Callable[[], torch.Tensor], torch.Tensor]:
    """The pass of ``variant`` (returns the input gradient) and its inputs; same weights and data."""
    torch.manual_seed(0)
    net = build_classifier(name=net_name, num_classes=10, in_chans=1, mean=[0.2860], std=[0.3530],
                           act_layer=act).eval()
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.arange(batch) % 10
    if "channels_last" in variant:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if variant.endswith("+compile"):
        net = torch.compile(net)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in variant else contextlib.nullcontext

    def one_pass() -> torch.Tensor:
        z = x.detach().requires_grad_(True)
        with autocast():
            loss = F.cross_entropy(net(z).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, z)
        return grad

    return one_pass, x


def measure(threads: int, batch: int, reps: int, net_name: str = "wrn10_1",
            compiled: bool = False, acts: tuple[str, ...] = ("relu",)) -> list[dict[str, float | str | int]]:
    """Rows keyed ``variant`` (first activation) or ``act: variant``; gradients compared with the
    same activation's float32, speed with the first activation's."""
    torch.set_num_threads(threads)
    names = {(act, v): v if act == acts[0] else f"{act}: {v}"
             for act in acts for v in VARIANTS + ((COMPILED,) if compiled else ())}
    passes = {name: make_pass(v, batch, net_name, act)[0] for (act, v), name in names.items()}
    references = {act: passes[names[(act, "fp32")]]().flatten(1) for act in acts}
    rows = {name: {"variant": name, "threads": threads, "best_s": float("inf")} for name in passes}
    for (act, _), v in names.items():  # warm-up, and the gradient against float32's
        grad, reference = passes[v]().float().flatten(1), references[act]
        rows[v]["cosine"] = float(F.cosine_similarity(grad, reference, dim=1).mean())
        rows[v]["sign_agreement"] = float((grad.sign() == reference.sign()).float().mean())
    for _ in range(reps):
        for v, fn in passes.items():
            start = time.perf_counter()
            fn()
            rows[v]["best_s"] = min(rows[v]["best_s"], time.perf_counter() - start)
    fp32 = rows[names[(acts[0], "fp32")]]["best_s"]
    for row in rows.values():
        row["speed-up"] = fp32 / row["best_s"]
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--net", default="wrn10_1", help="the network (a name build_classifier knows)")
    parser.add_argument("--compile", action="store_true", help=f"also time {COMPILED}")
    parser.add_argument("--act", nargs="+", default=["relu"], help="activations (timm names), the first the reference")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.net} 28px ({', '.join(args.act)}), batch {args.batch}, best of {args.reps} interleaved rounds\n")
    print("| threads | variant | pass (ms) | speed-up vs fp32 | grad cosine vs fp32 | grad sign agreement |")
    print("|---:|---|---:|---:|---:|---:|")
    for threads in args.threads:
        for r in measure(threads, args.batch, args.reps, args.net, args.compile, tuple(args.act)):
            print(f"| {r['threads']} | {r['variant']} | {1000 * r['best_s']:.1f} | x{r['speed-up']:.2f} | "
                  f"{r['cosine']:.4f} | {100 * r['sign_agreement']:.1f}% |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
