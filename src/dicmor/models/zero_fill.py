"""Zero-fill: the Multimodal Transformer with missing modalities filled by zeros.

The lower bound every incomplete-modality paper reports: the fusion model of DiCMoR (MulT, Tsai
et al., ACL 2019) sees zeros where a modality is missing and recovers nothing.

``zero_fill_pretrained`` trains the same model on DiCMoR's two-stage schedule: first on complete
data, then, with the shallow extractors frozen, under the missing protocol. DiCMoR's stage 1 sees
every training modality, including those the protocol later drops; this baseline sees them too,
so comparing it with DiCMoR measures what the recovery itself adds.
"""

from __future__ import annotations

from dicmor.config import ModelConfig
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
