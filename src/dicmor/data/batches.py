"""Mini-batches of one split under one availability mask.

The missing values are zeroed here, batch by batch, before any model sees them: a batch's
``inputs`` hold only what is available. The real features travel separately as ``targets`` and
only when asked for (training losses use them as reconstruction targets; evaluation never builds
them).

The mask is fixed, or, for training under a protocol redrawn every epoch, given by a
``schedule``: a function of the epoch and of that epoch's sample order (the ``legacy-batch``
protocol lays its schedule over the batches in loader order) returning the epoch's mask.

A batch is a dict:
    inputs:    {modality: (B, T, D) float}, zero where not available
    available: (B, M) bool, what the model may read
    present:   (B, M) bool, what the dataset really has (for losses)
    label:     (B,) float or long
    index:     (B,) long, row of each sample in the split
    targets:   {modality: (B, T, D)} real features (only with ``with_targets``)
    text_bert: (B, 3, T) tokens (only when the dataset has them), zero where text is missing
    target_text_bert: (B, 3, T) real tokens (only with ``with_targets``)
    simulated: (B, M) bool, a simulated mask within ``available`` (only with ``simulate``): a
               model may train its recovery on it while its prediction reads ``available``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from dicmor.data.dataset import Split

Batch = dict[str, object]
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
    ) -> None:
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
        return -(-len(self.labels) // self.batch_size)

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
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._batch(index)

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
            "label": self.labels[index].to(to),
            "index": index.to(to),
        }
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
