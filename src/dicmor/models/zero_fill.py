"""Zero-fill: the Multimodal Transformer with missing modalities filled by zeros.

The lower bound every incomplete-modality paper reports: the fusion model of DiCMoR (MulT, Tsai
et al., ACL 2019) sees zeros where a modality is missing and recovers nothing.
"""

from __future__ import annotations

from dicmor.config import ModelConfig
from dicmor.fusion.mult import MulT
from dicmor.models.base import Batch, DataInfo, ModelOutput, MultimodalModel
from dicmor.models.extractors import ShallowExtractors
from dicmor.registry import register


@register("zero_fill")
class ZeroFill(MultimodalModel):
    """Shallow extractors → MulT → prediction; a missing modality's features are zeros."""

    concurrent_batches = True

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        self.extractors = ShallowExtractors(info, config)
        self.fusion = MulT(info.modality_names, config.dim, config.mult, info.output_dim)

    def forward(self, batch: Batch) -> ModelOutput:
        """``prediction`` and the ``features`` fused ({m: (B, d, T')}, zeros where missing)."""
        features = self.extractors(batch)
        prediction = self.fusion(features)
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)  # (B,)
        return {"prediction": prediction, "features": features}
