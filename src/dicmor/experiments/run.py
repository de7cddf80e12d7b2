"""One run end to end: data, masks, stages, test metrics, and everything written to its folder.

A run directory holds ``config.yaml`` (resolved), ``masks.npz`` (the availability masks of every
split), ``history.json`` (per-epoch losses of each stage), ``metrics.json`` (test metrics, read
once at the end, plus the code version and the run's wall time), ``recovered.npz`` (for
methods that recover features: the test split's recovered entries and the real ones, see
:func:`~dicmor.reporting.gaps.save_recovered`) and ``checkpoint.pt`` (weights, config and data
description, enough for ``dicmor evaluate`` and ``dicmor predict``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from dicmor.config import Config, to_dict
from dicmor.data import load_data
from dicmor.data.dataset import DataError, MultimodalDataset
from dicmor.evaluation.evaluate import evaluate
from dicmor.missing.protocols import make_masks, save_masks
from dicmor.models.base import DataInfo, MultimodalModel
from dicmor.provenance import code_version
from dicmor.registry import build_model
from dicmor.reporting.gaps import recovered_entries, save_recovered
from dicmor.training.checkpoints import save_checkpoint
from dicmor.training.loop import FitResult
from dicmor.training.stages import resolve_device, seed_everything, train_stages


@dataclass
class RunResult:
    """The outcome of :func:`run_experiment`."""

    run_dir: Path
    metrics: dict[str, float]
    stages: dict[str, FitResult]
    model: MultimodalModel
    masks: dict[str, np.ndarray]


def _new_run_dir(config: Config, dataset: MultimodalDataset, name: str | None) -> Path:
    label = name or "-".join(
        [
            time.strftime("%Y%m%d-%H%M%S"),
            dataset.name,
            config.model.method,
            str(config.missing).replace(" ", "").replace("=", ""),
            f"s{config.train.seed}",
        ]
    )
    base = Path(config.output_dir) / label
    run_dir, k = base, 1
    while run_dir.exists():
        k += 1
        run_dir = base.with_name(f"{base.name}-{k}")
    run_dir.mkdir(parents=True)
    return run_dir


def _checked_masks(
    masks: dict[str, np.ndarray], presents: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Given masks, one per split of the data's shape, limited to what the data has."""
    for split_name, present in presents.items():
        given = masks.get(split_name)
        if given is None or given.shape != present.shape:
            raise DataError(
                f"masks: split '{split_name}' needs a bool mask of shape {present.shape}, "
                f"got {None if given is None else given.shape}"
            )
    return {s: masks[s] & presents[s] for s in presents}


def run_experiment(
    config: Config,
    *,
    name: str | None = None,
    dataset: MultimodalDataset | None = None,
    masks: dict[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> RunResult:
    """Train ``config.model.method`` through its stages, then score the test split once.

    ``masks`` ({split: (N, M) bool}, e.g. another run's ``masks.npz``) replaces the masks the
    protocol would generate, so that several methods train and test on the same missing entries.
    """
    started = time.perf_counter()
    seed_everything(config.train.seed)
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    device = resolve_device(config.train.device)
    dataset = dataset if dataset is not None else load_data(config.data)
    for note in dataset.notes:
        log(f"data: {note}")
    names = dataset.modality_names
    presents = {s: split.present for s, split in dataset.splits.items()}
    if masks is None:
        masks = make_masks(config.missing, presents, names, config.train.seed)
    else:
        masks = _checked_masks(masks, presents)
    run_dir = _new_run_dir(config, dataset, name)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    save_masks(run_dir / "masks.npz", masks, names, config.missing, config.train.seed)

    model = build_model(DataInfo.from_dataset(dataset), config.model).to(device)
    # Training draws (dropout) start from the seed again, whatever the construction drew: methods
    # that differ only in modules the data never reach (recovery when nothing is missing) then
    # train identically.
    seed_everything(config.train.seed)
    stages = train_stages(model, dataset, masks, config, device, log)

    metrics, predictions = evaluate(
        model,
        dataset.splits["test"],
        names,
        masks["test"],
        batch_size=config.train.batch_size,
        device=device,
    )
    history = {k: {"best_epoch": v.best_epoch, "epochs": v.history} for k, v in stages.items()}
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    summary = {
        "metrics": metrics,
        "dataset": dataset.name,
        "method": config.model.method,
        "protocol": str(config.missing),
        "seed": config.train.seed,
        "version": code_version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=1))
    np.save(run_dir / "test_predictions.npy", predictions)
    if config.train.save_recovered and hasattr(model, "target_features"):
        entries = recovered_entries(
            model, dataset.splits["test"], names, masks["test"], task=dataset.task
        )
        save_recovered(run_dir / "recovered.npz", entries, masks["test"])
    save_checkpoint(run_dir / "checkpoint.pt", model, config)
    return RunResult(run_dir, metrics, stages, model, masks)
