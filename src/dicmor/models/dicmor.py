"""DiCMoR: Distribution-Consistent Modal Recovering.

Wang, Cui, Li, "Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning",
ICCV 2023. Each modality has a normalizing flow that maps its shallow features to a latent
space where every modality of class c follows one shared Gaussian N(μ_c, diag σ_c²). A missing
modality is recovered by encoding the available modalities, fusing their latents and decoding
with the missing modality's inverse flow, so the recovered features follow that modality's own
class-conditional distribution; a residual channel-attention network then refines them and the
Multimodal Transformer fuses all modalities.

Labels are used only by the loss (the flow NLL needs the class); ``forward`` never reads them,
nor any value of a missing modality.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dicmor.config import ConfigError, ModelConfig
from dicmor.data.labels import prior_classes
from dicmor.flows.glow import Flow
from dicmor.flows.prior import ClassConditionalPrior, nll_bits_per_dim
from dicmor.fusion.mult import MulT
from dicmor.models.base import DataInfo
from dicmor.models.extractors import ShallowExtractors
from dicmor.models.recovery import Recovering, missing_subsets
from dicmor.nn.rcan import RefinementNetwork
from dicmor.registry import register


@register("dicmor")
class DiCMoR(Recovering):
    """Class-specific flows recover missing modalities; MulT fuses (Wang et al., ICCV 2023)."""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        options = config.dicmor
        dim = config.mult.dim
        names = info.modality_names
        if dim < 2:
            raise ConfigError(
                f"model.mult.dim must be >= 2 for dicmor, got {dim}: its flows split the "
                "feature channels in two halves"
            )
        self.extractors = ShallowExtractors(info, config)
        # One flow per modality, run as the groups of one grouped flow (group j = modality j).
        self.flows = Flow(
            dim,
            options.flow_steps,
            options.flow_step_type,
            options.flow_hidden,
            groups=len(names),
        )
        self.prior = ClassConditionalPrior(info.prior_classes, dim)
        # One refinement network per modality, run as the groups of one module.
        self.refiners = RefinementNetwork(
            dim, options.refine_blocks, options.refine_reduction, groups=len(names)
        )
        self.mergers = (
            nn.ModuleDict({m: nn.Conv1d((len(names) - 1) * dim, dim, 1) for m in names})
            if options.transfer == "decode-merge"
            else None
        )
        self.fusion = MulT(names, config.mult, info.output_dim)
        # Largest magnitude of each modality's real features seen in training: decoding a latent
        # far from the training data can expand without bound through the inverse couplings,
        # so a recovered value is kept within the range the real features take.
        self.register_buffer("feature_bound", torch.zeros(len(names)))
        # Set once the prior's class means start at the class means of the first latents.
        self.register_buffer("prior_initialized", torch.tensor(False))

    def forward(self, batch: dict) -> dict[str, Any]:
        """Recover what is missing, fuse, predict.

        Returns ``prediction`` ((B,) or (B, K)), ``features`` ({m: (B, d, T')} with recovered
        entries filled in), ``latents`` ({m: (index (n,), z (n, d, T'), logdet (n,))} for the
        available samples of each modality, computed when training or when needed for recovery)
        and ``recovered`` ({m: (index (n,), refined (n, d, T'))} for the samples missing m).
        """
        features = self.extractors(batch)
        available = batch["available"]  # (B, M)
        missing_any = not bool(available.all())
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        recovered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.training:
            self._track_bounds(features, available)
        if self.training or missing_any:
            latents = self._encode(features, available)
            if missing_any:
                features, recovered = self._recover(features, available, latents)
        prediction = self.fusion(features)
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)  # (B,)
        return {
            "prediction": prediction,
            "features": features,
            "latents": latents,
            "recovered": recovered,
        }

    @torch.no_grad()
    def _track_bounds(self, features: dict[str, torch.Tensor], available: torch.Tensor) -> None:
        seen = torch.stack([features[m].abs().amax(dim=(1, 2)) for m in self.info.modality_names])
        seen = (seen * available.T.to(seen.dtype)).amax(dim=1)  # (M,)
        self.feature_bound.copy_(torch.maximum(self.feature_bound, seen))

    def _encode(
        self, features: dict[str, torch.Tensor], available: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Latents ``{m: (index (n,), z (n, d, T'), logdet (n,))}`` of the available samples of
        each modality that has any."""
        names = self.info.modality_names
        if not self.config.dicmor.nll_trains_extractor:
            # The likelihood of learnt features is degenerate: shrinking them raises it without
            # bound, until the floor at 0 bits/dim stops every gradient to the flows and prior.
            features = {m: x.detach() for m, x in features.items()}
        present = [
            j for j, any_available in enumerate(available.any(dim=0).tolist()) if any_available
        ]
        latents = {}
        if not present:
            return latents
        if len(present) == 1:
            # One modality alone (as when a whole batch keeps one): its group of the flow only.
            j = present[0]
            index = available[:, j].nonzero().squeeze(1)
            z, logdet = self.flows(features[names[j]].index_select(0, index), group=j)
            return {names[j]: (index, z, logdet)}
        stacked = torch.stack([features[m] for m in names])  # (M, B, d, T')
        # Every modality on the whole batch in one pass; the samples where a modality is
        # unavailable (zeros) are computed but kept out of its latents and of ActNorm's
        # initialisation.
        z, logdet = self.flows(stacked, mask=available.T)  # (M, B, d, T'), (M, B)
        for j in present:
            index = available[:, j].nonzero().squeeze(1)
            latents[names[j]] = (
                index,
                z[j].index_select(0, index),
                logdet[j].index_select(0, index),
            )
        return latents

    def _recover(
        self,
        features: dict[str, torch.Tensor],
        available: torch.Tensor,
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Fill every missing (sample, modality) entry from that sample's available modalities.

        The latents enter detached: the flows learn from their NLL only, not from the recovery.
        """
        names = self.info.modality_names
        reference = next(iter(features.values()))
        weights = available.to(reference.dtype)  # (B, M)
        # Every modality's latents on the whole batch, zeros where unavailable.
        full = reference.new_zeros(len(names), *reference.shape)  # (M, B, d, T')
        for j, m in enumerate(names):
            if m in latents:
                index, z, _ = latents[m]
                full[j].index_copy_(0, index, z.detach())
        fused = None
        if self.mergers is None:
            # The mean of the available latents does not depend on which modality is decoded.
            count = weights.sum(dim=1).clamp(min=1.0)  # (B,)
            fused = torch.einsum("mbct,bm->bct", full, weights) / count[:, None, None]
        refinements: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Modalities missing from the same samples decode and refine together.
        for index, targets in missing_subsets(available):
            if fused is None:
                decoded = torch.stack(
                    [self._decode_merge(j, full[:, index], weights[index]) for j in targets]
                )  # (len(targets), n, d, T')
            else:
                latent = fused.index_select(0, index)  # (n, d, T')
                # No gradient reaches the flows through the recovery (SPEC §5.5).
                with torch.no_grad():
                    decoded = self.flows.inverse(
                        latent.expand(len(targets), *latent.shape), group=targets
                    )  # (len(targets), n, d, T')
            bound = self.feature_bound[targets][:, None, None, None]
            decoded = torch.nan_to_num(decoded, nan=0.0).clamp(-bound, bound)
            # Their refinement networks run together too, as the groups of one module.
            refined = self.refiners(decoded, group=targets)  # (len(targets), n, d, T')
            for j, x in zip(targets, refined.unbind(0), strict=True):
                refinements[j] = (index, x)
        filled = dict(features)
        recovered = {}
        for j, m in enumerate(names):
            if j in refinements:
                index, refined = refinements[j]
                filled[m] = features[m].index_copy(0, index, refined)
                recovered[m] = (index, refined)
        return filled, recovered

    def _decode_merge(
        self, target: int, latents: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Decode each other modality's latent with ``target``'s inverse flow and merge them.

        latents: (M, n, d, T'); weights: (n, M) availability (unavailable decodings count as 0).
        """
        name = self.info.modality_names[target]
        sources = [j for j in range(len(self.info.modality_names)) if j != target]
        n = latents.shape[1]
        # The decodings carry no gradient to the flows (SPEC §5.5): they learn from their NLL
        # only. The merge itself is learnt, by the reconstruction loss.
        with torch.no_grad():
            # The sources stacked along the batch decode in one inverse pass.
            decoded = self.flows.inverse(latents[sources].flatten(0, 1), group=target)
            decoded = decoded.view(len(sources), n, *decoded.shape[1:])  # (M − 1, n, d, T')
            decoded = decoded * weights[:, sources].T[:, :, None, None]
        return self.mergers[name](torch.cat(decoded.unbind(0), dim=1))  # (n, d, T')

    def loss(self, output: dict[str, Any], batch: dict) -> dict[str, torch.Tensor]:
        """task + nll_weight · Σ_m NLL_m (bits/dim) + reconstruction_weight · MSE (SPEC §5.8).

        The NLL covers the available samples of each modality; the reconstruction covers the
        recovered entries whose real features exist (``present``), so a genuinely absent entry
        contributes nothing.
        """
        options = self.config.dicmor
        task = self.task_loss(output["prediction"], batch["label"])
        classes = prior_classes(batch["label"], self.info.task)
        zero = task.new_zeros(())
        latents = output["latents"]
        if not latents:
            # At evaluation on complete data the forward pass skips the flows; the validation
            # loss that selects checkpoints still needs their NLL.
            latents = self._encode(output["features"], batch["available"])
        if self.training and not bool(self.prior_initialized):
            self._initialize_prior(latents, classes)
        nll = zero
        for index, z, logdet in latents.values():
            log_prob = self.prior.log_prob(z, classes.index_select(0, index))
            nll = nll + nll_bits_per_dim(log_prob, logdet, z.shape[1] * z.shape[2])
        reconstruction = self.reconstruction_loss(output, batch)
        total = task + options.nll_weight * nll + options.reconstruction_weight * reconstruction
        return {"total": total, "task": task, "nll": nll, "reconstruction": reconstruction}

    @torch.no_grad()
    def _initialize_prior(
        self,
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        classes: torch.Tensor,
    ) -> None:
        """Data-dependent initialisation of the prior, as ActNorm's: each class seen in the first
        training batch starts at the mean of its latents over modalities and time, so classes
        start apart instead of all at N(0, I) (Adam moves a mean by about the learning rate per
        step, which at 1e-4 would take thousands of steps). Unseen classes keep N(0, I)."""
        points = torch.cat([z.transpose(1, 2).flatten(0, 1) for _, z, _ in latents.values()])
        labels = torch.cat(
            [
                classes.index_select(0, i).repeat_interleave(z.shape[2])
                for i, z, _ in latents.values()
            ]
        )  # (P,) one label per latent time step
        k, channels = self.prior.mean.shape
        count = points.new_zeros(k).index_add_(0, labels, points.new_ones(labels.shape))
        total = points.new_zeros(k, channels).index_add_(0, labels, points)
        seen = count > 0
        self.prior.mean[seen] = total[seen] / count[seen, None]
        self.prior_initialized.fill_(True)
