"""Evaluate a model on one split under one availability mask."""

from __future__ import annotations

import numpy as np
import torch

from dicmor.data.batches import Batches
from dicmor.data.dataset import Split
from dicmor.evaluation.metrics import classification_metrics, regression_metrics
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
    """Metrics and predictions of ``model`` on ``split`` with only ``available`` entries."""
    batches = Batches(split, modality_names, available, batch_size, device=device)
    predictions = predict(model, batches)
    return score(predictions, split.labels, model.info.task), predictions
