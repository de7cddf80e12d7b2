"""Neural building blocks shared by the models: temporal convolution, grouped layers, transformer
layers and residual channel attention."""

from __future__ import annotations

from torch import nn

from dicmor.nn.grouped import GroupedLayerNorm, GroupedLinear
from dicmor.nn.rcan import ChannelAttention, RefinementNetwork, ResidualChannelAttentionBlock
from dicmor.nn.temporal import TemporalConv, temporal_conv
from dicmor.nn.transformer import (
    TransformerEncoder,
    TransformerLayer,
    causal_mask,
    sinusoidal_positions,
)

__all__ = [
    "ChannelAttention",
    "GroupedLayerNorm",
    "GroupedLinear",
    "RefinementNetwork",
    "ResidualChannelAttentionBlock",
    "TemporalConv",
    "TransformerEncoder",
    "TransformerLayer",
    "causal_mask",
    "count_parameters",
    "sinusoidal_positions",
    "temporal_conv",
]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in `module` (only those with requires_grad if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
