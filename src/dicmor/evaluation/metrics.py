"""Evaluation metrics: pure numpy functions of predictions and truths, never rounded.

Sentiment regression follows the multimodal sentiment analysis convention used by DiCMoR
(Wang, Cui & Li, ICCV 2023) and the papers it compares with, on scores y in [-3, 3]:

- Acc-2 / F1 (non-0): samples with y == 0 are dropped; p > 0 is compared with y > 0.
- Acc-2 / F1 (has-0): all samples; p >= 0 is compared with y >= 0.
- Acc-7: round(clip(p, -3, 3)) == round(clip(y, -3, 3)); Acc-5 likewise with clip ±2.
  Rounding is numpy's, half to even (np.round(0.5) == 0, np.round(1.5) == 2).
- MAE and Pearson correlation.

F1 is the support-weighted F1 of the two classes. Accuracies and F1 scores are fractions in
[0, 1]; converting to percentages and rounding belong to printing, so that averages over seeds
are taken of exact values.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from dicmor.data.dataset import Task

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "regression": (
        "acc2_non0",
        "f1_non0",
        "acc2_has0",
        "f1_has0",
        "acc7",
        "acc5",
        "mae",
        "corr",
    ),
    "classification": ("acc", "f1_macro", "f1_weighted"),
}
"""task -> metric keys in the order tables print them."""

PRIMARY_METRIC: dict[str, str] = {"regression": "acc2_non0", "classification": "acc"}
"""task -> the metric papers headline."""

metric_labels: dict[str, str] = {
    "acc2_non0": "Acc-2 (non-0)",
    "f1_non0": "F1 (non-0)",
    "acc2_has0": "Acc-2 (has-0)",
    "f1_has0": "F1 (has-0)",
    "acc7": "Acc-7",
    "acc5": "Acc-5",
    "mae": "MAE",
    "corr": "Corr",
    "acc": "Acc",
    "f1_macro": "F1 (macro)",
    "f1_weighted": "F1 (weighted)",
}
"""metric key -> printable label."""

PERCENT_METRICS: frozenset[str] = frozenset(
    {
        "acc2_non0",
        "f1_non0",
        "acc2_has0",
        "f1_has0",
        "acc7",
        "acc5",
        "acc",
        "f1_macro",
        "f1_weighted",
    }
)
"""Metrics returned as fractions that tables print as percentages (all but MAE and Corr)."""


class MetricError(ValueError):
    """Predictions or truths cannot be scored; the message says which and why."""


def _as_vector(values: np.ndarray, name: str) -> np.ndarray:
    """Accept ``(N,)`` or ``(N, 1)`` (a one-output head) and return a float64 ``(N,)``."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]  # (N,)
    if array.ndim != 1:
        raise MetricError(f"{name} must have shape (N,) or (N, 1), got {array.shape}")
    if array.size == 0:
        raise MetricError(f"{name} is empty")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise MetricError(f"{name} must be real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise MetricError(f"{name} contains NaN or infinite values")
    return array


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_vector(pred, "pred")
    y = _as_vector(truth, "truth")
    if p.shape != y.shape:
        raise MetricError(f"pred has {p.size} values but truth has {y.size}")
    return p, y


def pearson(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation of ``pred: (N,)`` and ``truth: (N,)``.

    Returns nan when either vector is constant (including N = 1): the correlation is undefined
    there, and nan keeps a collapsed model visible in tables instead of passing as "no
    correlation".
    """
    p, y = _pair(pred, truth)
    p = p - p.mean()
    y = y - y.mean()
    scale = np.sqrt(np.dot(p, p) * np.dot(y, y))
    if scale == 0.0:
        return float("nan")
    # Rounding can push |r| a hair past 1 for (anti)parallel vectors.
    return float(np.clip(np.dot(p, y) / scale, -1.0, 1.0))


def regression_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Sentiment regression metrics, keys as in ``METRIC_NAMES["regression"]``.

    Args:
        pred: ``(N,)`` or ``(N, 1)`` predicted scores.
        truth: ``(N,)`` or ``(N, 1)`` true scores in [-3, 3].

    Returns:
        Fractions in [0, 1] for the accuracies and F1 scores, MAE in label units, Pearson
        correlation (nan if a vector is constant). If every truth is 0 the non-0 metrics are nan.
    """
    p, y = _pair(pred, truth)
    nonzero = y != 0
    if nonzero.any():
        acc2_non0 = accuracy_score(y[nonzero] > 0, p[nonzero] > 0)
        f1_non0 = f1_score(y[nonzero] > 0, p[nonzero] > 0, average="weighted", zero_division=0)
    else:
        acc2_non0 = f1_non0 = float("nan")
    return {
        "acc2_non0": float(acc2_non0),
        "f1_non0": float(f1_non0),
        "acc2_has0": float(accuracy_score(y >= 0, p >= 0)),
        "f1_has0": float(f1_score(y >= 0, p >= 0, average="weighted", zero_division=0)),
        "acc7": float(np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3)))),
        "acc5": float(np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2)))),
        "mae": float(np.mean(np.abs(p - y))),
        "corr": pearson(p, y),
    }


def classification_metrics(pred_labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Classification metrics, keys as in ``METRIC_NAMES["classification"]``.

    Macro and weighted F1 average over the classes that occur in ``truth`` or ``pred_labels``;
    a class never predicted contributes F1 = 0.

    Args:
        pred_labels: ``(N,)`` predicted class indices.
        truth: ``(N,)`` true class indices.

    Returns:
        Fractions in [0, 1].
    """
    p, y = _pair(pred_labels, truth)
    for name, labels in (("pred_labels", p), ("truth", y)):
        if not np.all(labels == np.round(labels)):
            raise MetricError(f"{name} must hold integer class labels")
    p = p.astype(np.int64)
    y = y.astype(np.int64)
    return {
        "acc": float(accuracy_score(y, p)),
        "f1_macro": float(f1_score(y, p, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y, p, average="weighted", zero_division=0)),
    }


def compute_metrics(task: Task, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dispatch to :func:`regression_metrics` or :func:`classification_metrics` by ``task``."""
    if task == "regression":
        return regression_metrics(pred, truth)
    if task == "classification":
        return classification_metrics(pred, truth)
    raise MetricError(f"task must be 'regression' or 'classification', got {task!r}")
