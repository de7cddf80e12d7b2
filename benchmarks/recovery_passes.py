"""The padded recovery pass against one pass per set of samples, alternating in one process.

Under a random protocol the samples of a batch miss different modalities; `recovery_passes`
(`dicmor.models.recovery`) then runs one padded pass where `PADDED_PASS_MAX_EXTRA` allows it.
This times DiCMoR training steps (forward, backward, clipping, Adam) on ``benchmarks/speed.py``'s
eight random-protocol batches with the cut as it is and with no padded pass (the cut at -1), the
two alternating round by round, and prints the medians per step and of the round-by-round
ratios. With ``--per-batch``, each batch alone (its missing counts and the samples a padded pass
adds), forward and backward, padded whatever the padding costs against no padded pass: the
measurements the cut is chosen from. With ``--epoch``, one epoch of MOSI's protocol stage on a
generated MMSA file (``benchmarks/epoch_time.py``'s), each way, ``--rounds`` times.

Usage: python benchmarks/recovery_passes.py [--dataset mosi] [--rounds 10] [--per-batch]
       python benchmarks/recovery_passes.py --epoch [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import dicmor.models.recovery as recovery

NO_PADDED_PASS = -1
ALWAYS_PADDED = 10**6


def _alternating(run, rounds: int, cut: int | None = None) -> dict[int, list[float]]:
    """Seconds of ``run()`` with the cut at ``cut`` (as it is: None) and with no padded pass,
    alternating."""
    kept = recovery.PADDED_PASS_MAX_EXTRA
    cut = kept if cut is None else cut
    seconds: dict[int, list[float]] = {cut: [], NO_PADDED_PASS: []}
    try:
        for i in range(rounds):
            for value in (cut, NO_PADDED_PASS) if i % 2 == 0 else (NO_PADDED_PASS, cut):
                recovery.PADDED_PASS_MAX_EXTRA = value
                start = time.perf_counter()
                run()
                seconds[value].append(time.perf_counter() - start)
    finally:
        recovery.PADDED_PASS_MAX_EXTRA = kept
    return seconds


def _report(label: str, seconds: dict[int, list[float]], per: int = 1, unit: str = "ms") -> None:
    cut = next(value for value in seconds if value != NO_PADDED_PASS)
    name = "padded" if cut == ALWAYS_PADDED else f"padded (cut {cut})"
    scale = 1000 if unit == "ms" else 1
    ratios = [a / b for a, b in zip(seconds[NO_PADDED_PASS], seconds[cut], strict=True)]
    print(
        f"{label}: one pass per set {scale * statistics.median(seconds[NO_PADDED_PASS]) / per:.1f}"
        f" {unit}, {name} {scale * statistics.median(seconds[cut]) / per:.1f} {unit};"
        f" median ratio {statistics.median(ratios):.3f} over {len(ratios)} rounds"
    )


def steps(args: argparse.Namespace) -> None:
    from speed import BATCH, RANDOM_BATCHES, SHAPES, make_batch, training_setup

    cpu = torch.device("cpu")
    model, train_step = training_setup(args.dataset, "r", cpu)
    train_step()  # warm-up
    if not args.per_batch:
        seconds = _alternating(train_step, args.rounds)
        label = f"{args.dataset}, {RANDOM_BATCHES} random batches, per step"
        _report(label, seconds, RANDOM_BATCHES)
        return

    def forward_backward(batch: dict) -> None:
        model.train()
        losses = model.loss(model(batch), batch)
        model.zero_grad(set_to_none=True)
        losses["total"].backward()

    for seed in range(RANDOM_BATCHES):
        batch = make_batch(SHAPES[args.dataset], BATCH[args.dataset], "r", cpu, seed=seed)
        missing = (~batch["available"]).sum(dim=0)
        counts = missing[missing > 0]
        extra = int(len(counts) * counts.max() - counts.sum()) if len(counts) else 0
        passes = len(recovery.missing_subsets(batch["available"]))
        forward_backward(batch)
        seconds = _alternating(lambda b=batch: forward_backward(b), args.rounds, ALWAYS_PADDED)
        _report(
            f"{args.dataset} missing {missing.tolist()}, {passes} sets, {extra} padded", seconds
        )


def epoch(args: argparse.Namespace) -> None:
    from epoch_time import generated_data

    from dicmor.config import load_config
    from dicmor.missing.protocols import make_masks
    from dicmor.models.base import DataInfo
    from dicmor.registry import build_model
    from dicmor.training.stages import fit_stage

    data = generated_data("mosi")
    config = load_config("mosi", {"model.method": "dicmor", "train.progress": False})
    presents = {s: split.present for s, split in data.splits.items()}
    masks = make_masks(config.missing, presents, data.modality_names, config.train.seed)

    def one_epoch() -> None:
        torch.manual_seed(config.train.seed)
        model = build_model(DataInfo.from_dataset(data), config.model)
        stages = model.stages()
        for stage in stages:
            model.begin_stage(stage)
        stage = replace(stages[-1], max_epochs=1)
        fit_stage(model, stage, data, masks, config, torch.device("cpu"))

    seconds = _alternating(one_epoch, args.rounds)
    _report(f"mosi, one epoch of the protocol stage ({config.missing})", seconds, unit="s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mosi", choices=("mosi", "mosei"))
    parser.add_argument("--rounds", type=int, help="rounds (10; 2 with --epoch)")
    parser.add_argument("--per-batch", action="store_true")
    parser.add_argument("--epoch", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.epoch:
        args.rounds = args.rounds or 2
        epoch(args)
    else:
        args.rounds = args.rounds or 10
        steps(args)


if __name__ == "__main__":
    main()
