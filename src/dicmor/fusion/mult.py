"""Multimodal Transformer (MulT) fusion, generalised to any number of named modalities.

Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences", ACL 2019.
For each target modality m, one crossmodal transformer per other modality lets m's sequence attend
to that source; their outputs are concatenated along channels and summarised by a self-attention
transformer whose last time step represents m. The per-modality vectors are concatenated and passed
through a residual two-layer MLP and a linear head. DiCMoR (Wang et al., ICCV 2023) uses this as its
fusion network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dicmor.nn.dropout import Dropout
from dicmor.nn.transformer import TransformerEncoder

__all__ = ["MulT", "MulTConfig"]


@dataclass(frozen=True)
class MulTConfig:
    """Hyperparameters of `MulT`.

    Defaults follow the published MOSI configuration; its per-modality attention dropouts
    (audio 0.2, vision 0.0) go in `attn_dropout_by_modality`, since names depend on the dataset.
    """

    num_heads: int = 8
    """Attention heads; must divide the feature width d."""

    num_layers: int = 4
    """Layers L of each crossmodal transformer; the self-attention ones use max(L, 3)."""

    attn_dropout: float = 0.3
    """Attention-weight dropout, for targets without an override and for self-attention."""

    attn_dropout_by_modality: dict[str, float] | None = None
    """Attention dropout of the crossmodal transformers of a given modality, e.g.
    {"audio": 0.2, "vision": 0.0}; which modality of a block is meant is
    `attn_dropout_keyed_by`."""

    attn_dropout_keyed_by: Literal["source", "target"] = "source"
    """``source``: a crossmodal block uses the dropout of the modality its keys and values come
    from, as the public MulT and DiCMoR code do (the block "text with audio" uses the audio
    dropout); ``target``: that of the modality whose queries it refines."""

    relu_dropout: float = 0.1
    """Dropout after the feed-forward ReLU in every transformer layer."""

    res_dropout: float = 0.1
    """Dropout on each transformer sub-layer's output before its residual sum."""

    embed_dropout: float = 0.2
    """Dropout on the position-augmented transformer inputs."""

    out_dropout: float = 0.5
    """Dropout inside the residual MLP before the head."""

    attn_mask: bool = False
    """Hide future time steps in every attention (causal transformers)."""

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise ValueError(f"MulTConfig.num_heads: must be >= 1, got {self.num_heads}")
        if self.num_layers < 1:
            raise ValueError(f"MulTConfig.num_layers: must be >= 1, got {self.num_layers}")
        if self.attn_dropout_keyed_by not in ("source", "target"):
            raise ValueError(
                "MulTConfig.attn_dropout_keyed_by: must be 'source' or 'target', "
                f"got {self.attn_dropout_keyed_by!r}"
            )
        for name in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout"):
            _check_probability(f"MulTConfig.{name}", getattr(self, name))
        if self.attn_dropout_by_modality is not None:
            if not isinstance(self.attn_dropout_by_modality, Mapping):
                raise ValueError(
                    "MulTConfig.attn_dropout_by_modality: must be a mapping from modality name "
                    f"to dropout, got {type(self.attn_dropout_by_modality).__name__}"
                )
            for modality, value in self.attn_dropout_by_modality.items():
                _check_probability(f"MulTConfig.attn_dropout_by_modality[{modality!r}]", value)
            # A private copy, so that mutating the caller's dict cannot change a frozen config.
            object.__setattr__(
                self, "attn_dropout_by_modality", dict(self.attn_dropout_by_modality)
            )

    def attn_dropout_for(self, modality: str) -> float:
        """Attention dropout of the crossmodal blocks keyed by `modality`."""
        overrides = self.attn_dropout_by_modality or {}
        return overrides.get(modality, self.attn_dropout)

    def crossmodal_attn_dropout(self, target: str, source: str) -> float:
        """Attention dropout of the crossmodal block whose queries come from `target` and whose
        keys and values come from `source`."""
        return self.attn_dropout_for(source if self.attn_dropout_keyed_by == "source" else target)


def _check_probability(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1), got {value!r}")


class MulT(nn.Module):
    """Multimodal Transformer over M ≥ 2 named modalities.

    The M·(M−1) crossmodal transformers share one shape, so they are the groups of one grouped
    encoder, `crossmodal`, in the order of `pairs` ((target, source), targets in modality
    order); the M self-attention transformers over each target's concatenated crossmodal outputs
    are the groups of `self_attention`. When every modality has the same length all of them run
    in two passes; otherwise each group runs alone on its own lengths.

    Args:
        modality_names: the modalities, in the order their vectors are concatenated.
        dim: width d of every modality's features and of each crossmodal transformer.
        config: hyperparameters.
        output_dim: size of the prediction (1 for regression, K classes for classification).

    Shapes:
        features: {name: (B, d, T_name)} (lengths may differ) → (B, output_dim)
    """

    def __init__(
        self, modality_names: Sequence[str], dim: int, config: MulTConfig, output_dim: int
    ) -> None:
        super().__init__()
        names = list(modality_names)
        if dim < 1:
            raise ValueError(f"MulT.dim: must be >= 1, got {dim}")
        if dim % config.num_heads != 0:
            raise ValueError(f"MulT.dim: {dim} is not divisible by num_heads={config.num_heads}")
        if len(names) < 2:
            raise ValueError(f"MulT.modality_names: need at least 2 modalities, got {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"MulT.modality_names: names must be unique, got {names}")
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"MulT.modality_names: names must be non-empty strings, got {names}")
        unknown = sorted(set(config.attn_dropout_by_modality or {}) - set(names))
        if unknown:
            raise ValueError(
                f"MulTConfig.attn_dropout_by_modality: unknown modalities {unknown} "
                f"(model modalities: {names})"
            )
        if output_dim < 1:
            raise ValueError(f"MulT.output_dim: must be >= 1, got {output_dim}")
        self.modality_names = tuple(names)
        self.config = config
        self.output_dim = output_dim
        self.dim = dim
        num_sources = len(names) - 1
        self.pairs = tuple((t, s) for t in names for s in names if s != t)
        index = {name: j for j, name in enumerate(names)}
        self.register_buffer(
            "_targets", torch.tensor([index[t] for t, _ in self.pairs]), persistent=False
        )
        self.register_buffer(
            "_sources", torch.tensor([index[s] for _, s in self.pairs]), persistent=False
        )

        self.crossmodal = TransformerEncoder(
            dim,
            config.num_heads,
            config.num_layers,
            attn_dropout=[config.crossmodal_attn_dropout(t, s) for t, s in self.pairs],
            relu_dropout=config.relu_dropout,
            res_dropout=config.res_dropout,
            embed_dropout=config.embed_dropout,
            attn_mask=config.attn_mask,
            groups=len(self.pairs),
        )
        self.self_attention = TransformerEncoder(
            num_sources * dim,
            config.num_heads,
            max(config.num_layers, 3),
            attn_dropout=config.attn_dropout,
            relu_dropout=config.relu_dropout,
            res_dropout=config.res_dropout,
            embed_dropout=config.embed_dropout,
            attn_mask=config.attn_mask,
            groups=len(names),
        )
        fused = len(names) * num_sources * dim
        self.representation_dim = fused
        self.proj1 = nn.Linear(fused, fused)
        self.proj2 = nn.Linear(fused, fused)
        self.out_dropout = Dropout(config.out_dropout)
        self.head = nn.Linear(fused, output_dim)

    def _check(self, features: Mapping[str, Tensor]) -> None:
        if set(features) != set(self.modality_names):
            raise ValueError(
                f"MulT: features must have exactly the modalities {list(self.modality_names)}, "
                f"got {sorted(features)}"
            )
        batch = None
        for name, x in features.items():
            if x.dim() != 3 or x.shape[1] != self.dim:
                raise ValueError(
                    f"MulT: features[{name!r}] must be (B, {self.dim}, T), got {tuple(x.shape)}"
                )
            if batch is not None and x.shape[0] != batch:
                raise ValueError(
                    f"MulT: features[{name!r}] has batch size {x.shape[0]}, others have {batch}"
                )
            batch = x.shape[0]

    def representation(self, features: Mapping[str, Tensor]) -> Tensor:
        """Fused vector before the MLP: {name: (B, d, T_name)} → (B, M·(M−1)·d)."""
        self._check(features)
        names = self.modality_names
        num = len(names)
        # Lengths compared as ints: a traced size is a tensor, and distinct tensors of one value
        # would count as distinct lengths.
        if len({int(features[name].shape[2]) for name in names}) > 1:
            return self._representation_by_group(features)
        sequences = torch.stack([features[name].transpose(1, 2) for name in names])  # (M, B, T, d)
        crossed = self.crossmodal(
            sequences.index_select(0, self._targets), sequences.index_select(0, self._sources)
        )  # (M·(M−1), B, T, d), pairs in target-major order
        _, batch, length, dim = crossed.shape
        crossed = crossed.view(num, num - 1, batch, length, dim).permute(0, 2, 3, 1, 4)
        # (M, B, T, M − 1, d): each target's crossmodal outputs side by side, sources in order
        hidden = self.self_attention(
            crossed.reshape(num, batch, length, (num - 1) * dim), last_step_only=True
        )  # (M, B, 1, (M−1)·d)
        return hidden.transpose(0, 1).reshape(batch, -1)  # (B, M·(M−1)·d)

    def _representation_by_group(self, features: Mapping[str, Tensor]) -> Tensor:
        """`representation` for modalities of different lengths: one group at a time."""
        sequences = {name: x.transpose(1, 2) for name, x in features.items()}  # (B, T, d) each
        crossed: dict[str, list[Tensor]] = {name: [] for name in self.modality_names}
        for g, (target, source) in enumerate(self.pairs):
            crossed[target].append(
                self.crossmodal(sequences[target], sequences[source], group=g)
            )  # (B, T_target, d)
        summaries = []
        for j, target in enumerate(self.modality_names):
            hidden = self.self_attention(
                torch.cat(crossed[target], dim=-1), group=j, last_step_only=True
            )  # (B, 1, (M−1)·d)
            summaries.append(hidden[:, 0])
        return torch.cat(summaries, dim=-1)  # (B, M·(M−1)·d)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """{name: (B, d, T_name)} → (B, output_dim)."""
        fused = self.representation(features)  # (B, M·(M−1)·d)
        fused = fused + self.proj2(self.out_dropout(self.proj1(fused).relu()))
        return self.head(fused)
