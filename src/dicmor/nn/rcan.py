"""Residual channel attention over time, used by DiCMoR to refine recovered features.

Residual channel attention blocks come from RCAN (Zhang et al., "Image Super-Resolution Using Very
Deep Residual Channel Attention Networks", ECCV 2018), here in 1-D over the time axis. DiCMoR
(Wang et al., ICCV 2023) refines each flow-decoded modality with one residual group of them.

Every layer here is grouped (see :mod:`dicmor.nn.grouped`): with ``groups = G`` a module holds G
independent networks, one per modality, and modalities recovered for the same samples are
refined in one pass. ``group`` selects which run, as in the grouped layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.nn.grouped import GroupedLinear, GroupSelection

__all__ = [
    "ChannelAttention",
    "RefinementNetwork",
    "ResidualChannelAttentionBlock",
    "TimeConv",
]


def _same_padding(owner: str, kernel_size: int) -> int:
    # Only odd kernels keep the length with symmetric padding.
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{owner}.kernel_size: must be odd and >= 1, got {kernel_size}")
    return kernel_size // 2


class TimeConv(GroupedLinear):
    """Convolution over time with 'same' zero padding, on channels-last sequences, per group.

    The k shifted copies of the padded input are concatenated along channels and mapped by one
    (batched) matrix product: the function of `torch.nn.Conv1d`, at these sizes (tens of channels
    and time steps) with a fraction of its cost for more than one sample, forward and backward.
    Weights are initialised as `torch.nn.Conv1d` does (uniform in ±1/√(k·in_channels)).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd temporal kernel k.
        groups: number of independent convolutions G.

    Shapes:
        x: (G', N, T, in_channels) → (G', N, T, out_channels); ``weight`` is (G, k·in, out),
        row block i multiplying the input shifted by i − k // 2 steps.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1
    ) -> None:
        self.padding = _same_padding("TimeConv", kernel_size)
        super().__init__(groups, kernel_size * in_channels, out_channels)
        self.kernel_size = kernel_size

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', N, T, in_channels) → (G', N, T, out_channels)."""
        if self.kernel_size > 1:
            length = x.shape[-2]
            padded = F.pad(x, (0, 0, self.padding, self.padding))  # (G', N, T + k − 1, C)
            x = torch.cat(
                [padded[..., i : i + length, :] for i in range(self.kernel_size)], dim=-1
            )  # (G', N, T, k·C)
        return super().forward(x, group)


class ChannelAttention(nn.Module):
    """Rescale each channel by a gate computed from the channel's mean over time.

    Global average pool over time → 1×1 conv down to max(1, C // reduction) → ReLU → 1×1 conv up
    → sigmoid → multiply. On the pooled vector a 1×1 conv is a linear map, so linear layers are
    used: the same function with less per-call overhead.

    Shapes:
        x: (G', N, T, C) (channels last) → (G', N, T, C)
    """

    def __init__(self, channels: int, reduction: int = 16, groups: int = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ChannelAttention.channels: must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"ChannelAttention.reduction: must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.down = GroupedLinear(groups, channels, hidden)
        self.up = GroupedLinear(groups, hidden, channels)

    def gate(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """Per-channel scale in (0, 1). x: (G', N, T, C) → (G', N, 1, C)."""
        pooled = x.mean(dim=-2)  # (G', N, C)
        hidden = self.down(pooled, group).relu()
        return self.up(hidden, group).sigmoid().unsqueeze(-2)  # (G', N, 1, C)

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', N, T, C) → (G', N, T, C)."""
        return x * self.gate(x, group)


class ResidualChannelAttentionBlock(nn.Module):
    """conv → ReLU → conv → channel attention, plus the block input.

    Convolutions use 'same' padding so the block keeps the sequence length.

    Shapes:
        x: (G', N, T, C) (channels last) → (G', N, T, C)
    """

    def __init__(
        self, channels: int, kernel_size: int = 3, reduction: int = 16, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv1 = TimeConv(channels, channels, kernel_size, groups)
        self.conv2 = TimeConv(channels, channels, kernel_size, groups)
        self.attention = ChannelAttention(channels, reduction, groups)

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', N, T, C) → (G', N, T, C)."""
        h = self.conv2(self.conv1(x, group).relu(), group)
        return x + self.attention(h, group)


class ResidualGroup(nn.Module):
    """A chain of residual channel-attention blocks closed by a conv, with a skip around it.

    Shapes:
        x: (G', N, T, C) (channels last) → (G', N, T, C)
    """

    def __init__(
        self, channels: int, num_blocks: int, kernel_size: int, reduction: int, groups: int = 1
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualChannelAttentionBlock(channels, kernel_size, reduction, groups)
            for _ in range(num_blocks)
        )
        self.conv = TimeConv(channels, channels, kernel_size, groups)

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', N, T, C) → (G', N, T, C)."""
        h = x
        for block in self.blocks:
            h = block(h, group)
        return x + self.conv(h, group)


class RefinementNetwork(nn.Module):
    """DiCMoR's refinement of a recovered modality (one RCAN residual group in a wider space).

    1×1 conv d → 2d; residual group (num_blocks blocks + conv, with the group skip); conv; long
    skip from the widened input; 1×1 conv 2d → d. As in RCAN, the long skip spans the group and
    the conv after it, so the two skips are distinct paths. The body runs channels last, where
    every convolution is one matrix product.

    Args:
        channels: feature width d.
        num_blocks: residual channel-attention blocks in the group (20 in DiCMoR).
        reduction: channel-attention reduction factor.
        kernel_size: temporal kernel of the body convolutions (odd; 'same' padding).
        groups: number of independent networks G (one per modality).

    Shapes:
        x: (G', B, d, T) → (G', B, d, T) for the G' selected groups; a single group (``groups``
        1, or ``group`` an index) also takes and returns (B, d, T).
    """

    def __init__(
        self,
        channels: int,
        num_blocks: int = 20,
        reduction: int = 16,
        kernel_size: int = 3,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"RefinementNetwork.channels: must be >= 1, got {channels}")
        if num_blocks < 0:
            raise ValueError(f"RefinementNetwork.num_blocks: must be >= 0, got {num_blocks}")
        if groups < 1:
            raise ValueError(f"RefinementNetwork.groups: must be >= 1, got {groups}")
        _same_padding("RefinementNetwork", kernel_size)
        wide = 2 * channels
        self.channels = channels
        self.groups = groups
        # The layers' own initialisation is redrawn below; it must not advance the generator.
        with torch.random.fork_rng(devices=[]):
            self.head = TimeConv(channels, wide, 1, groups)
            self.group = ResidualGroup(wide, num_blocks, kernel_size, reduction, groups)
            self.body_conv = TimeConv(wide, wide, kernel_size, groups)
            self.tail = TimeConv(wide, channels, 1, groups)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise group after group, each as one network of `torch.nn.Conv1d` and
        `torch.nn.Linear` layers would be, drawing in the same order: G groups start as G
        separately built networks would, from the same generator state."""
        layers = [m for m in self.modules() if isinstance(m, GroupedLinear)]
        for g in range(self.groups):
            for layer in layers:
                weight = torch.empty(layer.out_features, layer.in_features)
                fan_in = layer.in_features
                if isinstance(layer, TimeConv):
                    bound = fan_in**-0.5
                    nn.init.uniform_(weight, -bound, bound)
                    bias = torch.empty(layer.out_features).uniform_(-bound, bound)
                else:  # the channel attention's linear maps
                    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
                    bound = 1 / math.sqrt(fan_in)
                    bias = torch.empty(layer.out_features).uniform_(-bound, bound)
                layer.weight[g].copy_(weight.T)
                layer.bias[g].copy_(bias)

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', B, d, T) → (G', B, d, T); (B, d, T) → (B, d, T) for a single group."""
        selected = (
            self.groups if group is None else 1 if isinstance(group, int) else len(list(group))
        )
        single = x.dim() == 3 and selected == 1
        if single:
            x = x[None]
        if x.dim() != 4 or x.shape[0] != selected or x.shape[2] != self.channels:
            expected = f"(B, {self.channels}, T)" if selected == 1 else ""
            expected += " or " if selected == 1 else ""
            expected += f"({selected}, B, {self.channels}, T)"
            raise ValueError(f"RefinementNetwork: expected input {expected}, got {tuple(x.shape)}")
        wide = self.head(x.transpose(2, 3), group)  # (G', B, T, 2d)
        out = self.tail(wide + self.body_conv(self.group(wide, group), group), group)
        out = out.transpose(2, 3)  # (G', B, d, T)
        return out[0] if single else out
