"""A method with a batching hook of its own: the samples of one group (a "video": a run of
``group_size`` consecutive rows of the split) always share a batch, and each batch carries the
group of every sample, which the model pools over, as a graph over a video's segments does.

Registered for the tests (``DICMOR_PLUGINS``), so that the registry-parametrised model tests cover
a method whose batches are not consecutive samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dicmor.data.batches import Batch, Batching
from dicmor.data.dataset import Split
from dicmor.models.base import DataInfo, ModelOutput, MultimodalModel, Stage
from dicmor.registry import register


@dataclass(frozen=True)
class SegmentPoolConfig:
    """Options of ``segment_pool``."""

    hidden: int = 8
    """Width of the per-sample encoding."""
    group_size: int = 4
    """Samples of one group: rows k of the split with the same ``k // group_size``."""
    first_batch_size: int = 12
    """Batch size of the first (complete-data) stage."""


def groups_of(split: Split, group_size: int) -> np.ndarray:
    """(N,) group of every sample, by its row."""
    return np.arange(len(split)) // group_size


@register("segment_pool", config=SegmentPoolConfig)
class SegmentPool(MultimodalModel):
    """Time-averaged features → per-modality linear maps → mean over available modalities, plus
    the mean over the sample's group in the batch → head."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        hidden = self.options.hidden
        self.encoders = nn.ModuleDict(
            {m: nn.Linear(info.feature_dims[m], hidden) for m in info.modality_names}
        )
        self.head = nn.Linear(2 * hidden, info.output_dim)

    def stages(self) -> list[Stage]:
        """Both stages train whatever is missing: the second tunes the head alone."""
        return [
            Stage("first", complete_data=True, batch_size=self.options.first_batch_size),
            Stage("second", frozen=("encoders",), optimizer="sgd", lr=1e-3),
        ]

    def batching(self) -> Batching:
        size = self.options.group_size

        def sampler(split: Split, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
            groups = groups_of(split, size)
            batches: list[np.ndarray] = []
            current: list[int] = []
            for g in dict.fromkeys(groups[order].tolist()):
                members = order[groups[order] == g].tolist()
                if current and len(current) + len(members) > batch_size:
                    batches.append(np.array(current))
                    current = []
                current += members
            if current:
                batches.append(np.array(current))
            return batches

        def collate(batch: Batch, split: Split) -> Batch:
            rows = batch["index"].cpu().numpy()
            group = torch.from_numpy(groups_of(split, size)[rows]).to(batch["index"].device)
            return {**batch, "extra": {"group": group}}

        return Batching(sampler=sampler, collate=collate)

    def forward(self, batch: Batch) -> ModelOutput:
        available = batch["available"].float()  # (B, M)
        encoded = torch.stack(
            [self.encoders[m](x.mean(dim=1)) for m, x in batch["inputs"].items()], dim=1
        )  # (B, M, H)
        sample = (encoded * available[..., None]).sum(1) / available.sum(1, keepdim=True).clamp(
            min=1.0
        )
        group = batch["extra"]["group"]
        same = (group[:, None] == group[None, :]).float()  # (B, B)
        context = same @ sample / same.sum(1, keepdim=True)
        prediction = self.head(torch.cat([sample, context], dim=1))
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {"prediction": prediction}
