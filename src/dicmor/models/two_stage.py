"""The two-stage schedule of DiCMoR (SPEC §5.9), shared with any method that wants it.

Stage 1 trains the whole model on complete data (whatever the missing protocol, so its weights
can be cached and reused); stage 2 starts from stage 1, freezes the shallow extractors (and the
text encoder) and trains under the protocol.
"""

from __future__ import annotations

from dicmor.models.base import MultimodalModel, Stage
from dicmor.models.extractors import ShallowExtractors


class TwoStage(MultimodalModel):
    """Base class of two-stage methods; subclasses build ``self.extractors``.

    The stage-1 epoch limit is ``model.stage1_epochs`` for every such method, so that
    comparing two of them changes nothing but the method.
    """

    extractors: ShallowExtractors
    _extractors_frozen: bool = False

    def stages(self) -> list[Stage]:
        """Stage 1 on complete data (cacheable), stage 2 under the missing protocol with the
        extractors frozen."""
        return [
            Stage("complete", complete_data=True, max_epochs=self.config.stage1_epochs),
            Stage(
                "missing",
                frozen=("extractors",),
                skip_when_complete="nothing is missing: it would train on what the complete-data "
                "stage saw, with the extractors frozen",
            ),
        ]

    def begin_stage(self, stage: Stage) -> None:
        """Freeze what the stage names; a frozen text encoder also stops its dropout."""
        super().begin_stage(stage)
        self._extractors_frozen = "extractors" in stage.frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> TwoStage:
        """As ``nn.Module.train``, but a frozen text encoder stays in eval mode (no dropout):
        frozen, it is a fixed feature function."""
        super().train(mode)
        if self._extractors_frozen and self.extractors.text_encoder is not None:
            self.extractors.text_encoder.eval()
        return self
