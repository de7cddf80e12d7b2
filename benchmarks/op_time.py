"""Where a DiCMoR training step spends its time, operator by operator, without the profiler.

Every ATen call of a training step is timed on its own (a `TorchDispatchMode` around each call;
on CPU a call returns when its work is done) and summed by operator, batched products broken down
by the shapes and strides of their operands. torch.profiler's per-operator figures overstate
small operations several times at these sizes; these timers add little inside a call, so the
calls of a MOSEI step sum to within a few per cent of a plain step (for MOSI's many small calls,
about 20 % above it: compare the two totals printed first).
Inputs are those of ``benchmarks/speed.py`` (random tensors of MOSI / MOSEI shape, the published
configuration, the protocol stage).

Usage: python benchmarks/op_time.py [--case mosei:1] [--steps 3] [--threads 2] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PRODUCTS = ("bmm", "baddbmm", "mm", "addmm", "matmul")


def _key(func, args: tuple) -> tuple[str, str]:
    """(operator, detail): products carry their operands' shapes and strides."""
    name = func.__name__.split(".")[0]
    if name not in PRODUCTS:
        return name, ""
    operands = [a for a in args if isinstance(a, torch.Tensor) and a.dim() > 1]
    return name, " ".join(f"{tuple(a.shape)}/{tuple(a.stride())}" for a in operands)


class _Timer(TorchDispatchMode):
    """Seconds and calls per (operator, detail) of everything dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple[str, str], float] = collections.defaultdict(float)
        self.calls: dict[tuple[str, str], int] = collections.defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        elapsed = time.perf_counter() - start
        key = _key(func, args)
        self.seconds[key] += elapsed
        self.calls[key] += 1
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="mosei:1", help="dataset:kept, as in speed.py")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="rows of each table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import BATCH, timed, training_setup

    dataset, kept = args.case.split(":")
    _, train_step = training_setup(dataset, int(kept), torch.device("cpu"))

    plain = timed(train_step, args.steps, torch.device("cpu"))  # after two warm-up steps
    timer = _Timer()
    with timer:
        for _ in range(args.steps):
            train_step()
    per_step = {k: 1000 * s / args.steps for k, s in timer.seconds.items()}
    by_operator: dict[str, float] = collections.defaultdict(float)
    for (name, _), ms in per_step.items():
        by_operator["products" if name in PRODUCTS else name] += ms
    total = sum(per_step.values())
    print(
        f"{args.case}, batch {BATCH[dataset]}, {args.threads} threads: plain step "
        f"{1000 * plain:.1f} ms (median of {args.steps}); inside its ATen calls {total:.1f} ms"
    )
    print(f"\n{'ms/step':>8s}  operator")
    for name, ms in sorted(by_operator.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{ms:8.2f}  {name}")
    print(f"\n{'ms/step':>8s}  {'calls':>5s}  product: operands (shape/strides)")
    products = [(ms, k) for k, ms in per_step.items() if k[0] in PRODUCTS]
    for ms, (name, detail) in sorted(products, reverse=True)[: args.top]:
        calls = timer.calls[(name, detail)] // args.steps
        print(f"{ms:8.2f}  {calls:5d}  {name} {detail}")


if __name__ == "__main__":
    main()
