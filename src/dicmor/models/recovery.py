"""What methods that recover missing features share: the reconstruction target and loss."""

from __future__ import annotations

from dataclasses import replace

import torch

from dicmor.config import ConfigError, ModelConfig
from dicmor.models.base import DataInfo, Stage
from dicmor.models.two_stage import TwoStage


def missing_subsets(available: torch.Tensor) -> list[tuple[torch.Tensor, list[int]]]:
    """Group the modalities by the samples that miss them: ``[(index (n,), [j, ...]), ...]``,
    one entry per distinct non-empty set of samples, so that modalities missing from the same
    samples (a whole batch keeping one modality, or a single sample) are recovered in one pass of
    their grouped networks. ``available: (B, M)`` bool."""
    subsets: dict[tuple[int, ...], tuple[torch.Tensor, list[int]]] = {}
    for j in range(available.shape[1]):
        index = (~available[:, j]).nonzero().squeeze(1)
        if index.numel() > 0:
            subsets.setdefault(tuple(index.tolist()), (index, []))[1].append(j)
    return list(subsets.values())


def fill_recovered(
    features: dict[str, torch.Tensor],
    names: tuple[str, ...],
    estimates: dict[int, tuple[torch.Tensor, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Put recovered entries in place: ``estimates`` ``{j: (index (n,), x (n, d, T'))}`` by
    modality position → (``features`` with those rows replaced, ``{m: (index, x)}``)."""
    filled = dict(features)
    recovered = {}
    for j, m in enumerate(names):
        if j in estimates:
            index, estimate = estimates[j]
            filled[m] = features[m].index_copy(0, index, estimate)
            recovered[m] = (index, estimate)
    return filled, recovered


class Recovering(TwoStage):
    """A two-stage method whose ``forward`` output carries ``recovered``:
    ``{m: (index (n,), features (n, d, T'))}`` for the samples missing modality m.

    With ``model.recovery.stage1_recovery_rate`` > 0 the complete-data stage also simulates
    missing modalities at that rate (``batch["simulated"]``): the recovery learns from them
    while the fusion sees complete data, so stage 2 does not start the recovery at random.
    """

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__(info, config)
        # One modality's features are recovered from the others' (and, in DiCMoR, decoded by
        # another modality's flow), so all of them need one length.
        if len(set(info.seq_lens.values())) > 1:
            listed = ", ".join(f"{m} {t}" for m, t in info.seq_lens.items())
            raise ConfigError(
                f"method '{config.method}' needs modalities of one sequence length, got "
                f"{listed}; give --set data.seq_len=L to resample them"
            )

    def stages(self) -> list[Stage]:
        """As `TwoStage`, the complete-data stage simulating missingness if configured."""
        complete, *rest = super().stages()
        rate = self.config.recovery.stage1_recovery_rate
        return [replace(complete, simulate_rate=rate), *rest]

    @torch.no_grad()
    def target_features(self, modality: str, batch: dict, index: torch.Tensor) -> torch.Tensor:
        """Shallow features of the real (unmasked) values of ``modality`` for samples ``index``,
        without input dropout and without gradient: the reconstruction target (n, d, T')."""
        extractor = self.extractors.convs[modality]
        raw = batch["targets"][modality].index_select(0, index)  # (n, T, D)
        encoder = self.extractors.text_encoder
        if modality == "text" and encoder is not None:
            # A target must not depend on dropout: the encoder runs in eval mode here.
            mode = encoder.training
            encoder.eval()
            raw = encoder(batch["target_text_bert"].index_select(0, index))
            encoder.train(mode)
        return extractor.project(raw)

    def reconstruction_loss(self, output: dict, batch: dict) -> torch.Tensor:
        """MSE between recovered and real features, averaged over recovered modalities, over the
        entries whose real features exist (``present``): a genuinely absent entry contributes
        nothing. 0 when nothing is recovered or the batch carries no targets."""
        errors = []
        if output["recovered"] and "targets" in batch:
            for m, (index, recovered) in output["recovered"].items():
                j = self.info.modality_names.index(m)
                real = batch["present"][index, j]  # (n,)
                if not bool(real.any()):
                    continue
                keep = real.nonzero().squeeze(1)
                target = self.target_features(m, batch, index.index_select(0, keep))
                errors.append((recovered.index_select(0, keep) - target).square().mean())
        if not errors:
            return output["prediction"].new_zeros(())
        return torch.stack(errors).mean()
