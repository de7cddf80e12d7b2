"""What a DiCMoR training step costs per clip as its batch grows, alternating in one process.

A step's ATen calls are the same few thousand whatever the batch, so if their cost were per call
a larger batch would cost little more per step. This times training steps (forward, backward,
clipping, Adam; ``benchmarks/speed.py``'s inputs and published configuration, the protocol
stage) at each batch size, the sizes alternating round by round, and prints the median per step,
per the dataset's published batch of clips and the ratio of that to the first size's. Then, for
each size, one step under ``benchmarks/op_time.py``'s timer: its ATen calls, the time inside the
products and inside everything else (per published batch of clips).

Peak memory grows with the batch and is a process's own: measure it with
``python benchmarks/speed.py --cases mosei:1 --batch N``.

Usage: python benchmarks/batch_scaling.py [--case mosei:1] [--sizes 16 32 64] [--rounds 6]
                                          [--precision float32|bfloat16] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch


def per_clips(seconds: float, size: int, clips: int) -> float:
    """``seconds`` of a step on ``size`` clips, per ``clips`` clips."""
    return seconds * clips / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="mosei:1", help="dataset:kept, as in speed.py")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from op_time import PRODUCTS, _Timer
    from precision import alternating
    from speed import BATCH, parse_kept, training_setup

    dataset, kept = args.case.split(":")
    clips = BATCH[dataset]
    cpu = torch.device("cpu")
    steps = {}
    for size in args.sizes:
        _, steps[size] = training_setup(dataset, parse_kept(kept), cpu, args.precision, size)
        for _ in range(2):  # warm-up
            steps[size]()
    seconds = alternating(steps, args.rounds)
    first = statistics.median(seconds[args.sizes[0]]) * clips / args.sizes[0]
    print(
        f"{args.case}, {args.precision}, {args.threads} threads, medians of {args.rounds} "
        f"alternating rounds (ms; per {clips} clips, the published batch)"
    )
    for size in args.sizes:
        step = statistics.median(seconds[size]) / steps[size].steps
        clip_cost = per_clips(step, size, clips)
        timer = _Timer()
        with timer:
            steps[size]()
        calls = sum(timer.calls.values()) // steps[size].steps
        products = sum(s for (name, _), s in timer.seconds.items() if name in PRODUCTS)
        rest = sum(timer.seconds.values()) - products
        print(
            f"batch {size:4d}: step {1000 * step:8.1f}, per {clips} clips {1000 * clip_cost:7.1f}"
            f" ({first / clip_cost:.2f}x the batch of {args.sizes[0]}); {calls} ATen calls, "
            f"per {clips} clips products "
            f"{1000 * per_clips(products / steps[size].steps, size, clips):.1f}, "
            f"the rest {1000 * per_clips(rest / steps[size].steps, size, clips):.1f}"
        )


if __name__ == "__main__":
    main()
