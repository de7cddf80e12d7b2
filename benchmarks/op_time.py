"""Where a DiCMoR training step spends its time, operator by operator, without the profiler.

Every ATen call of a training step is timed on its own (a `TorchDispatchMode` around each call;
on CPU a call returns when its work is done) and summed by operator, batched products broken down
by the shapes and strides of their operands. torch.profiler's per-operator figures overstate
small operations several times at these sizes; these timers add little inside a call, so the
calls of a MOSEI step sum to within a few per cent of a plain step (for MOSI's many small calls,
about 20 % above it: compare the two totals printed first).
Inputs are those of ``benchmarks/speed.py`` (random tensors of MOSI / MOSEI shape, the published
configuration, the protocol stage).

With ``--inference``, the batch-1 traced forward instead (what ``predict(fast=True)`` runs for
one clip): PyTorch's static runtime times each node of that graph itself, so the figures are the
graph's own, by node kind, with the forward's arithmetic (FLOPs of its products) and the rate the
products reach; then the size of the graph's weights and the products of one forward replayed in
order, once with their own operands and once with one operand set per shape, whose difference is
what reading the weights from memory, not cache, costs.

Usage: python benchmarks/op_time.py [--case mosei:1] [--steps 3] [--threads 2] [--top 25]
                                   [--precision float32|bfloat16] [--batch 16]
       python benchmarks/op_time.py --inference [--case mosi:1] [--steps 100]
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
    parser.add_argument(
        "--steps", type=int, help="timed steps after 2 warm-up (3; with --inference, 100 calls)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="rows of each table")
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the training step's arithmetic (train.precision)",
    )
    parser.add_argument("--batch", type=int, help="clips a batch (speed.py's for the dataset)")
    parser.add_argument(
        "--inference", action="store_true", help="the batch-1 traced forward instead of a step"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import BATCH, parse_kept, timed, training_setup

    if args.inference:
        inference(args, args.steps or 100)
        return
    args.steps = args.steps or 3
    dataset, kept = args.case.split(":")
    batch = args.batch or BATCH[dataset]
    _, train_step = training_setup(
        dataset, parse_kept(kept), torch.device("cpu"), args.precision, batch
    )

    # After two warm-up calls; a call of an ``r`` case takes a step on each of several batches.
    plain = timed(train_step, args.steps, torch.device("cpu")) / train_step.steps
    timer = _Timer()
    with timer:
        for _ in range(args.steps):
            train_step()
    steps = args.steps * train_step.steps
    per_step = {k: 1000 * s / steps for k, s in timer.seconds.items()}
    by_operator: dict[str, float] = collections.defaultdict(float)
    for (name, _), ms in per_step.items():
        by_operator["products" if name in PRODUCTS else name] += ms
    total = sum(per_step.values())
    print(
        f"{args.case}, batch {batch}, {args.threads} threads, {args.precision}: "
        f"plain step {1000 * plain:.1f} ms (median of {args.steps}); "
        f"inside its ATen calls {total:.1f} ms"
    )
    print(f"\n{'ms/step':>8s}  operator")
    for name, ms in sorted(by_operator.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{ms:8.2f}  {name}")
    print(f"\n{'ms/step':>8s}  {'calls':>5s}  product: operands (shape/strides)")
    products = [(ms, k) for k, ms in per_step.items() if k[0] in PRODUCTS]
    for ms, (name, detail) in sorted(products, reverse=True)[: args.top]:
        calls = timer.calls[(name, detail)] // steps
        print(f"{ms:8.2f}  {calls:5d}  {name} {detail}")


def inference(args: argparse.Namespace, calls: int) -> None:
    """Node kinds of the batch-1 traced forward, timed by its static runtime over ``calls``."""
    from speed import SHAPES, make_batch, parse_kept, training_setup
    from torch.utils.flop_counter import FlopCounterMode

    from dicmor.traced import TracedForward

    dataset, kept = args.case.split(":")
    cpu = torch.device("cpu")
    model, _ = training_setup(dataset, parse_kept(kept), cpu)
    model.eval()
    batch = make_batch(SHAPES[dataset], 1, parse_kept(kept), cpu)
    with torch.no_grad():
        model(batch)  # builds what the model keeps between eval calls (the flows' maps)
        with FlopCounterMode(display=False) as flops:
            model(batch)
    traced = TracedForward(model)
    traced(batch)
    (graph,) = traced._graphs.values()  # the one graph this batch's signature built
    if graph is None or graph.static is None:
        raise SystemExit(f"{args.case}: this batch-1 graph does not run in the static runtime")
    inputs = [batch["available"], *(batch["inputs"][m] for m in model.info.modality_names)]
    metrics = graph.static.benchmark_individual_ops(inputs, {}, 10, calls)
    seconds = {k: ms / 1000 for k, ms in metrics.time_per_node_type.items()}
    products = sum(s for k, s in seconds.items() if k.split("::")[-1] in (*PRODUCTS, "linear"))
    gflop = flops.get_total_flops() / 1e9
    print(
        f"{args.case}, batch 1, {args.threads} threads: traced forward in the static runtime "
        f"{metrics.total_time:.2f} ms (mean of {calls}), {metrics.total_nodes_count} "
        f"nodes; {gflop:.3f} GFLOP, products {1000 * products:.2f} ms "
        f"({gflop / products:.0f} GFLOP/s)"
    )
    print(f"\n{'ms':>8s}  {'nodes':>5s}  node kind")
    for kind, s in sorted(seconds.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{1000 * s:8.3f}  {metrics.instances_per_node_type[kind]:5d}  {kind}")

    constants = {}
    for node in graph.frozen.graph.findAllNodes("prim::Constant"):
        value = node.output().toIValue()
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            constants[storage.data_ptr()] = storage.nbytes()
    sequence = _products_in_order(model, batch)
    first: dict[str, tuple] = {}
    for call in sequence:
        first.setdefault(call[0], call)
    own, hot = _replayed(sequence, calls), _replayed([first[c[0]] for c in sequence], calls)
    print(
        f"\nthe graph's constants (weights, folded): {sum(constants.values()) / 2**20:.1f} MiB; "
        f"its {len(sequence)} products replayed in order, min of {calls}: {1000 * own:.2f} ms "
        f"with their own operands, {1000 * hot:.2f} ms with one operand set per shape "
        f"({len(first)} shapes, operands staying in cache)"
    )


def _products_in_order(model: torch.nn.Module, batch: dict) -> list[tuple]:
    """(shape key, operator, arguments) of every product of an eval forward without gradient,
    in order, the operands kept (so that a replay reads the memory the forward read)."""
    sequence = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in PRODUCTS:
                sequence.append((" ".join(_key(func, args)), func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Recorder():
        model(batch)
    return sequence


def _replayed(sequence: list[tuple], calls: int) -> float:
    """Least seconds of one pass over ``sequence``'s products, of ``calls`` passes."""
    best = float("inf")
    with torch.no_grad():
        for i in range(calls + 5):
            start = time.perf_counter()
            for _, func, args, kwargs in sequence:
                func(*args, **kwargs)
            if i >= 5:
                best = min(best, time.perf_counter() - start)
    return best


if __name__ == "__main__":
    main()
