"""The one in-memory form of a multimodal dataset, shared by every format and method.

A dataset has named modalities and three splits (``train``, ``valid``, ``test``). Each split
holds, per modality, a float32 array ``(N, T, D)`` (vector modalities are stored as ``T = 1``),
the labels ``(N,)``, the sample ids ``(N,)`` and a presence mask ``(N, M)`` that marks entries
the dataset itself lacks (``False`` = genuinely missing). Extra per-sample arrays that a method
may use (for example the ``text_bert`` tokens of MMSA files) live in ``extras``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from dicmor.errors import InputError

SPLITS: tuple[str, ...] = ("train", "valid", "test")
Task = Literal["regression", "classification"]


class DataError(InputError):
    """A dataset file or array is malformed; the message names the file, split, key and problem."""


@dataclass
class Split:
    """One split of a dataset.

    Attributes:
        modalities: name -> float32 array ``(N, T, D)``; absent entries hold zeros.
        labels: ``(N,)`` float32 (regression) or int64 (classification).
        ids: ``(N,)`` array of str.
        present: ``(N, M)`` bool, columns in the order of ``modalities``.
        extras: name -> array with leading dimension N (e.g. ``text_bert`` ``(N, 3, T)``).
    """

    modalities: dict[str, np.ndarray]
    labels: np.ndarray
    ids: np.ndarray
    present: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> Split:
        """The samples at ``index`` (an integer array), in that order."""
        return Split(
            modalities={k: v[index] for k, v in self.modalities.items()},
            labels=self.labels[index],
            ids=self.ids[index],
            present=self.present[index],
            extras={k: v[index] for k, v in self.extras.items()},
        )


@dataclass
class MultimodalDataset:
    """A dataset with named modalities and the three splits.

    Attributes:
        name: a short name used in run directories and reports.
        task: ``"regression"`` or ``"classification"``.
        num_classes: number of classes for classification, ``None`` for regression.
        modality_names: the modality order used by every ``present``/``available`` mask.
        splits: ``{"train": Split, "valid": Split, "test": Split}``.
        source: the file or name it was loaded from (used in error messages).
        notes: things the loader changed, e.g. the number of non-finite values replaced by 0.
    """

    name: str
    task: Task
    num_classes: int | None
    modality_names: tuple[str, ...]
    splits: dict[str, Split]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def feature_dims(self) -> dict[str, int]:
        """Feature dimension D of each modality."""
        split = self.splits["train"]
        return {m: int(split.modalities[m].shape[2]) for m in self.modality_names}

    @property
    def seq_lens(self) -> dict[str, int]:
        """Sequence length T of each modality."""
        split = self.splits["train"]
        return {m: int(split.modalities[m].shape[1]) for m in self.modality_names}

    def select(self, modalities: list[str] | tuple[str, ...]) -> MultimodalDataset:
        """A dataset restricted to ``modalities`` (in that order)."""
        unknown = [m for m in modalities if m not in self.modality_names]
        if unknown:
            raise DataError(
                f"{self.source or self.name}: unknown modalities {unknown}; "
                f"available: {list(self.modality_names)}"
            )
        if len(modalities) < 2:
            raise DataError(f"{self.source or self.name}: choose at least two modalities")
        columns = [self.modality_names.index(m) for m in modalities]
        splits = {
            name: Split(
                modalities={m: split.modalities[m] for m in modalities},
                labels=split.labels,
                ids=split.ids,
                present=split.present[:, columns],
                extras=split.extras,
            )
            for name, split in self.splits.items()
        }
        return MultimodalDataset(
            self.name,
            self.task,
            self.num_classes,
            tuple(modalities),
            splits,
            self.source,
            list(self.notes),
        )


def validate(dataset: MultimodalDataset) -> None:
    """Check every structural invariant; raise :class:`DataError` naming what is wrong."""
    where = dataset.source or dataset.name
    if dataset.task not in ("regression", "classification"):
        raise DataError(f"{where}: task must be regression or classification, got {dataset.task}")
    if len(dataset.modality_names) < 2:
        raise DataError(f"{where}: a multimodal dataset needs at least two modalities")
    missing_splits = [s for s in SPLITS if s not in dataset.splits]
    if missing_splits:
        raise DataError(f"{where}: missing splits {missing_splits}")
    dims: dict[str, tuple[int, int]] = {}
    for split_name in SPLITS:
        split = dataset.splits[split_name]
        n = len(split)
        if n == 0:
            raise DataError(f"{where}: split '{split_name}' is empty")
        if split.labels.ndim != 1:
            raise DataError(
                f"{where}: {split_name}/label must have shape (N,), got {split.labels.shape}"
            )
        if not np.all(np.isfinite(split.labels.astype(np.float64))):
            raise DataError(f"{where}: {split_name}/label contains NaN or infinite values")
        if dataset.task == "classification":
            if split.labels.dtype != np.int64:
                raise DataError(f"{where}: {split_name}/label must be int64 for classification")
            if dataset.num_classes is None:
                raise DataError(f"{where}: a classification dataset needs num_classes")
            if split.labels.min() < 0 or split.labels.max() >= dataset.num_classes:
                raise DataError(
                    f"{where}: {split_name}/label values must lie in [0, {dataset.num_classes}), "
                    f"got [{split.labels.min()}, {split.labels.max()}]"
                )
        elif split.labels.dtype != np.float32:
            raise DataError(f"{where}: {split_name}/label must be float32 for regression")
        if split.ids.shape != (n,):
            raise DataError(
                f"{where}: {split_name}/id has shape {split.ids.shape}, expected ({n},)"
            )
        if split.present.shape != (n, len(dataset.modality_names)) or split.present.dtype != bool:
            raise DataError(
                f"{where}: {split_name}/present must be bool of shape "
                f"({n}, {len(dataset.modality_names)}), "
                f"got {split.present.dtype} {split.present.shape}"
            )
        if list(split.modalities) != list(dataset.modality_names):
            raise DataError(
                f"{where}: {split_name} has modalities {list(split.modalities)}, "
                f"expected {list(dataset.modality_names)}"
            )
        for m, array in split.modalities.items():
            if array.ndim != 3 or array.shape[0] != n:
                raise DataError(
                    f"{where}: {split_name}/{m} must have shape ({n}, T, D), got {array.shape}"
                )
            if array.dtype != np.float32:
                raise DataError(f"{where}: {split_name}/{m} must be float32, got {array.dtype}")
            if m in dims and dims[m] != array.shape[1:]:
                raise DataError(
                    f"{where}: {split_name}/{m} has (T, D) = {array.shape[1:]}, "
                    f"but other splits have {dims[m]}"
                )
            dims[m] = array.shape[1:]
        for key, array in split.extras.items():
            if array.shape[0] != n:
                raise DataError(
                    f"{where}: {split_name}/{key} has {array.shape[0]} rows, expected {n}"
                )
