"""Zero-fill on DiCMoR's two-stage schedule: the baseline that isolates what recovery adds.

The zero-fill model (MulT with missing modalities' features at zero) trained first on complete
data, then, with the shallow extractors frozen, under the missing protocol, as DiCMoR is (Wang et
al., ICCV 2023, SPEC §5.9). DiCMoR's stage 1 sees every training modality, including those the
protocol later drops; this baseline sees them too, so comparing it with DiCMoR measures what the
recovery itself adds.
"""

from __future__ import annotations

from dicmor.models.two_stage import TwoStage
from dicmor.models.zero_fill import ZeroFill
from dicmor.registry import register


@register("zero_fill_pretrained")
class ZeroFillPretrained(TwoStage, ZeroFill):
    """Zero-fill trained first on complete data, then under the protocol (DiCMoR's schedule)."""
