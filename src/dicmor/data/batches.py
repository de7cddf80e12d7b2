"""Mini-batches of one split under one availability mask.

The missing values are zeroed here, batch by batch, before any model sees them: a batch's
``inputs`` hold only what is available. The real features travel separately as ``targets`` and
only when asked for (training losses use them as reconstruction targets; evaluation never builds
them).

The mask is fixed, or, for training under a protocol redrawn every epoch, given by a
``schedule``: a function of the epoch and of that epoch's sample order (the ``legacy-batch``
protocol lays its schedule over the batches in loader order) returning the epoch's mask.

Which samples make a batch is the epoch's order cut into consecutive runs, or what a method's
`Batching` sampler makes of that order (e.g. the segments of one video together); a batching
collate may then add to each batch (e.g. training-only targets).

A batch is a `Batch` dict:
    inputs:    {modality: (B, T, D) float}, zero where not available
    available: (B, M) bool, what the model may read
    present:   (B, M) bool, what the dataset really has (for losses)
    label:     (B,) float or long (not for prediction on unlabelled data)
    index:     (B,) long, row of each sample in the split
    targets:   {modality: (B, T, D)} real features (only with ``with_targets``)
    text_bert: (B, 3, T) tokens (only when the dataset has them), zero where text is missing
    target_text_bert: (B, 3, T) real tokens (only with ``with_targets``)
    simulated: (B, M) bool, a simulated mask within ``available`` (only with ``simulate``): a
               model may train its recovery on it while its prediction reads ``available``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Required, TypedDict

import numpy as np
import torch

from dicmor.data.dataset import Split


class Batch(TypedDict, total=False):
    """One mini-batch (see the module docstring for every key)."""

    inputs: Required[dict[str, torch.Tensor]]
    available: Required[torch.Tensor]
    present: Required[torch.Tensor]
    index: Required[torch.Tensor]
    label: torch.Tensor
    targets: dict[str, torch.Tensor]
    text_bert: torch.Tensor
    target_text_bert: torch.Tensor
    simulated: torch.Tensor
    extra: dict[str, Any]


Sampler = Callable[[Split, np.ndarray, int], list[np.ndarray]]
"""``sampler(split, order, batch_size) -> [rows, ...]``: the split rows of each batch of an
epoch whose samples come in ``order`` ((N,) rows); every row exactly once."""
Collate = Callable[[Batch, Split], Batch]
"""``collate(batch, split) -> batch``: a built batch, with whatever the method adds."""


@dataclass(frozen=True)
class Batching:
    """A method's say in how its batches are made; the defaults are the data layer's own."""

    sampler: Sampler | None = None
    """``None``: consecutive runs of ``batch_size`` samples of the epoch's order."""
    collate: Collate | None = None
    """``None``: batches as built here."""


def consecutive(split: Split, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The default sampler: ``order`` cut into runs of ``batch_size``."""
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


MaskSchedule = Callable[[int, np.ndarray], np.ndarray]
"""``schedule(epoch, order) -> (N, M) bool``: the availability mask of an epoch (from 0) whose
samples come in ``order`` ((N,) split rows)."""


class Batches:
    """Iterate over a split in mini-batches of tensors on ``device``."""

    def __init__(
        self,
        split: Split,
        modality_names: tuple[str, ...],
        available: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        with_targets: bool = False,
        schedule: MaskSchedule | None = None,
        simulate: MaskSchedule | None = None,
        batching: Batching | None = None,
        with_labels: bool = True,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.split = split
        # (rank, ranks): this process takes rows rank, rank + ranks, … of every batch; `sizes`
        # is then (its rows, the batch's rows) of the batch last given, its rows 0 where the
        # batch has fewer rows than ranks (it is then given the batch's first row, to weigh 0).
        self.shard = shard
        self.sizes = (0, 0)
        self.batching = batching or Batching()
        self.with_labels = with_labels
        self.modality_names = modality_names
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        self.schedule = schedule
        self.simulate = simulate
        self.simulated: torch.Tensor | None = None
        self.present = torch.from_numpy(split.present)
        self.labels = torch.from_numpy(split.labels)
        self.available = self._checked(available)
        self.features = {m: torch.from_numpy(split.modalities[m]) for m in modality_names}
        self.with_targets = with_targets
        self.text_bert = None
        if "text_bert" in split.extras and "text" in modality_names:
            self.text_bert = torch.from_numpy(split.extras["text_bert"])

    def _checked(self, available: np.ndarray) -> torch.Tensor:
        """A mask as a tensor, limited to what the dataset has."""
        expected = tuple(self.present.shape)
        if not isinstance(available, np.ndarray) or available.shape != expected:
            raise ValueError(
                f"mask shape {getattr(available, 'shape', None)} does not match split {expected}"
            )
        return torch.from_numpy(available.astype(bool)) & self.present

    def __len__(self) -> int:
        if self.batching.sampler is None:
            return -(-len(self.labels) // self.batch_size)
        return len(self._batches(np.arange(len(self.labels))))

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        """The rows of each batch of an epoch in ``order``; a method's sampler is checked to
        give every row exactly once."""
        if self.batching.sampler is None:
            return consecutive(self.split, order, self.batch_size)
        batches = [
            np.asarray(rows, dtype=np.int64)
            for rows in self.batching.sampler(self.split, order, self.batch_size)
        ]
        rows = np.sort(np.concatenate(batches)) if batches else np.zeros(0, dtype=np.int64)
        if not np.array_equal(rows, np.arange(len(self.labels))):
            raise ValueError("the method's batch sampler must give every sample exactly once")
        return [b for b in batches if len(b)]

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.schedule is not None:
            self.available = self._checked(self.schedule(self.epoch, order.numpy()))
        if self.simulate is not None:
            self.simulated = self._checked(self.simulate(self.epoch, order.numpy()))
        self.epoch += 1
        if self.batching.sampler is None:
            for start in range(0, n, self.batch_size):
                yield self._collated(order[start : start + self.batch_size])
            return
        for rows in self._batches(order.numpy()):
            yield self._collated(torch.from_numpy(rows))

    def _collated(self, index: torch.Tensor) -> Batch:
        if self.shard is not None:
            rank, ranks = self.shard
            local = index[rank::ranks]
            self.sizes = (len(local), len(index))
            index = local if len(local) else index[:1]
        batch = self._batch(index)
        if self.batching.collate is not None:
            batch = self.batching.collate(batch, self.split)
        return batch

    def _batch(self, index: torch.Tensor) -> Batch:
        to = self.device
        available = self.available[index]  # (B, M)
        # where() selects rather than multiplies, so not even a NaN in a hidden entry survives.
        batch: Batch = {
            "inputs": {
                m: torch.where(available[:, j, None, None], x[index], 0.0).to(to)
                for j, (m, x) in enumerate(self.features.items())
            },
            "available": available.to(to),
            "present": self.present[index].to(to),
            "index": index.to(to),
        }
        if self.with_labels:
            batch["label"] = self.labels[index].to(to)
        if self.simulated is not None:
            batch["simulated"] = (self.simulated[index] & available).to(to)
        if self.with_targets:
            batch["targets"] = {m: x[index].to(to) for m, x in self.features.items()}
        if self.text_bert is not None:
            tokens = self.text_bert[index]
            keep = available[:, self.modality_names.index("text"), None, None]
            batch["text_bert"] = torch.where(keep, tokens, 0.0).to(to)
            if self.with_targets:
                batch["target_text_bert"] = tokens.to(to)
        return batch
