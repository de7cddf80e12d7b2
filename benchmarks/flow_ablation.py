"""Do DiCMoR's flows carry the recovery? The ablation of SPEC §5 on data where recovery can help.

Every variant trains and tests on the same masks per (protocol, seed): zero-fill, zero-fill on
DiCMoR's schedule, deterministic cross-modal regression, DiCMoR with untrained (identity) flows,
DiCMoR, and DiCMoR with each training option of ``model.dicmor`` / ``train`` switched on. It
prints, per protocol, mean ± std over seeds of the task metrics and, for the recovering methods,
of the distribution gaps of the test split's recovered entries to the real features (in the
model's shallow-feature space, averaged over modalities): per-class MMD (Gaussian kernels at 0.5,
1 and 2 times the median pairwise distance), Fréchet distance and MSE, each also for zeros.

The data are generated with shared sample-level factors (each modality sees part of them), so
that one modality's features say something about another's beyond the class:

- ``--data classification``: 400 samples of three modalities (4 steps × 16 features), 6 classes
  (the learning test's shapes and classes; ``--shared-signal 2`` gives its data), with the
  ``tiny`` preset by default;
- ``--data mosi``: an MMSA ``aligned_50.pkl`` of CMU-MOSI's shape (1284 / 229 / 686 samples,
  768 / 5 / 20 features, regression labels), with the ``mosi`` preset by default.

Usage:
    python benchmarks/flow_ablation.py --data classification --seeds 1 2 3 4 5
    python benchmarks/flow_ablation.py --data mosi --protocols random:0.3 random:0.5 \\
        legacy-batch:0.7 --seeds 1111 1112 1113 --set train.max_epochs=10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dicmor.config import load_config, parse_override
from dicmor.data import load_dataset
from dicmor.data.dataset import MultimodalDataset
from dicmor.data.synthetic import make_classification_dataset, write_mmsa_pickle
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import MissingProtocol, make_masks
from dicmor.reporting.gaps import distribution_gaps

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "zero_fill": ("zero_fill", {}),
    "zero_fill_pretrained": ("zero_fill_pretrained", {}),
    "cross_regression": ("cross_regression", {}),
    "dicmor_untrained_flows": ("dicmor", {"model.dicmor.train_flows": False}),
    "dicmor": ("dicmor", {}),
    "untrained_flows_alone": (
        "dicmor",
        {"model.dicmor.train_flows": False, "model.dicmor.refine": False},
    ),
    "flows_alone": ("dicmor", {"model.dicmor.refine": False}),
    "+redraw": ("dicmor", {"train.redraw_masks": True}),
    "+stage1_recovery": ("dicmor", {"model.recovery.stage1_recovery_rate": 0.5}),
    "+flow_stage": ("dicmor", {"model.dicmor.flow_stage_epochs": 20}),
    "+dequantize": ("dicmor", {"model.dicmor.dequantize": 0.05}),
    "+moment_matched": ("dicmor", {"model.dicmor.transfer": "moment-matched"}),
    "+through_flows": ("dicmor", {"model.dicmor.recovery_trains_flows": True}),
    "+align": ("dicmor", {"model.dicmor.align_weight": 1.0}),
    "+align10": ("dicmor", {"model.dicmor.align_weight": 10.0}),
    "+align+through_flows": (
        "dicmor",
        {"model.dicmor.align_weight": 1.0, "model.dicmor.recovery_trains_flows": True},
    ),
    "+align+flow_stage": (
        "dicmor",
        {"model.dicmor.align_weight": 1.0, "model.dicmor.flow_stage_epochs": 20},
    ),
}
"""Name → (method, overrides). ``+option`` is DiCMoR with that one option on; ``*_alone``,
DiCMoR without the refinement network, the decoded transfer being the recovery."""

DEFAULT_VARIANTS = (
    "zero_fill",
    "zero_fill_pretrained",
    "cross_regression",
    "dicmor_untrained_flows",
    "dicmor",
)
GAP_COLUMNS = ("class_mmd", "frechet", "mse")


def make_data(
    kind: str, folder: Path, seed: int, factors: int, shared_signal: float
) -> MultimodalDataset:
    """The generated dataset of ``--data``."""
    if kind == "classification":
        shapes = {"a": (4, 16), "b": (4, 16), "c": (4, 16)}
        return make_classification_dataset(
            400,
            num_classes=6,
            modalities=shapes,
            seed=seed,
            signal=2.0,
            shared_factors=factors,
            shared_signal=shared_signal,
        )
    path = write_mmsa_pickle(
        folder / "aligned_50.pkl",
        n_train=1284,
        n_valid=229,
        n_test=686,
        seed=seed,
        shared_factors=factors,
        shared_signal=shared_signal,
    )
    return load_dataset(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["classification", "mosi"], default="classification")
    parser.add_argument("--preset", help="config preset (default: tiny, or mosi for --data mosi)")
    parser.add_argument("--protocols", nargs="+", default=["random:0.5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--factors", type=int, default=8, help="shared factors of the data")
    parser.add_argument(
        "--shared-signal", type=float, default=1.0, help="scale of the shared factors' trace"
    )
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-points", type=int, default=2000, help="points per distribution comparison"
    )
    parser.add_argument("--out", help="write every run's numbers to this JSON file")
    args = parser.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown} (known: {list(VARIANTS)})")
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="flow-ablation-"))
    data = make_data(args.data, folder, args.data_seed, args.factors, args.shared_signal)
    preset = args.preset or ("tiny" if args.data == "classification" else "mosi")
    common = dict(parse_override(text) for text in args.set)
    common.update({"train.progress": False, "train.num_threads": args.threads})
    if args.data == "classification":
        # The learning test's settings on the tiny model.
        common = {
            "model.kernel_size": 2,
            "model.recovery.reconstruction_weight": 10.0,
            "train.batch_size": 32,
            "train.lr": 3e-3,
            "train.max_epochs": 8,
            **common,
        }
    base = load_config(preset, common)
    names = data.modality_names
    presents = {s: split.present for s, split in data.splits.items()}
    records = []
    for text in args.protocols:
        protocol = MissingProtocol.from_string(text, batch_size=base.train.batch_size)
        for seed in args.seeds:
            masks = make_masks(protocol, presents, names, seed)
            for variant in args.variants:
                method, overrides = VARIANTS[variant]
                changes = {
                    **overrides,
                    "model.method": method,
                    "train.seed": seed,
                    "output_dir": str(folder / "runs"),
                }
                if method == "zero_fill":
                    # One stage: the epochs the two-stage methods have in both.
                    changes["train.max_epochs"] = 2 * base.train.max_epochs
                config = dataclasses.replace(base.replace(**changes), missing=protocol)
                start = time.perf_counter()
                result = run_experiment(config, dataset=data, masks=masks, log=lambda _: None)
                record: dict[str, Any] = {
                    "protocol": str(protocol),
                    "seed": seed,
                    "variant": variant,
                    "metrics": result.metrics,
                    "seconds": time.perf_counter() - start,
                    "history": {k: v.history for k, v in result.stages.items()},
                }
                if method in ("cross_regression", "dicmor"):
                    record["gaps"] = distribution_gaps(
                        result.model,
                        data.splits["test"],
                        names,
                        result.masks["test"],
                        task=data.task,
                        max_points=args.max_points,
                    )
                records.append(record)
                print(
                    f"{protocol} seed {seed} {variant}: "
                    + ", ".join(f"{k} {v:.3f}" for k, v in list(result.metrics.items())[:4])
                    + f" ({record['seconds']:.0f} s)",
                    flush=True,
                )
    print()
    print(report(records, data.task))
    if args.out:
        Path(args.out).write_text(json.dumps(records, indent=1))


def _mean_std(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        return f"{array.mean():.3f}"
    return f"{array.mean():.3f} ± {array.std(ddof=1):.3f}"


def report(records: list[dict[str, Any]], task: str) -> str:
    """A Markdown table per protocol: task metrics and distribution gaps, mean ± std."""
    metrics = ("acc2_non0", "f1_non0", "mae", "corr") if task == "regression" else ("acc",)
    lines = []
    for protocol in dict.fromkeys(r["protocol"] for r in records):
        rows = [r for r in records if r["protocol"] == protocol]
        header = ["variant", *metrics, *GAP_COLUMNS, *(f"{g} zeros" for g in GAP_COLUMNS)]
        lines += [f"\n{protocol}, {len({r['seed'] for r in rows})} seeds\n"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            chosen = [r for r in rows if r["variant"] == variant]
            cells = [variant]
            cells += [_mean_std([r["metrics"][k] for r in chosen]) for k in metrics]
            for suffix in ("", "_zero"):
                for key in GAP_COLUMNS:
                    if "gaps" not in chosen[0]:
                        cells.append("")
                        continue
                    per_seed = [
                        np.mean([g[key + suffix] for g in r["gaps"].values()]) for r in chosen
                    ]
                    cells.append(_mean_std(per_seed))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
