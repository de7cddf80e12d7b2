"""Utterance-level views of sequences, shared by the baselines that work on vectors (DCCA, DCCAE,
GCNet): the field's baselines take one vector per modality and sample."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


def utterance_vectors(x: torch.Tensor) -> torch.Tensor:
    """``x: (B, T, D)`` → (B, D): the mean over the valid steps (those not all zero; padding and
    a missing modality are zeros), zeros for a sample with none."""
    valid = (x != 0).any(dim=2).to(x.dtype)  # (B, T)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (x * valid[..., None]).sum(dim=1) / count


def mlp(sizes: Sequence[int], *, batch_norm: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """Linear layers through ``sizes``, each hidden one followed by BatchNorm (if asked), ReLU
    and dropout; the last layer linear."""
    layers: list[nn.Module] = []
    for k, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if k < len(sizes) - 2:
            if batch_norm:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
