"""Training steps in float32 and in bfloat16 (``train.precision``), alternating in one process.

For each case (``benchmarks/speed.py``'s: dataset and modalities kept, or ``r`` for eight
random-protocol batches), DiCMoR in its published configuration is built twice from one seed,
one trained in float32 and one under bfloat16 autocast; their training steps (forward, backward,
clipping, Adam) alternate round by round, and the medians per step and of the round-by-round
ratios are printed. On a shared machine only such in-process ratios hold.

Usage: python benchmarks/precision.py [--cases mosei:1 mosei:3] [--rounds 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

PRECISIONS = ("float32", "bfloat16")


def alternating(steps: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each of ``steps`` (name → callable), alternating which goes first."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from speed import CASES, parse_kept, training_setup

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; ms per training step, medians")
    for case in args.cases:
        dataset, kept = case.split(":")
        steps, per = {}, 1
        for precision in PRECISIONS:
            _, step = training_setup(dataset, parse_kept(kept), torch.device("cpu"), precision)
            step()  # warm-up: data-dependent initialisations, allocator
            steps[precision], per = step, step.steps
        seconds = alternating(steps, args.rounds)
        medians = {name: 1000 * statistics.median(s) / per for name, s in seconds.items()}
        ratios = [a / b for a, b in zip(seconds["float32"], seconds["bfloat16"], strict=True)]
        print(
            f"{case:8s} float32 {medians['float32']:7.1f}  bfloat16 {medians['bfloat16']:7.1f}"
            f"  median ratio {statistics.median(ratios):.2f}x over {args.rounds} rounds"
        )


if __name__ == "__main__":
    main()
