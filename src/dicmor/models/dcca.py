"""DCCA: Deep Canonical Correlation Analysis (Andrew, Arora, Bilmes, Livescu; ICML 2013).

One MLP encoder per modality maps its utterance-level vector (the time-average over its valid
steps, :func:`~dicmor.models.utterance.utterance_vectors`) to k dimensions; the encoders maximise
the total canonical correlation between every pair of modalities' outputs (Andrew et al.'s
objective: the sum of the top-k singular values of Σ11^{-1/2} Σ12 Σ22^{-1/2}, ridge r on both
covariances). A head then predicts from the concatenated projections, the encoders frozen.

Faithful: the encoders ([D, 256, 256, 256, k], BatchNorm + ReLU, last layer linear), the
objective and its ridge (r = 1e-3), summed over modality pairs for three or more modalities, the
field's optimiser for the CCA stage (Adam 1e-3, weight decay 1e-4) and its large batch (1024,
its own, not ``train.batch_size``).

Adaptations here:
- A missing modality's vector is the mean of the observed *training* vectors of that modality
  (accumulated in training only; the field's code takes the mean over all splits, which reads
  the test data).
- A pair's correlation is computed over the samples of the batch that have both modalities
  (filled values carry no correlation), and only when there are more such samples than k.
- The downstream classifier (a LinearSVC in the field's code) is a linear head trained in a
  second stage on the frozen projections, under the same missing protocol.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from dicmor.data.batches import Batch
from dicmor.errors import ConfigError
from dicmor.models.base import DataInfo, ModelOutput, MultimodalModel, Stage
from dicmor.models.mean_fill import RunningMean
from dicmor.models.utterance import mlp, utterance_vectors
from dicmor.nn.precision import full_precision, widened
from dicmor.registry import register


@dataclass(frozen=True)
class DCCAConfig:
    """Options of ``dcca`` (``model.dcca``), the field's values as defaults."""

    hidden: tuple[int, ...] = (256, 256, 256)
    """Hidden widths of each modality's encoder."""
    out_dim: int = 32
    """k: the width of each projection, and the number of canonical correlations summed."""
    ridge: float = 1e-3
    """r1 = r2: added to the diagonal of both covariance matrices."""
    batch_size: int = 1024
    """Batch size of the CCA stage (covariances need large batches)."""
    lr: float = 1e-3
    """Adam learning rate of the CCA stage."""
    weight_decay: float = 1e-4
    """Adam weight decay of the CCA stage."""
    head_lr: float | None = None
    """Learning rate of the head stage; ``None``: ``train.lr``."""
    cca_epochs: int | None = None
    """Epoch budget of the CCA stage; ``None``: ``train.max_epochs``."""

    def __post_init__(self) -> None:
        if self.out_dim < 1 or any(h < 1 for h in self.hidden):
            raise ConfigError("model.dcca: out_dim and hidden widths must be >= 1")
        if self.ridge <= 0:
            raise ConfigError(f"model.dcca.ridge must be positive, got {self.ridge}")
        if self.batch_size < 2:
            raise ConfigError(f"model.dcca.batch_size must be >= 2, got {self.batch_size}")


def _inverse_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse square root of a symmetric positive-definite matrix (by ``eigh``)."""
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=1e-12).rsqrt()) @ vectors.T


def canonical_correlation(
    h1: torch.Tensor, h2: torch.Tensor, *, ridge: float = 1e-3, k: int | None = None
) -> torch.Tensor:
    """Andrew et al.'s total correlation of two views ``(n, k1)`` and ``(n, k2)``: the sum of
    the top ``k`` (default all) singular values of T = Σ11^{-1/2} Σ12 Σ22^{-1/2}, with the
    covariances centred, divided by n − 1 and ridged by ``ridge`` · I. In float32 under
    autocast: bfloat16 covariances would be too coarse for their inverse square roots."""
    h1, h2 = widened(h1), widened(h2)
    with full_precision(h1):
        return _canonical_correlation(h1, h2, ridge, k)


def _canonical_correlation(
    h1: torch.Tensor, h2: torch.Tensor, ridge: float, k: int | None
) -> torch.Tensor:
    n = h1.shape[0]
    h1 = h1 - h1.mean(dim=0)
    h2 = h2 - h2.mean(dim=0)
    s11 = h1.T @ h1 / (n - 1) + ridge * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)
    s22 = h2.T @ h2 / (n - 1) + ridge * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.T @ h2 / (n - 1)
    t = _inverse_sqrt(s11) @ s12 @ _inverse_sqrt(s22)
    # Singular values of T: square roots of the eigenvalues of TᵀT (symmetric, so eigh).
    values = torch.linalg.eigh(t.T @ t).eigenvalues.clamp(min=1e-12).sqrt()
    k = values.shape[0] if k is None else min(k, values.shape[0])
    return values[-k:].sum()


@register("dcca", config=DCCAConfig)
class DCCA(MultimodalModel):
    """Per-modality MLP encoders trained by total canonical correlation; a head on their
    concatenated projections."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        options: DCCAConfig = self.options
        names = info.modality_names
        self.means = nn.ModuleDict({m: RunningMean(info.feature_dims[m]) for m in names})
        self.encoders = nn.ModuleDict(
            {m: mlp([info.feature_dims[m], *options.hidden, options.out_dim]) for m in names}
        )
        self.head = nn.Linear(len(names) * options.out_dim, info.output_dim)

    def stages(self) -> list[Stage]:
        """The CCA stage (encoders, its own batch and optimiser), then the head on frozen
        projections; both under the protocol."""
        options: DCCAConfig = self.options
        return [
            Stage(
                "cca",
                objective="cca",
                monitor="cca",
                batch_size=options.batch_size,
                lr=options.lr,
                weight_decay=options.weight_decay,
                max_epochs=options.cca_epochs,
                frozen=("head",),
            ),
            Stage(
                "head", objective="task", monitor="task", lr=options.head_lr, frozen=("encoders",)
            ),
        ]

    def begin_stage(self, stage: Stage) -> None:
        """As the base; frozen encoders also keep their BatchNorm statistics."""
        super().begin_stage(stage)
        self._encoders_frozen = "encoders" in stage.frozen
        self.train(self.training)

    def train(self, mode: bool = True) -> DCCA:
        super().train(mode)
        if getattr(self, "_encoders_frozen", False):
            self.encoders.eval()
        return self

    def views(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Each modality's utterance vector, a missing one replaced by the mean of the
        available training vectors (the mean is updated in training only)."""
        available = batch["available"]
        views = {}
        for j, (m, x) in enumerate(batch["inputs"].items()):
            vector = utterance_vectors(x)  # (B, D)
            keep = available[:, j]
            if self.training:
                self.means[m].update(vector[keep])
            fill = self.means[m].value().to(vector.dtype)
            views[m] = torch.where(keep[:, None], vector, fill)
        return views

    def forward(self, batch: Batch) -> ModelOutput:
        """``prediction`` and ``latents``: ``projections`` ``{m: (B, k)}`` and the utterance
        ``views`` ``{m: (B, D_m)}`` they were computed from."""
        views = self.views(batch)
        # BatchNorm cannot train on one sample (a last batch of 1): use its running statistics.
        single = self.training and len(batch["available"]) == 1
        if single:
            self.encoders.eval()
        projections = {m: self.encoders[m](v) for m, v in views.items()}
        if single:
            self.train(True)
        prediction = self.head(torch.cat(list(projections.values()), dim=1))
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {
            "prediction": prediction,
            "latents": {"projections": projections, "views": views},
        }

    def correlation(self, output: ModelOutput, batch: Batch) -> torch.Tensor:
        """The total canonical correlation summed over modality pairs, each over the samples
        that have both modalities (pairs with no more such samples than k are left out)."""
        options: DCCAConfig = self.options
        names = self.info.modality_names
        projections = output["latents"]["projections"]
        available = batch["available"]
        # Zero, but on the graph of the projections, when no pair qualifies.
        total = sum(widened(p).sum() for p in projections.values()) * 0.0
        for i, j in itertools.combinations(range(len(names)), 2):
            both = (available[:, i] & available[:, j]).nonzero().squeeze(1)
            if len(both) <= options.out_dim:
                continue
            total = total + canonical_correlation(
                projections[names[i]].index_select(0, both),
                projections[names[j]].index_select(0, both),
                ridge=options.ridge,
                k=options.out_dim,
            )
        return total

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """``cca``: minus the total correlation; ``task``; ``total`` is their sum."""
        task = self.task_loss(output["prediction"], batch["label"])
        cca = -self.correlation(output, batch)
        return {"total": task + cca, "task": task, "cca": cca}
