"""DCCAE: Deep CCA AutoEncoder (Wang, Arora, Livescu, Bilmes; ICML 2015).

DCCA (:mod:`dicmor.models.dcca`) plus one decoder per modality, the mirror of its encoder back to
the utterance vector, and a reconstruction term: loss = −corr + λ · Σ_m MSE(x_m, dec_m(enc_m(x_m)))
with λ = 1e-3 (the field's code; cca-zoo's (1 − λ)·CCA + λ·MSE mixing is not used). Each
modality's reconstruction covers the samples that have it (a mean-filled vector is no target),
and each modality goes through its own encoder and decoder (one public version sends the third
view through the second view's network; not copied). Everything else is DCCA's, including its
adaptations to missing data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from dicmor.data.batches import Batch
from dicmor.errors import ConfigError
from dicmor.models.base import DataInfo, ModelOutput
from dicmor.models.dcca import DCCA, DCCAConfig
from dicmor.models.utterance import mlp
from dicmor.registry import register


@dataclass(frozen=True)
class DCCAEConfig(DCCAConfig):
    """Options of ``dccae`` (``model.dccae``): DCCA's and the reconstruction weight."""

    reconstruction_weight: float = 1e-3
    """λ: weight of the summed per-modality reconstruction MSE."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reconstruction_weight < 0:
            raise ConfigError(
                f"model.dccae.reconstruction_weight must be >= 0, got {self.reconstruction_weight}"
            )


@register("dccae", config=DCCAEConfig)
class DCCAE(DCCA):
    """DCCA with per-modality decoders and a reconstruction term in the CCA stage."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        options: DCCAEConfig = self.options
        self.decoders = nn.ModuleDict(
            {
                m: mlp([options.out_dim, *reversed(options.hidden), info.feature_dims[m]])
                for m in info.modality_names
            }
        )

    def stages(self):
        """As DCCA; the decoders train with the encoders and are frozen with them."""
        cca, head = super().stages()
        return [cca, replace(head, frozen=("encoders", "decoders"))]

    def train(self, mode: bool = True) -> DCCAE:
        super().train(mode)
        if getattr(self, "_encoders_frozen", False):
            self.decoders.eval()
        return self

    def reconstruction(self, output: ModelOutput, batch: Batch) -> torch.Tensor:
        """Σ_m MSE(x_m, dec_m(enc_m(x_m))) over the samples that have modality m (in training,
        a modality with fewer than 2 such samples is left out: BatchNorm needs 2)."""
        projections, views = output["latents"]["projections"], output["latents"]["views"]
        total = output["prediction"].new_zeros(())
        for j, m in enumerate(self.info.modality_names):
            keep = batch["available"][:, j].nonzero().squeeze(1)
            if len(keep) < (2 if self.training else 1):
                continue
            decoded = self.decoders[m](projections[m].index_select(0, keep))
            total = total + F.mse_loss(decoded, views[m].index_select(0, keep))
        return total

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """``cca``: −corr + λ · reconstruction (what the CCA stage optimises); ``task``."""
        losses = super().loss(output, batch)
        options: DCCAEConfig = self.options
        reconstruction = self.reconstruction(output, batch)
        cca = losses["cca"] + options.reconstruction_weight * reconstruction
        return {
            "total": losses["task"] + cca,
            "task": losses["task"],
            "cca": cca,
            "reconstruction": reconstruction,
        }
