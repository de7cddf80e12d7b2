"""Mean-fill: the Multimodal Transformer with a missing modality's input set to its mean.

A lower bound the field reports beside zero-fill: the fusion model of DiCMoR (MulT, Tsai et al.,
ACL 2019) sees, where a modality is missing, that modality's mean input over the available
training entries (per feature, over samples and time steps), accumulated while training. On
standardised inputs (the embedded dataset) that mean is about zero, so it matches zero-fill; on
raw MMSA features it does not.
"""

from __future__ import annotations

import torch
from torch import nn

from dicmor.config import ConfigError, ModelConfig
from dicmor.models.base import Batch, DataInfo, ModelOutput
from dicmor.models.zero_fill import ZeroFill
from dicmor.registry import register


class RunningMean(nn.Module):
    """The mean of every row seen, per feature: buffers ``total`` (D,) and ``count`` ()."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(features, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add the rows of ``x: (..., D)``."""
        rows = x.reshape(-1, x.shape[-1])
        self.total += rows.sum(dim=0, dtype=torch.float64)
        self.count += rows.shape[0]

    def value(self) -> torch.Tensor:
        """(D,) mean so far; zeros before any row."""
        return self.total / self.count.clamp(min=1.0)


@register("mean_fill")
class MeanFill(ZeroFill):
    """Shallow extractors → MulT; a missing modality's input is its mean training input."""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        if config.text_encoder is not None:
            raise ConfigError(
                "model.text_encoder: mean_fill fills raw feature inputs and has no mean for "
                "text tokens; use zero_fill or dicmor with a text encoder"
            )
        super().__init__(info, config)
        self.extractors.skip_missing = False  # a missing modality's input is its mean, not zero
        self.means = nn.ModuleDict(
            {m: RunningMean(info.feature_dims[m]) for m in info.modality_names}
        )

    def forward(self, batch: Batch) -> ModelOutput:
        """``prediction`` and the ``features`` fused, computed from the mean-filled inputs."""
        inputs = batch["inputs"]
        available = batch["available"]  # (B, M)
        names = self.info.modality_names
        if self.training:
            for j, m in enumerate(names):
                self.means[m].update(inputs[m][available[:, j]])
        if not bool(available.all()):
            filled = {}
            for j, m in enumerate(names):
                x = inputs[m]  # (B, T, D)
                mean = self.means[m].value().to(x.dtype)  # (D,)
                filled[m] = torch.where(available[:, j, None, None], x, mean)
            batch = {**batch, "inputs": filled}
        return super().forward(batch)
