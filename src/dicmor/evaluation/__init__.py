"""Evaluation: pure metric functions."""

from dicmor.evaluation.metrics import (
    METRIC_NAMES,
    PERCENT_METRICS,
    PRIMARY_METRIC,
    MetricError,
    classification_metrics,
    compute_metrics,
    metric_labels,
    pearson,
    regression_metrics,
)

__all__ = [
    "METRIC_NAMES",
    "PERCENT_METRICS",
    "PRIMARY_METRIC",
    "MetricError",
    "classification_metrics",
    "compute_metrics",
    "metric_labels",
    "pearson",
    "regression_metrics",
]
