"""Zero-fill: the Multimodal Transformer with missing modalities filled by zeros.

The lower bound every incomplete-modality paper reports: the fusion model of DiCMoR (MulT, Tsai
et al., ACL 2019) sees zeros where a modality is missing and recovers nothing.

``zero_fill_pretrained`` trains the same model on DiCMoR's two-stage schedule: first on complete
data, then, with the shallow extractors frozen, under the missing protocol. DiCMoR's stage 1 sees
every training modality, including those the protocol later drops; this baseline sees them too,
so comparing it with DiCMoR measures what the recovery itself adds.

``mean_fill`` fills a missing modality's raw input with that modality's mean input over the
available training entries (per feature, over samples and time steps), which it accumulates
while training. On standardised inputs (the embedded dataset) that mean is about zero, so it
matches zero-fill; on raw MMSA features it does not.
"""

from __future__ import annotations

import torch
from torch import nn

from dicmor.config import ConfigError, ModelConfig
from dicmor.fusion.mult import MulT
from dicmor.models.base import DataInfo, MultimodalModel, Output
from dicmor.models.extractors import ShallowExtractors
from dicmor.models.two_stage import TwoStage
from dicmor.registry import register


@register("zero_fill")
class ZeroFill(MultimodalModel):
    """Shallow extractors → MulT → prediction; a missing modality's features are zeros."""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        self.extractors = ShallowExtractors(info, config)
        self.fusion = MulT(info.modality_names, config.mult, info.output_dim)

    def forward(self, batch: dict) -> Output:
        """``prediction`` and the ``features`` fused ({m: (B, d, T')}, zeros where missing)."""
        features = self.extractors(batch)
        prediction = self.fusion(features)
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)  # (B,)
        return {"prediction": prediction, "features": features}


@register("zero_fill_pretrained")
class ZeroFillPretrained(TwoStage, ZeroFill):
    """Zero-fill trained first on complete data, then under the protocol (DiCMoR's schedule)."""


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
        self.means = nn.ModuleDict(
            {m: RunningMean(info.feature_dims[m]) for m in info.modality_names}
        )

    def forward(self, batch: dict) -> Output:
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
