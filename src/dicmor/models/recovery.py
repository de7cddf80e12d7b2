"""What methods that recover missing features share: the reconstruction target and loss."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from dicmor.config import ConfigError, ModelConfig
from dicmor.models.base import DataInfo, Stage
from dicmor.models.two_stage import TwoStage
from dicmor.nn.precision import widened


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


PADDED_PASS_MAX_EXTRA = 2
"""Modalities missing from different samples are recovered in one pass of their grouped networks,
each group on as many samples as the modality missing from most (the others padded by repeating
a sample, the padding dropped), when that pass computes at most this many samples beyond the
missing entries for each pass it saves; otherwise one pass per set of samples. A pass costs a
fixed number of small operations, a padded sample its arithmetic: measured on a 2-core AMD EPYC
(torch 2.13; DiCMoR training steps, the two ways alternating in one process, medians), MOSI's
call-bound batches of 4 (width 32) gain even from 6 extra samples for 2 passes saved (missing
counts (1, 2, 1) to (1, 4, 1): 1.23–1.32 times faster), MOSEI's batches of 16 (width 64) only
from a few: 1.05–1.07 with 2 extra samples for 2 passes saved, level at 7, 0.96 at 9, 0.88 at 16.
With this cut, `benchmarks/speed.py`'s eight random-protocol batches (``r``): MOSI 1.12 times,
MOSEI 1.02."""


@dataclass(frozen=True)
class RecoveryPass:
    """One pass of the grouped recovery networks over the modalities ``targets``.

    ``indices[g]`` are the samples that miss ``targets[g]``; ``rows`` ``(len(targets), n)`` the
    samples each group runs on (its own first, then its last repeated up to n), or None when
    every target misses the same samples (then one gather serves all groups).
    """

    targets: list[int]
    indices: list[torch.Tensor]
    rows: torch.Tensor | None = None

    def inputs(self, source: torch.Tensor) -> torch.Tensor:
        """What each group runs on: ``source (B, *)`` → ``(len(targets), n, *)``."""
        if self.rows is None:
            selected = source.index_select(0, self.indices[0])
            return selected.expand(len(self.targets), *selected.shape)
        groups, n = self.rows.shape
        return source.index_select(0, self.rows.flatten()).view(groups, n, *source.shape[1:])

    def estimates(self, outputs: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``outputs (len(targets), n, *)`` → ``{j: (index (n_j,), estimate (n_j, *))}``, the
        padding dropped."""
        return {
            j: (index, x[: index.numel()])
            for j, index, x in zip(self.targets, self.indices, outputs.unbind(0), strict=True)
        }


def recovery_passes(available: torch.Tensor, padded: bool = True) -> list[RecoveryPass]:
    """The passes that recover everything ``available: (B, M)`` hides: one per distinct set of
    samples (`missing_subsets`), or, with ``padded``, a single pass over every missing modality
    where it computes few enough samples beyond the missing entries (`PADDED_PASS_MAX_EXTRA`)."""
    subsets = missing_subsets(available)
    if padded and len(subsets) > 1:
        missing = {j: index for index, group in subsets for j in group}
        targets = sorted(missing)
        indices = [missing[j] for j in targets]
        n = max(int(index.numel()) for index in indices)
        extra = len(targets) * n - sum(int(index.numel()) for index in indices)
        if extra <= PADDED_PASS_MAX_EXTRA * (len(subsets) - 1):
            rows = torch.stack(
                [torch.cat([index, index[-1:].expand(n - index.numel())]) for index in indices]
            )  # (len(targets), n)
            return [RecoveryPass(targets, indices, rows)]
    return [RecoveryPass(group, [index] * len(group)) for index, group in subsets]


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
            filled[m] = features[m].index_copy(0, index, estimate.to(features[m].dtype))
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
                error = widened(recovered.index_select(0, keep)) - widened(target)
                errors.append(error.square().mean())
        if not errors:
            return output["prediction"].new_zeros(())
        return torch.stack(errors).mean()
