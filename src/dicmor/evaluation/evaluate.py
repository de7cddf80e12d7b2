"""Evaluate a model on one split under one availability mask, or a trained run under several."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from dicmor.config import Config, ConfigError
from dicmor.data.batches import Batches
from dicmor.data.dataset import DataError, MultimodalDataset, Split
from dicmor.evaluation.metrics import classification_metrics, regression_metrics
from dicmor.missing.protocols import MissingProtocol, load_masks, make_masks
from dicmor.models.base import MultimodalModel
from dicmor.training.loop import predict


def score(predictions: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """The task's metric set for raw predictions ((N,) scores or (N, K) logits)."""
    if task == "regression":
        return regression_metrics(predictions, labels)
    return classification_metrics(predictions.argmax(axis=1), labels)


def evaluate(
    model: MultimodalModel,
    split: Split,
    modality_names: tuple[str, ...],
    available: np.ndarray,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and predictions (in split order) of ``model`` on ``split`` with only
    ``available`` entries, batched as the method batches."""
    batches = Batches(
        split, modality_names, available, batch_size, device=device, batching=model.batching()
    )
    predictions = predict(model, batches)
    return score(predictions, split.labels, model.info.task), predictions


def evaluation_masks(
    dataset: MultimodalDataset,
    config: Config,
    *,
    masks_path: str | None = None,
    missing: str | None = None,
    subsets: bool = False,
    seed: int | None = None,
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The settings to evaluate a run under, as ``[(label, {split: mask}), ...]``: the masks of
    ``masks_path``; or the protocol ``missing``; or, with ``subsets``, every non-empty subset of
    modalities kept (smallest first); by default the run's own protocol. Masks are drawn with
    ``seed`` (default: the run's)."""
    if sum(bool(option) for option in (masks_path, missing, subsets)) > 1:
        raise ConfigError("evaluate: give at most one of --missing, --masks and --subsets")
    names = dataset.modality_names
    if masks_path:
        masks, mask_names = load_masks(masks_path)
        if tuple(mask_names) != names:
            raise DataError(f"{masks_path}: masks are for modalities {mask_names}, not {names}")
        return [(f"masks {Path(masks_path).name}", masks)]
    if subsets:
        protocols = [
            MissingProtocol("fixed", keep=subset)
            for size in range(1, len(names) + 1)
            for subset in itertools.combinations(names, size)
        ]
    elif missing:
        protocols = [MissingProtocol.from_string(missing, batch_size=config.train.batch_size)]
    else:
        protocols = [config.missing]
    seed = seed if seed is not None else config.train.seed
    presents = {s: split.present for s, split in dataset.splits.items()}
    return [(str(p), make_masks(p, presents, names, seed)) for p in protocols]


def evaluate_run(
    model: MultimodalModel,
    config: Config,
    dataset: MultimodalDataset,
    settings: list[tuple[str, dict[str, np.ndarray]]],
    split: str,
    device: torch.device | str = "cpu",
) -> list[dict]:
    """One row ``{method, protocol, split, metrics}`` per setting of :func:`evaluation_masks`."""
    rows = []
    expected = dataset.splits[split].present.shape
    for label, masks in settings:
        if split not in masks:
            raise DataError(f"{label}: no mask for split '{split}'")
        if masks[split].shape != expected:
            raise DataError(
                f"{label}: split '{split}' has a mask of shape {masks[split].shape}, "
                f"the data needs {expected}"
            )
        metrics, _ = evaluate(
            model,
            dataset.splits[split],
            dataset.modality_names,
            masks[split],
            batch_size=config.train.batch_size,
            device=device,
        )
        rows.append(
            {"method": config.model.method, "protocol": label, "split": split, "metrics": metrics}
        )
    return rows
