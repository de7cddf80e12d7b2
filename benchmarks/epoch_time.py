"""Wall time of one training epoch of a preset on a generated MMSA-shaped file.

Writes a synthetic file in the exact MMSA layout with the split sizes of CMU-MOSI (1284 / 229 /
686) or CMU-MOSEI, loads it like a real one, and times one epoch (training plus validation) of
each method's stages under the preset's missing protocol.

Usage: python benchmarks/epoch_time.py [--preset mosi] [--methods zero_fill dicmor]
                                       [--set train.concurrent_batches=2 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from dicmor.config import load_config
from dicmor.data import load_mmsa
from dicmor.data.synthetic import write_mmsa_pickle
from dicmor.missing.protocols import make_masks
from dicmor.models.base import DataInfo
from dicmor.registry import build_model
from dicmor.training.stages import fit_stage

SIZES = {
    "mosi": ((1284, 229, 686), {"text": 768, "audio": 5, "vision": 20}),
    "mosei": ((16326, 1871, 4659), {"text": 768, "audio": 74, "vision": 35}),
}


def generated_data(preset: str):
    """A generated file in the exact MMSA layout with ``preset``'s split sizes, loaded."""
    (n_train, n_valid, n_test), dims = SIZES[preset]
    with tempfile.TemporaryDirectory() as tmp:
        path = write_mmsa_pickle(
            Path(tmp) / "aligned_50.pkl",
            n_train=n_train,
            n_valid=n_valid,
            n_test=n_test,
            dims=dims,
        )
        return load_mmsa(path)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """A repeatable ``--set KEY=VALUE`` option (read by `parse_overrides`)."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (YAML value), as `dicmor train --set`",
    )


def parse_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """``--set KEY=VALUE`` items as dotted-key config overrides (values read as YAML)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mosi", choices=sorted(SIZES))
    parser.add_argument("--methods", nargs="+", default=["zero_fill", "dicmor"])
    parser.add_argument("--threads", type=int, default=2)
    add_overrides(parser)
    args = parser.parse_args()
    overrides = parse_overrides(parser, args.set)
    torch.set_num_threads(args.threads)
    (n_train, n_valid, _), _ = SIZES[args.preset]
    data = generated_data(args.preset)
    names = data.modality_names
    print(
        f"{args.preset}-shaped file: train {n_train}, valid {n_valid}; torch "
        f"{torch.__version__}, {args.threads} threads" + "".join(f", {item}" for item in args.set)
    )
    for method in args.methods:
        config = load_config(
            args.preset, {"model.method": method, "train.progress": False, **overrides}
        )
        presents = {s: split.present for s, split in data.splits.items()}
        masks = make_masks(config.missing, presents, names, config.train.seed)
        torch.manual_seed(config.train.seed)
        model = build_model(DataInfo.from_dataset(data), config.model)
        for stage in model.stages():
            model.begin_stage(stage)
            used = presents if stage.complete_data else masks
            # The stage as the method defines it (its batch size, optimiser, batching).
            start = time.perf_counter()
            fit_stage(model, replace(stage, max_epochs=1), data, used, config, torch.device("cpu"))
            seconds = time.perf_counter() - start
            protocol = "complete data" if stage.complete_data else str(config.missing)
            print(f"{method:12s} stage {stage.name:9s} ({protocol}): {seconds:6.1f} s per epoch")


if __name__ == "__main__":
    main()
