"""Deterministic cross-modal regression: the recovery paradigm DiCMoR argues against.

A missing modality's features are regressed from the mean of the sample's available modalities'
features by the same residual channel-attention network that refines DiCMoR's recoveries, trained
by the reconstruction MSE alone: one point estimate per input, with no model of the missing
modality's distribution. Everything else is DiCMoR's: shallow extractors, MulT fusion, the
two-stage schedule, the refinement network and reconstruction weight (``model.recovery``), so
comparing the two changes only how a missing modality is filled in.
"""

from __future__ import annotations

from typing import Any

import torch

from dicmor.config import ModelConfig
from dicmor.fusion.mult import MulT
from dicmor.models.base import DataInfo
from dicmor.models.extractors import ShallowExtractors
from dicmor.models.recovery import Recovering, fill_recovered, recovery_passes
from dicmor.nn.rcan import RefinementNetwork
from dicmor.registry import register


@register("cross_regression")
class CrossModalRegression(Recovering):
    """Missing features regressed from the mean of the available ones; MulT fuses."""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        options = config.recovery
        dim = config.dim
        # The parts every MulT method shares are built first, from the same generator state as
        # in zero-fill, so that with nothing missing this method trains exactly as
        # zero_fill_pretrained does.
        self.extractors = ShallowExtractors(info, config)
        self.fusion = MulT(info.modality_names, dim, config.mult, info.output_dim)
        # One regression network per modality, run as the groups of one module.
        self.regressors = RefinementNetwork(
            dim, options.refine_blocks, options.refine_reduction, groups=len(info.modality_names)
        )

    def forward(self, batch: dict) -> dict[str, Any]:
        """``prediction``, the ``features`` fused ({m: (B, d, T')} with recovered entries filled
        in) and ``recovered`` ({m: (index (n,), features (n, d, T'))} for the samples missing m;
        for a batch that carries a ``simulated`` mask, the samples it hides, recovered for the
        reconstruction loss only).
        """
        features = self.extractors(batch)
        available = batch["available"]  # (B, M)
        recovered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if "simulated" in batch:
            _, recovered = self._regress(features, batch["simulated"])
        elif not bool(available.all()):
            features, recovered = self._regress(features, available)
        prediction = self.fusion(features)
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)  # (B,)
        return {"prediction": prediction, "features": features, "recovered": recovered}

    def _regress(
        self, features: dict[str, torch.Tensor], available: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Fill every entry that ``available: (B, M)`` hides from the sample's other entries."""
        names = self.info.modality_names
        # Detached: the reconstruction trains the regressors, not the extractors (frozen when
        # anything is really missing, and left to the task when recovery is only simulated).
        stacked = torch.stack([features[m].detach() for m in names])  # (M, B, d, T')
        weights = available.to(stacked.dtype)  # (B, M)
        count = weights.sum(dim=1).clamp(min=1.0)  # (B,)
        # Unavailable modalities' features are zeros, and weighted 0 besides.
        source = torch.einsum("mbct,bm->bct", stacked, weights) / count[:, None, None]
        estimates = {}
        # Missing modalities are regressed together, as the groups of one module.
        for recovery in recovery_passes(available):
            outputs = self.regressors(
                recovery.inputs(source), group=recovery.targets
            )  # (len(targets), n, d, T')
            estimates.update(recovery.estimates(outputs))
        return fill_recovered(features, names, estimates)

    def loss(self, output: dict[str, Any], batch: dict) -> dict[str, torch.Tensor]:
        """task + reconstruction_weight · MSE over the recovered entries that have real features."""
        task = self.task_loss(output["prediction"], batch["label"])
        reconstruction = self.reconstruction_loss(output, batch)
        total = task + self.config.recovery.reconstruction_weight * reconstruction
        return {"total": total, "task": task, "reconstruction": reconstruction}
