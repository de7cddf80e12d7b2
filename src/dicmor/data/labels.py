"""Class indices for the class-conditional prior (SPEC §5.3)."""

from __future__ import annotations

import torch

SENTIMENT_CLASSES = 7


def sentiment_bins(y: torch.Tensor) -> torch.Tensor:
    """The 7 sentiment bins ``round(clip(y, -3, 3)) + 3`` in ``{0, ..., 6}``.

    Rounding is half-to-even (``torch.round``, like ``numpy.round`` in the Acc-7 metric), so a
    label of 0.5 falls in bin 0 (score 0) and 1.5 in bin 2 (score 2); bins and Acc-7 agree.

    y: (B,) float → (B,) long.
    """
    return (torch.round(torch.clamp(y, -3.0, 3.0)) + 3).long()


def prior_classes(y: torch.Tensor, task: str) -> torch.Tensor:
    """Class index of each sample: the label itself for classification, else its sentiment bin."""
    return y.long() if task == "classification" else sentiment_bins(y)
