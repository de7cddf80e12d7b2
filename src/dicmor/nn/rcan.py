"""Residual channel attention over time, used by DiCMoR to refine recovered features.

Residual channel attention blocks come from RCAN (Zhang et al., "Image Super-Resolution Using Very
Deep Residual Channel Attention Networks", ECCV 2018), here in 1-D over the time axis. DiCMoR
(Wang et al., ICCV 2023) refines each flow-decoded modality with one residual group of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class TimeConv(nn.Module):
    """Convolution over time with 'same' zero padding, on channels-last sequences.

    The k shifted copies of the padded input are concatenated along channels and mapped by one
    matrix product: the function of `torch.nn.Conv1d`, at these sizes (tens of channels and time
    steps) with a fraction of its cost for more than one sample, forward and backward. Weights
    are initialised as `torch.nn.Conv1d` does (uniform in ±1/√(k·in_channels)).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd temporal kernel k.

    Shapes:
        x: (B, T, in_channels) → (B, T, out_channels)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.padding = _same_padding("TimeConv", kernel_size)
        self.kernel_size = kernel_size
        fan_in = kernel_size * in_channels
        # Column block i multiplies the input shifted by i - padding steps.
        self.weight = nn.Parameter(torch.empty(out_channels, fan_in))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.uniform_(self.weight, -(fan_in**-0.5), fan_in**-0.5)
        nn.init.uniform_(self.bias, -(fan_in**-0.5), fan_in**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, in_channels) → (B, T, out_channels)."""
        if self.kernel_size == 1:
            return F.linear(x, self.weight, self.bias)
        length = x.shape[1]
        padded = F.pad(x, (0, 0, self.padding, self.padding))  # (B, T + k − 1, C)
        windows = torch.cat(
            [padded[:, i : i + length] for i in range(self.kernel_size)], dim=-1
        )  # (B, T, k·C)
        return F.linear(windows, self.weight, self.bias)


class ChannelAttention(nn.Module):
    """Rescale each channel by a gate computed from the channel's mean over time.

    Global average pool over time → 1×1 conv down to max(1, C // reduction) → ReLU → 1×1 conv up
    → sigmoid → multiply. On the pooled (B, C) vector a 1×1 conv is a linear map, so linear
    layers are used: the same function with less per-call overhead.

    Shapes:
        x: (B, T, C) (channels last) → (B, T, C)
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ChannelAttention.channels: must be >= 1, got {channels}")
        if reduction < 1:
            raise ValueError(f"ChannelAttention.reduction: must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)

    def gate(self, x: Tensor) -> Tensor:
        """Per-channel scale in (0, 1). x: (B, T, C) → (B, 1, C)."""
        pooled = x.mean(dim=1)  # (B, C)
        return self.up(self.down(pooled).relu()).sigmoid().unsqueeze(1)  # (B, 1, C)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) → (B, T, C)."""
        return x * self.gate(x)


class ResidualChannelAttentionBlock(nn.Module):
    """conv → ReLU → conv → channel attention, plus the block input.

    Convolutions use 'same' padding so the block keeps the sequence length.

    Shapes:
        x: (B, T, C) (channels last) → (B, T, C)
    """

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = TimeConv(channels, channels, kernel_size)
        self.conv2 = TimeConv(channels, channels, kernel_size)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) → (B, T, C)."""
        return x + self.attention(self.conv2(self.conv1(x).relu()))


class ResidualGroup(nn.Module):
    """A chain of residual channel-attention blocks closed by a conv, with a skip around it.

    Shapes:
        x: (B, T, C) (channels last) → (B, T, C)
    """

    def __init__(self, channels: int, num_blocks: int, kernel_size: int, reduction: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                ResidualChannelAttentionBlock(channels, kernel_size, reduction)
                for _ in range(num_blocks)
            )
        )
        self.conv = TimeConv(channels, channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) → (B, T, C)."""
        return x + self.conv(self.blocks(x))


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

    Shapes:
        x: (B, d, T) → (B, d, T)
    """

    def __init__(
        self, channels: int, num_blocks: int = 20, reduction: int = 16, kernel_size: int = 3
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"RefinementNetwork.channels: must be >= 1, got {channels}")
        if num_blocks < 0:
            raise ValueError(f"RefinementNetwork.num_blocks: must be >= 0, got {num_blocks}")
        _same_padding("RefinementNetwork", kernel_size)
        wide = 2 * channels
        self.channels = channels
        self.head = TimeConv(channels, wide, 1)
        self.group = ResidualGroup(wide, num_blocks, kernel_size, reduction)
        self.body_conv = TimeConv(wide, wide, kernel_size)
        self.tail = TimeConv(wide, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, d, T) → (B, d, T)."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"RefinementNetwork: expected input (B, {self.channels}, T), got {tuple(x.shape)}"
            )
        wide = self.head(x.transpose(1, 2))  # (B, T, 2d)
        out = self.tail(wide + self.body_conv(self.group(wide)))  # (B, T, d)
        return out.transpose(1, 2)  # (B, d, T)
