"""A readable summary of a loaded dataset, for checking a file before training on it."""

from __future__ import annotations

import numpy as np

from dicmor.data.dataset import SPLITS, MultimodalDataset


def _label_lines(dataset: MultimodalDataset) -> list[str]:
    lines = []
    for s in SPLITS:
        labels = dataset.splits[s].labels
        if dataset.task == "regression":
            lines.append(
                f"  {s}: mean {labels.mean():.3f}, std {labels.std():.3f}, "
                f"min {labels.min():.3f}, max {labels.max():.3f}, "
                f"zero {np.mean(labels == 0):.1%}"
            )
        else:
            counts = np.bincount(labels, minlength=dataset.num_classes or 0)
            lines.append(f"  {s}: " + ", ".join(f"{c}: {k}" for c, k in enumerate(counts)))
    return lines


def _missing_lines(dataset: MultimodalDataset) -> list[str]:
    lines = []
    for s in SPLITS:
        split = dataset.splits[s]
        absent = (~split.present).sum(axis=0)
        if absent.any():
            counts = ", ".join(
                f"{m} {k} ({k / len(split):.1%})"
                for m, k in zip(dataset.modality_names, absent, strict=True)
            )
            lines.append(f"  {s}: {counts}")
    return lines or ["  none"]


def describe(dataset: MultimodalDataset) -> str:
    """A multi-line summary: source, task, modalities ``(T, D)``, split sizes, label statistics,
    genuinely missing entries per split and modality, and what the loader changed (notes)."""
    classes = f", {dataset.num_classes} classes" if dataset.task == "classification" else ""
    shapes = ", ".join(
        f"{m} (T={dataset.seq_lens[m]}, D={dataset.feature_dims[m]})"
        for m in dataset.modality_names
    )
    sizes = ", ".join(f"{s} {len(dataset.splits[s])}" for s in SPLITS)
    lines = [
        f"dataset: {dataset.name}",
        f"source: {dataset.source or '-'}",
        f"task: {dataset.task}{classes}",
        f"modalities: {shapes}",
        f"samples: {sizes}",
        "labels:" if dataset.task == "regression" else "labels (count per class):",
        *_label_lines(dataset),
        "genuinely missing entries:",
        *_missing_lines(dataset),
        "notes:",
        *([f"  {note}" for note in dataset.notes] or ["  none"]),
    ]
    return "\n".join(lines)
