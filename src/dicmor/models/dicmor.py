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

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from dicmor.concurrency import generator, in_turn
from dicmor.config import ConfigError, ModelConfig
from dicmor.data.labels import prior_classes
from dicmor.flows.actnorm import ActNorm
from dicmor.flows.glow import Flow
from dicmor.flows.prior import ClassConditionalPrior, nll_bits_per_dim
from dicmor.fusion.mult import MulT
from dicmor.models.base import DataInfo, Stage
from dicmor.models.extractors import ShallowExtractors
from dicmor.models.recovery import Recovering, fill_recovered, recovery_passes
from dicmor.nn.precision import full_precision, widened
from dicmor.nn.rcan import RefinementNetwork
from dicmor.registry import register


@dataclass(frozen=True)
class DiCMoRConfig:
    """DiCMoR's own hyperparameters, ``model.dicmor`` (SPEC §5); the refinement network and the
    reconstruction weight are ``model.recovery``'s, the width ``model.dim``."""

    flow_steps: int = 32
    """Number K of flow steps per modality."""
    flow_step_type: Literal["glow", "coupling-only"] = "glow"
    """``glow``: ActNorm, invertible 1x1 convolution, affine coupling; ``coupling-only``: the
    public code's coupling layers alone (for parity experiments)."""
    flow_hidden: int = 64
    """Hidden width of the coupling conditioner."""
    transfer: Literal["mean", "moment-matched", "decode-merge"] = "mean"
    """How several available modalities recover a missing one: ``mean`` fuses their latents by
    their mean and decodes once (the paper); ``moment-matched`` rescales that mean about the
    class mean of the prior, weighted by the class posterior of the available latents, so that
    k latents of one class fused keep the class's variance instead of 1/k of it (the mean of k
    independent draws of N(mu_c, sigma_c^2) has variance sigma_c^2 / k); ``decode-merge``
    decodes each latent and merges the decodings with a 1x1 conv (the public code)."""
    train_flows: bool = True
    """``False``: the flows are the identity and never learn (an ablation: a missing modality
    is then recovered from the mean of the available features by the refinement network alone,
    as in ``cross_regression``)."""
    refine: bool = True
    """``False``: the decoded transfer is the recovery, with no refinement network after it (an
    ablation: what the flows alone carry). With the refinement on, a network trained by the
    reconstruction MSE and the task loss turns any invertible transfer of the available
    features into their regression, so trained and identity flows then recover alike (see the
    README's flow ablation)."""
    dequantize: float = 0.0
    """Standard deviation of Gaussian noise added, in training, to the features entering the
    flows, relative to each modality's RMS in the batch. Features of fewer input degrees of
    freedom than the width d (MOSI audio: 5 features x kernel 5 = 25 < 32) lie on a subspace
    where a flow's likelihood has no maximum; the noise gives it one. 0 disables."""
    flow_stage_epochs: int = 0
    """If > 0, the flows are fitted in a stage of their own after stage 1, for at most this many
    epochs on complete data, with the extractors and the fusion frozen: ActNorm and the prior's
    class means start from features that no longer change, and the stage runs until the
    validation NLL (plus the reconstruction, when recovery is simulated) stops improving. The
    flows are then not trained in stage 1. 0: flows train jointly from stage 1 on."""
    flow_lr: float | None = None
    """Learning rate of the flow stage; ``None`` uses ``train.lr``."""
    recovery_trains_flows: bool = False
    """Let the reconstruction loss's gradient reach the flows through the transfer (encoding
    the available modalities and decoding the missing one), so that the flows learn a latent
    space in which one modality's latent decodes to the other's features. Off, as the paper:
    the flows learn from their NLL only."""
    align_weight: float = 0.0
    """Weight of a cross-modal latent alignment term: for every training sample with two or
    more modalities available, the mean squared distance of each modality's latent to their
    mean (per element), trained into the flows only. The NLL makes each modality's latents
    follow the shared class-conditional prior but says nothing about *which* latent a sample
    takes, so one modality's latent carries no sample-level information to the other's
    decoding; this term asks the flows to give paired entries the same latent. 0 (the paper)
    disables."""
    nll_weight: float = 0.1
    """Weight of the summed flow NLLs (bits per dimension) in the total loss."""
    nll_trains_extractor: bool = False
    """Let the flow NLL's gradient reach the shallow extractors in stage 1, as the public code
    does. Off by default: the extractors can then raise the likelihood just by shrinking their
    features, until the NLL floor at 0 stops all learning of the flows and prior."""

    def __post_init__(self) -> None:
        if self.flow_steps < 1 or self.flow_hidden < 1:
            raise ConfigError("model.dicmor: flow_steps and flow_hidden must be >= 1")
        if self.nll_weight < 0 or self.align_weight < 0:
            raise ConfigError("model.dicmor: loss weights must be >= 0")
        if self.dequantize < 0:
            raise ConfigError(f"model.dicmor.dequantize must be >= 0, got {self.dequantize}")
        if self.flow_stage_epochs < 0:
            raise ConfigError(
                f"model.dicmor.flow_stage_epochs must be >= 0, got {self.flow_stage_epochs}"
            )
        if self.flow_lr is not None and self.flow_lr <= 0:
            raise ConfigError(f"model.dicmor.flow_lr must be positive, got {self.flow_lr}")


@register("dicmor", config=DiCMoRConfig)
class DiCMoR(Recovering):
    """Class-specific flows recover missing modalities; MulT fuses (Wang et al., ICCV 2023)."""

    concurrent_batches = True

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        options: DiCMoRConfig = self.options
        dim = config.dim
        names = info.modality_names
        if dim < 2:
            raise ConfigError(
                f"model.dim must be >= 2 for dicmor, got {dim}: its flows split the "
                "feature channels in two halves"
            )
        # The parts every MulT method shares are built first, from the same generator state as
        # in zero-fill, so that with nothing missing DiCMoR's fusion trains exactly as
        # zero_fill_pretrained's does (the flows' NLL does not reach the extractors).
        self.extractors = ShallowExtractors(info, config)
        self.fusion = MulT(names, dim, config.mult, info.output_dim)
        # One flow per modality, run as the groups of one grouped flow (group j = modality j);
        # untrained flows (an ablation) are the identity and are not built.
        self.flows = (
            Flow(
                dim,
                options.flow_steps,
                options.flow_step_type,
                options.flow_hidden,
                groups=len(names),
            )
            if options.train_flows
            else None
        )
        self.prior = ClassConditionalPrior(info.prior_classes, dim)
        # One refinement network per modality, run as the groups of one module.
        recovery = config.recovery
        self.refiners = (
            RefinementNetwork(
                dim, recovery.refine_blocks, recovery.refine_reduction, groups=len(names)
            )
            if options.refine
            else None
        )
        self.mergers = (
            nn.ModuleDict({m: nn.Conv1d((len(names) - 1) * dim, dim, 1) for m in names})
            if options.transfer == "decode-merge"
            else None
        )
        # Whether the flows take part in the current stage: with a flow stage of their own
        # they are fitted there, on final features, and skipped in stage 1.
        self._flows_active = True
        # Dequantisation noise has a generator of its own, seeded from the global one once,
        # so that it does not shift the dropout draws of the rest of the model.
        self._noise_seed = torch.initial_seed()
        self._noise: torch.Generator | None = None
        # Largest magnitude of each modality's real features seen in training: decoding a latent
        # far from the training data can expand without bound through the inverse couplings,
        # so a recovered value is kept within the range the real features take.
        self.register_buffer("feature_bound", torch.zeros(len(names)))
        # Set once the prior's class means start at the class means of the first latents.
        self.register_buffer("prior_initialized", torch.tensor(False))

    def stages(self) -> list[Stage]:
        """Stage 1 on complete data; with ``flow_stage_epochs`` a stage fitting the flows (and
        the recovery) on the now fixed features; stage 2 under the protocol."""
        options = self.options
        complete, missing = super().stages()
        if options.flow_stage_epochs == 0 or self.flows is None:
            return [complete, missing]
        flows = Stage(
            "flows",
            complete_data=True,
            max_epochs=options.flow_stage_epochs,
            monitor="recovery",
            lr=options.flow_lr,
            simulate_rate=self.config.recovery.stage1_recovery_rate,
            frozen=("extractors", "fusion"),
        )
        # Stage 1 then neither fits the flows nor recovers through them.
        return [replace(complete, simulate_rate=0.0, idle=("flows",)), flows, missing]

    def begin_stage(self, stage: Stage) -> None:
        """As `TwoStage`; stage 1 leaves out flows that have a stage of their own."""
        super().begin_stage(stage)
        self._flows_active = "flows" not in stage.idle

    def forward(self, batch: dict) -> dict[str, Any]:
        """Recover what is missing, fuse, predict.

        Returns ``prediction`` ((B,) or (B, K)), ``features`` ({m: (B, d, T')} with recovered
        entries filled in), ``latents`` ({m: (index (n,), z (n, d, T'), logdet (n,))} for the
        available samples of each modality, computed when training or when needed for recovery)
        and ``recovered`` ({m: (index (n,), refined (n, d, T'))} for the samples missing m; for
        a batch that carries a ``simulated`` mask, the samples it hides, recovered for the
        recovery losses only).
        """
        features = self.extractors(batch)
        available = batch["available"]  # (B, M)
        simulated = batch.get("simulated")
        missing_any = not bool(available.all())
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        recovered: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        bound = self._track_bounds(features, available) if self.training else self.feature_bound
        if self._flows_active and (self.training or missing_any or simulated is not None):
            latents = self._encode(features, available)
            if simulated is not None:
                _, recovered = self._recover(features, simulated, latents, bound)
            elif missing_any:
                features, recovered = self._recover(features, available, latents, bound)
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
    def _track_bounds(
        self, features: dict[str, torch.Tensor], available: torch.Tensor
    ) -> torch.Tensor:
        """Raise the bound to this batch's largest magnitudes; the bound this batch recovers
        within, as it stands after its own update (a micro-batch running beside it, see
        `dicmor.concurrency`, updates the buffer after it and does not move this one)."""
        seen = torch.stack([features[m].abs().amax(dim=(1, 2)) for m in self.info.modality_names])
        seen = (seen * available.T.to(seen.dtype)).amax(dim=1)  # (M,)
        with in_turn():
            self.feature_bound.copy_(torch.maximum(self.feature_bound, seen))
            return self.feature_bound.clone()

    def concurrency_ready(self) -> bool:
        """Whether training micro-batches may now run two at a time: once the first batch has
        initialised ActNorm and the prior (state that a forward sets only once)."""
        if self.flows is None or not self._flows_active:
            return True
        actnorms = [m for m in self.flows.modules() if isinstance(m, ActNorm)]
        return bool(self.prior_initialized) and all(bool(m.initialized.all()) for m in actnorms)

    def _dequantized(self, stacked: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """``stacked: (M, B, d, T')`` plus Gaussian noise of ``dequantize`` times each
        modality's RMS over its available samples (training only)."""
        scale = self.options.dequantize
        if scale == 0 or not self.training:
            return stacked
        noise_generator = generator("dequantize", stacked.device)  # a micro-batch's own
        if noise_generator is None and (
            self._noise is None or self._noise.device != stacked.device
        ):
            self._noise = torch.Generator(stacked.device).manual_seed(self._noise_seed)
        weights = available.T.to(stacked.dtype)[:, :, None, None]  # (M, B, 1, 1)
        count = (weights.sum(dim=1) * stacked.shape[2] * stacked.shape[3]).clamp(min=1.0)
        rms = ((stacked.square() * weights).sum(dim=1) / count).sqrt()  # (M, 1, 1)
        noise = torch.randn(
            stacked.shape,
            generator=self._noise if noise_generator is None else noise_generator,
            device=stacked.device,
            dtype=stacked.dtype,
        )
        return stacked + scale * rms[:, None] * noise

    def _encode(
        self, features: dict[str, torch.Tensor], available: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Latents ``{m: (index (n,), z (n, d, T'), logdet (n,))}`` of the available samples of
        each modality that has any."""
        names = self.info.modality_names
        if not self.options.nll_trains_extractor:
            # The likelihood of learnt features is degenerate: shrinking them raises it without
            # bound, until the floor at 0 bits/dim stops every gradient to the flows and prior.
            features = {m: x.detach() for m, x in features.items()}
        present = [
            j for j, any_available in enumerate(available.any(dim=0).tolist()) if any_available
        ]
        latents = {}
        if not present:
            return latents
        stacked = widened(torch.stack([features[m] for m in names]))
        # The flows, their log-determinants and the likelihoods run in float32 under autocast.
        with full_precision(stacked):
            return self._encode_stacked(stacked, available, present)

    def _encode_stacked(
        self, stacked: torch.Tensor, available: torch.Tensor, present: list[int]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`_encode` of ``stacked: (M, B, d, T')``, the modalities ``present`` in the batch."""
        names = self.info.modality_names
        latents = {}
        stacked = self._dequantized(stacked, available)
        if self.flows is None:
            # Identity flows: the latent is the feature itself, of log-determinant 0.
            z, logdet = stacked, stacked.new_zeros(stacked.shape[:2])
        elif len(present) == 1:
            # One modality alone (as when a whole batch keeps one): its group of the flow only.
            j = present[0]
            index = available[:, j].nonzero().squeeze(1)
            z, logdet = self.flows(stacked[j].index_select(0, index), group=j)
            return {names[j]: (index, z, logdet)}
        else:
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

    def _inverse(self, z: torch.Tensor, group: int | list[int]) -> torch.Tensor:
        """Decode latents with the flows of ``group`` (identity flows: unchanged)."""
        if self.flows is None:
            return z
        z = widened(z)
        with full_precision(z):
            if self.options.recovery_trains_flows:
                return self.flows.inverse(z, group=group)
            # No gradient reaches the flows through the recovery (SPEC §5.5).
            with torch.no_grad():
                return self.flows.inverse(z, group=group)

    def _recover(
        self,
        features: dict[str, torch.Tensor],
        available: torch.Tensor,
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        feature_bound: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Fill every entry that ``available: (B, M)`` hides from that sample's entries it
        shows (``latents`` may cover more samples than ``available`` shows: they are weighted
        out); decoded values are kept within ``feature_bound: (M,)``.

        The latents enter detached unless ``recovery_trains_flows``: the flows then learn from
        their NLL only.
        """
        names = self.info.modality_names
        reference = next(iter(features.values()))
        # Latents are float32 under autocast, as the flows that make them.
        dtype = torch.promote_types(reference.dtype, torch.float32)
        weights = available.to(dtype)  # (B, M)
        keep_graph = self.options.recovery_trains_flows and self.flows is not None
        # Every modality's latents on the whole batch, zeros where unavailable.
        rows = []
        for m in names:
            row = reference.new_zeros(reference.shape, dtype=dtype)
            if m in latents:
                index, z, _ = latents[m]
                row = row.index_copy(0, index, z if keep_graph else z.detach())
            rows.append(row)
        full = torch.stack(rows) * weights.T[:, :, None, None]  # (M, B, d, T')
        fused = None
        if self.mergers is None:
            with full_precision(full):
                fused = self._fuse_latents(full, weights)
        refinements: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Missing modalities decode and refine together, as the groups of one module (see
        # `recovery_passes`); the public merge decodes per set of samples.
        for recovery in recovery_passes(available, padded=fused is not None):
            targets = recovery.targets
            if fused is None:
                index = recovery.indices[0]
                decoded = torch.stack(
                    [self._decode_merge(j, full[:, index], weights[index]) for j in targets]
                )  # (len(targets), n, d, T')
            else:
                decoded = self._inverse(recovery.inputs(fused), targets)  # (len(targets), n, d, T')
            bound = feature_bound[targets][:, None, None, None]
            decoded = torch.nan_to_num(decoded, nan=0.0).clamp(-bound, bound)
            refined = decoded if self.refiners is None else self.refiners(decoded, group=targets)
            refinements.update(recovery.estimates(refined))
        return fill_recovered(features, names, refinements)

    def _fuse_latents(self, full: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One latent per sample from the available ones: ``full: (M, B, d, T')`` (zeros where
        unavailable), ``weights: (B, M)`` availability → ``(B, d, T')``.

        ``mean``: their mean. ``moment-matched``: with k latents of one class c, each a draw of
        N(mu_c, sigma_c^2), their mean has variance sigma_c^2 / k; it is rescaled about the
        class mean, mu + sqrt(k) (mean - mu), with mu the prior's class means weighted by the
        class posterior of the available latents (uniform class prior). One latent is kept
        as it is.
        """
        count = weights.sum(dim=1).clamp(min=1.0)  # (B,)
        mean = torch.einsum("mbct,bm->bct", full, weights) / count[:, None, None]
        if self.options.transfer != "moment-matched" or self.flows is None:
            return mean
        prior = self.prior
        with torch.no_grad():
            mu, log_std = prior.mean.detach(), prior.log_std.detach()  # (K, d)
            u = (full[:, :, None] - mu[None, None, :, :, None]) * (-log_std).exp()[..., None]
            log_density = (-0.5 * u.square() - log_std[..., None]).sum(dim=(3, 4))  # (M, B, K)
            log_posterior = torch.einsum("mbk,bm->bk", log_density, weights)
            posterior = log_posterior.softmax(dim=1)  # (B, K)
            centre = (posterior @ mu)[:, :, None]  # (B, d, 1)
        return centre + count.sqrt()[:, None, None] * (mean - centre)

    def _decode_merge(
        self, target: int, latents: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Decode each other modality's latent with ``target``'s inverse flow and merge them.

        latents: (M, n, d, T'); weights: (n, M) availability (unavailable decodings count as 0).
        """
        name = self.info.modality_names[target]
        sources = [j for j in range(len(self.info.modality_names)) if j != target]
        n = latents.shape[1]
        # The decodings carry no gradient to the flows (SPEC §5.5) unless
        # ``recovery_trains_flows``. The merge itself is learnt, by the reconstruction loss.
        # The sources stacked along the batch decode in one inverse pass.
        decoded = self._inverse(latents[sources].flatten(0, 1), target)
        decoded = decoded.view(len(sources), n, *decoded.shape[1:])  # (M − 1, n, d, T')
        decoded = decoded * weights[:, sources].T[:, :, None, None]
        return self.mergers[name](torch.cat(decoded.unbind(0), dim=1))  # (n, d, T')

    def loss(self, output: dict[str, Any], batch: dict) -> dict[str, torch.Tensor]:
        """task + nll_weight · Σ_m NLL_m (bits/dim) + reconstruction_weight · MSE (SPEC §5.8);
        ``recovery`` is the sum of the last two.

        The NLL covers the available samples of each modality; the reconstruction covers the
        recovered entries whose real features exist (``present``), so a genuinely absent entry
        contributes nothing.
        """
        options = self.options
        task = self.task_loss(output["prediction"], batch["label"])
        classes = prior_classes(batch["label"], self.info.task)
        zero = task.new_zeros(())
        latents = output["latents"]
        nll = zero
        if self._flows_active and self.flows is not None:
            if not latents:
                # At evaluation on complete data the forward pass skips the flows; a validation
                # loss that monitors the NLL still needs it.
                latents = self._encode(output["features"], batch["available"])
            if self.training and not bool(self.prior_initialized):
                self._initialize_prior(latents, classes)
            with full_precision(task):
                for index, z, logdet in latents.values():
                    log_prob = self.prior.log_prob(z, classes.index_select(0, index))
                    nll = nll + nll_bits_per_dim(log_prob, logdet, z.shape[1] * z.shape[2])
        alignment = zero
        if options.align_weight > 0 and latents:
            alignment = self._alignment(latents, batch["available"])
        reconstruction = self.reconstruction_loss(output, batch)
        recovery = (
            options.nll_weight * nll
            + self.config.recovery.reconstruction_weight * reconstruction
            + options.align_weight * alignment
        )
        return {
            "total": task + recovery,
            "task": task,
            "nll": nll,
            "reconstruction": reconstruction,
            "alignment": alignment,
            "recovery": recovery,
        }

    def _alignment(
        self,
        latents: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        available: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared distance, per element, of each available latent of a sample to the mean
        of that sample's available latents, over the samples with two or more (0 if none)."""
        names = [m for m in self.info.modality_names if m in latents]
        reference = latents[names[0]][1]
        batch_size = available.shape[0]
        rows, columns = [], []
        for m in names:
            index, z, _ = latents[m]
            rows.append(z.new_zeros(batch_size, *z.shape[1:]).index_copy(0, index, z))
            columns.append(z.new_zeros(batch_size).index_fill(0, index, 1.0))
        full, weights = torch.stack(rows), torch.stack(columns)  # (M', B, d, T'), (M', B)
        count = weights.sum(dim=0)  # (B,)
        paired = count >= 2
        if not bool(paired.any()):
            return reference.new_zeros(())
        mean = (full * weights[:, :, None, None]).sum(dim=0) / count.clamp(min=1.0)[:, None, None]
        squared = (full - mean).square().mean(dim=(2, 3)) * weights  # (M, B)
        return squared[:, paired].sum() / weights[:, paired].sum()

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
