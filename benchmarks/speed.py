"""Training-step time, inference latency and peak memory of DiCMoR at the published sizes.

Each case runs in its own process so that peak resident memory is its own. Inputs are random
tensors of MOSI / MOSEI shape (T = 50; text 768, audio 5 / 74, vision 20 / 35); "kept" is the
number of available modalities (the others are recovered), or "r": each entry missing at random
(MR = 0.3, the batches of a random protocol, whose samples miss different modalities). Medians
over repeated passes.
Batch-1 inference is timed with the plain forward and with the traced one (`dicmor.traced`,
what ``predict(fast=True)`` runs).

Usage: python benchmarks/speed.py [--threads 2] [--repeats 5] [--device cpu]
                                  [--precision float32|bfloat16] [--batch N] [--window N]
       python benchmarks/speed.py --before COMMIT [--rounds 2]   (make bench BEFORE=COMMIT)

With ``--before`` every case runs with the code of that commit (a temporary git worktree) and
with this checkout's, alternating in one run, and the table gives before / after and the ratio.
``--precision`` is the training step's (``train.precision``, this checkout's code only: the code
of ``--before`` trains in float32); inference is always float32.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    "mosi": {"text": 768, "audio": 5, "vision": 20},
    "mosei": {"text": 768, "audio": 74, "vision": 35},
}
BATCH = {"mosi": 4, "mosei": 16}
CASES = [f"{dataset}:{kept}" for dataset in SHAPES for kept in ("1", "3", "r")]
RANDOM_RATE = 0.3
"""Missing rate of the ``r`` cases: each (sample, modality) entry missing with this probability,
redrawn for a sample left with none (the training batches of a random protocol)."""
RANDOM_BATCHES = 8
"""Batches of different patterns a training step of an ``r`` case is timed over (the mean)."""


def parse_kept(kept: str) -> int | str:
    """``1``, ``2``, … modalities kept by every sample, or ``r`` (random, `RANDOM_RATE`)."""
    return kept if kept == "r" else int(kept)


def _availability(batch: int, modalities: int, kept: int | str, seed: int) -> torch.Tensor:
    if kept != "r":
        available = torch.zeros(batch, modalities, dtype=torch.bool)
        available[:, :kept] = True
        return available
    generator = torch.Generator().manual_seed(1000 * seed + batch)
    available = torch.rand(batch, modalities, generator=generator) >= RANDOM_RATE
    while not bool(available.any(dim=1).all()):
        empty = ~available.any(dim=1)
        redrawn = torch.rand(int(empty.sum()), modalities, generator=generator) >= RANDOM_RATE
        available[empty] = redrawn
    return available


def make_batch(
    dims: dict[str, int], batch: int, kept: int | str, device: torch.device, seed: int = 0
) -> dict:
    """Random inputs of ``dims``' shape; ``kept`` modalities available (the first ones), or
    ``r``: each entry missing at random (its pattern drawn from ``seed``)."""
    names = tuple(dims)
    available = _availability(batch, len(names), kept, seed)
    inputs = {
        m: torch.randn(batch, 50, d) * available[:, j, None, None]
        for j, (m, d) in enumerate(dims.items())
    }
    return {
        "inputs": {m: x.to(device) for m, x in inputs.items()},
        "available": available.to(device),
        "present": torch.ones(batch, len(names), dtype=torch.bool, device=device),
        "label": (torch.rand(batch) * 6 - 3).to(device),
        "targets": {m: torch.randn(batch, 50, d, device=device) for m, d in dims.items()},
    }


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_setup(
    dataset: str,
    kept: int | str,
    device: torch.device,
    precision: str = "float32",
    batch: int | None = None,
    window: int = 1,
) -> tuple:
    """DiCMoR in its published configuration for ``dataset``, in its protocol stage, and one
    training step on a random batch with ``kept`` modalities available: (model, train_step).
    For ``r``, ``train_step`` takes one step on each of `RANDOM_BATCHES` batches of different
    patterns (``train_step.steps``). The forward and losses run in ``precision``, as the
    training loop runs them (`dicmor.nn.precision.autocast`). ``batch`` clips a batch
    (`BATCH`'s for the dataset unless given).

    With ``window`` > 1 the batches make accumulation windows of that many micro-batches
    (``train.grad_accum``; summed gradients clipped after each, one optimiser step a window),
    run at once as ``train.concurrent_batches: window`` runs them where the code has it
    (`dicmor.training.loop`), one after the other otherwise; ``train_step.steps`` counts the
    micro-batches."""
    import contextlib
    import functools

    from dicmor.config import load_config
    from dicmor.models.base import DataInfo
    from dicmor.registry import build_model

    torch.manual_seed(0)
    dims = SHAPES[dataset]
    info = DataInfo(tuple(dims), dims, dict.fromkeys(dims, 50), "regression", None)
    model = build_model(info, load_config(dataset).model).to(device)
    for stage in model.stages():
        model.begin_stage(stage)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=True)
    count = RANDOM_BATCHES if kept == "r" else 1
    count = window * -(-count // window)  # whole windows
    size = batch or BATCH[dataset]
    batches = [make_batch(dims, size, kept, device, seed=i) for i in range(count)]

    context = contextlib.nullcontext
    if precision != "float32":  # code from before the option has no `dicmor.nn.precision`
        from dicmor.nn.precision import autocast

        context = functools.partial(autocast, precision, device)

    concurrent = _concurrent_windows(model, params, precision, window, device)

    def train_step() -> None:
        model.train()
        for start in range(0, len(batches), window):
            optimizer.zero_grad(set_to_none=True)
            group = batches[start : start + window]
            if concurrent is not None:
                concurrent(group)
            else:
                for batch in group:
                    with context():
                        losses = model.loss(model(batch), batch)
                    losses["total"].backward()
                    torch.nn.utils.clip_grad_value_(params, 0.6, foreach=True)
            optimizer.step()

    train_step.steps = len(batches)
    return model, train_step


def _concurrent_windows(model, params: list, precision: str, window: int, device: torch.device):
    """``group -> None``: one accumulation window's micro-batches at once, as the training loop
    runs them; ``None`` for one at a time (a window of 1, or code without the option)."""
    if window == 1:
        return None
    try:
        from dicmor.training.loop import _concurrent
    except ImportError:  # code from before `train.concurrent_batches`
        return None
    import types

    from dicmor.config import TrainConfig

    config = TrainConfig(
        grad_accum=window, concurrent_batches=window, precision=precision, clip_value=0.6
    )
    split = types.SimpleNamespace(device=device, shard=None)

    def engine(batch: dict) -> tuple:
        losses = model.loss(model(batch), batch)
        return losses["total"], losses

    def run(group: list[dict]) -> None:
        chunk = list(enumerate(group, start=1))
        _concurrent(chunk, engine, params, config, split, "bench", 1, True)

    return run


def run_case(
    dataset: str,
    kept: int | str,
    repeats: int,
    device_name: str,
    precision: str = "float32",
    batch: int | None = None,
    window: int = 1,
) -> dict:
    device = torch.device(device_name)
    dims = SHAPES[dataset]
    batch = batch or BATCH[dataset]
    model, train_step = training_setup(dataset, kept, device, precision, batch, window)
    step = timed(train_step, repeats, device) / train_step.steps
    model.eval()
    latency = {}
    for size in (1, 32):
        small = make_batch(dims, size, kept, device)
        with torch.no_grad():
            latency[size] = timed(lambda b=small: model(b), repeats, device)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    traced_b1 = None
    try:
        from dicmor.traced import TracedForward
    except ImportError:  # code from before the traced inference path
        pass
    else:
        traced = TracedForward(model)
        small = make_batch(dims, 1, kept, device)
        traced_b1 = timed(lambda: traced(small), repeats, device)
        if traced.fallbacks:
            raise RuntimeError(f"traced forward fell back: {traced.fallbacks}")
    return {
        "dataset": dataset,
        "batch": batch,
        "kept": kept,
        "precision": precision,
        "train_step_ms": 1000 * step,
        "samples_per_s": batch / step,
        "infer_b1_ms": 1000 * latency[1],
        "infer_b32_ms": 1000 * latency[32],
        "infer_b1_traced_ms": None if traced_b1 is None else 1000 * traced_b1,
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "peak_rss_MiB": peak_mib,
        "cuda_peak_MiB": torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else None,
    }


def _case(
    case: str, args: argparse.Namespace, source: Path | None = None, precision: str = "float32"
) -> dict[str, float | str | None]:
    """One case measured in a process of its own, with the package at ``source`` (a ``src``
    folder) or the installed one, training in ``precision``."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--case", case, "--threads", str(args.threads)]
    command += ["--repeats", str(args.repeats), "--device", args.device]
    if precision != "float32":
        command += ["--precision", precision]
    if args.batch:
        command += ["--batch", str(args.batch)]
    if getattr(args, "window", 1) > 1:
        command += ["--window", str(args.window)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worktree(commit: str, folder: Path) -> Path:
    """A checkout of ``commit`` of this repository in ``folder``; its ``src`` folder."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", "--quiet", str(folder), commit],
        check=True,
    )
    return folder / "src"


COLUMNS = ("train_step_ms", "infer_b1_ms", "infer_b1_traced_ms", "infer_b32_ms", "peak_rss_MiB")
"""Peak memory is read before the traced forward is built. Code from before the traced path
has no traced figure; its plain batch-1 latency stands in, marked *."""


def compare(commit: str, args: argparse.Namespace) -> None:
    """Every case with the code of ``commit`` and with this checkout's, alternating, in one
    run (``--rounds`` times; the median of the rounds): only ratios measured side by side on
    a shared machine hold."""
    root = Path(__file__).resolve().parent.parent
    folder = Path(tempfile.mkdtemp(prefix="dicmor-before-")) / "tree"
    before_source = _worktree(commit, folder)
    after_source = root / "src"
    try:
        print(
            f"before: {commit} (float32); after: this checkout (training in {args.precision});"
            + (f" windows of {args.window} micro-batches;" if args.window > 1 else "")
            + f" {args.threads} threads, {args.device}"
        )
        header = "case          " + "  ".join(f"{c:>24s}" for c in COLUMNS)
        print(
            header
            + "\n"
            + " " * 14
            + "  ".join(f"{'before / after (ratio)':>24s}" for _ in COLUMNS)
        )
        for case in args.cases:
            dataset, kept = case.split(":")
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                runs["before"].append(_case(case, args, before_source))
                runs["after"].append(_case(case, args, after_source, args.precision))
            cells = []
            for column in COLUMNS:
                mark = ""
                if runs["before"][0].get(column) is None:  # no traced path before
                    column_before, mark = "infer_b1_ms", "*"
                else:
                    column_before = column
                old = statistics.median(r[column_before] for r in runs["before"])
                new = statistics.median(r[column] for r in runs["after"])
                cells.append(f"{old:7.1f}{mark:1s} / {new:7.1f} ({old / new:4.2f}x)")
            print(f"{dataset:6s} kept={kept}  " + "  ".join(f"{c:>24s}" for c in cells))
    finally:
        subprocess.run(
            ["git", "-C", str(root), "worktree", "remove", "--force", str(folder)], check=False
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--before", metavar="COMMIT", help="compare with the code of this commit, side by side"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --before comparisons")
    parser.add_argument(
        "--cases", nargs="+", default=CASES, choices=CASES, help="dataset:kept (default: all)"
    )
    parser.add_argument(
        "--precision",
        default="float32",
        choices=("float32", "bfloat16"),
        help="the training step's arithmetic (train.precision; this checkout's code only)",
    )
    parser.add_argument(
        "--batch", type=int, help="clips a training batch (default: the dataset's, BATCH)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=1,
        help="micro-batches a training step accumulates (one optimiser step), run at once "
        "(train.concurrent_batches) by code that has the option; the step time is per "
        "micro-batch",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        dataset, kept = args.case.split(":")
        result = run_case(
            dataset,
            parse_kept(kept),
            args.repeats,
            args.device,
            args.precision,
            args.batch,
            args.window,
        )
        print(json.dumps(result))
        return
    if args.before:
        compare(args.before, args)
        return
    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device},"
        f" training in {args.precision}"
        + (f", training batches of {args.batch}" if args.batch else "")
        + (f", windows of {args.window} micro-batches" if args.window > 1 else "")
    )
    header = (
        "case          step ms  samples/s  infer b1 ms  b1 traced ms  infer b32 ms  params M"
        "  peak MiB"
    )
    print(header)
    for case in args.cases:
        dataset, kept = case.split(":")
        r = _case(case, args, precision=args.precision)
        print(
            f"{dataset:6s} kept={kept}  {r['train_step_ms']:7.1f}  {r['samples_per_s']:9.1f}"
            f"  {r['infer_b1_ms']:11.1f}  {r['infer_b1_traced_ms']:12.1f}"
            f"  {r['infer_b32_ms']:12.1f}  {r['params_M']:8.2f}"
            f"  {r['peak_rss_MiB']:8.0f}"
        )


if __name__ == "__main__":
    main()
