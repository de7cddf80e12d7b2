"""Mini-batches of one split under one availability mask.

The missing values are zeroed here, once, before any model sees them: a batch's ``inputs`` hold
only what is available. The real features travel separately as ``targets`` and only when asked
for (training losses use them as reconstruction targets; evaluation never builds them).

A batch is a dict:
    inputs:    {modality: (B, T, D) float}, zero where not available
    available: (B, M) bool, what the model may read
    present:   (B, M) bool, what the dataset really has (for losses)
    label:     (B,) float or long
    index:     (B,) long, row of each sample in the split
    targets:   {modality: (B, T, D)} real features (only with ``with_targets``)
    text_bert: (B, 3, T) tokens (only when the dataset has them), zero where text is missing
    target_text_bert: (B, 3, T) real tokens (only with ``with_targets``)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from dicmor.data.dataset import Split

Batch = dict[str, object]


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
    ) -> None:
        if available.shape != (len(split), len(modality_names)):
            raise ValueError(
                f"mask shape {available.shape} does not match split ({len(split)}, "
                f"{len(modality_names)})"
            )
        available = available & split.present
        self.modality_names = modality_names
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        self.available = torch.from_numpy(available)
        self.present = torch.from_numpy(split.present)
        self.labels = torch.from_numpy(split.labels)
        # np.where selects rather than multiplies, so not even a NaN in a hidden entry survives.
        self.inputs = {
            m: torch.from_numpy(np.where(available[:, i, None, None], split.modalities[m], 0.0))
            for i, m in enumerate(modality_names)
        }
        self.targets = (
            {m: torch.from_numpy(split.modalities[m]) for m in modality_names}
            if with_targets
            else None
        )
        self.text_bert = None
        self.target_text_bert = None
        if "text_bert" in split.extras and "text" in modality_names:
            keep = available[:, modality_names.index("text"), None, None]
            self.text_bert = torch.from_numpy(np.where(keep, split.extras["text_bert"], 0.0))
            if with_targets:
                self.target_text_bert = torch.from_numpy(split.extras["text_bert"])

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self._batch(index)

    def _batch(self, index: torch.Tensor) -> Batch:
        to = self.device
        batch: Batch = {
            "inputs": {m: x[index].to(to) for m, x in self.inputs.items()},
            "available": self.available[index].to(to),
            "present": self.present[index].to(to),
            "label": self.labels[index].to(to),
            "index": index.to(to),
        }
        if self.targets is not None:
            batch["targets"] = {m: x[index].to(to) for m, x in self.targets.items()}
        if self.text_bert is not None:
            batch["text_bert"] = self.text_bert[index].to(to)
        if self.target_text_bert is not None:
            batch["target_text_bert"] = self.target_text_bert[index].to(to)
        return batch
