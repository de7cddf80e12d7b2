"""Residual channel attention over time, used by DiCMoR to refine recovered features.

Residual channel attention blocks come from RCAN (Zhang et al., "Image Super-Resolution Using Very
Deep Residual Channel Attention Networks", ECCV 2018), here in 1-D over the time axis. DiCMoR
(Wang et al., ICCV 2023) refines each flow-decoded modality with one residual group of them.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ChannelAttention", "RefinementNetwork", "ResidualChannelAttentionBlock"]


def _same_padding(owner: str, kernel_size: int) -> int:
    # Only odd kernels keep the length with symmetric padding.
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{owner}.kernel_size: must be odd and >= 1, got {kernel_size}")
    return kernel_size // 2


class ChannelAttention(nn.Module):
    """Rescale each channel by a gate computed from the channel's mean over time.

    Global average pool over time → 1×1 conv down to max(1, C // reduction) → ReLU → 1×1 conv up
    → sigmoid → multiply. On the pooled (B, C) vector a 1×1 conv is a linear map, so linear
    layers are used: the same function with less per-call overhead.

    Shapes:
        x: (B, C, T) → (B, C, T)
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
        """Per-channel scale in (0, 1). x: (B, C, T) → (B, C, 1)."""
        pooled = x.mean(dim=-1)  # (B, C)
        return self.up(self.down(pooled).relu()).sigmoid().unsqueeze(-1)  # (B, C, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) → (B, C, T)."""
        return x * self.gate(x)


class ResidualChannelAttentionBlock(nn.Module):
    """conv → ReLU → conv → channel attention, plus the block input.

    Convolutions use 'same' padding so the block keeps the sequence length.

    Shapes:
        x: (B, C, T) → (B, C, T)
    """

    def __init__(self, channels: int, kernel_size: int = 3, reduction: int = 16) -> None:
        super().__init__()
        padding = _same_padding("ResidualChannelAttentionBlock", kernel_size)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=padding)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) → (B, C, T)."""
        return x + self.attention(self.conv2(self.conv1(x).relu()))


class ResidualGroup(nn.Module):
    """A chain of residual channel-attention blocks closed by a conv, with a skip around it.

    Shapes:
        x: (B, C, T) → (B, C, T)
    """

    def __init__(self, channels: int, num_blocks: int, kernel_size: int, reduction: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                ResidualChannelAttentionBlock(channels, kernel_size, reduction)
                for _ in range(num_blocks)
            )
        )
        self.conv = nn.Conv1d(
            channels, channels, kernel_size, padding=_same_padding("ResidualGroup", kernel_size)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, T) → (B, C, T)."""
        return x + self.conv(self.blocks(x))


class RefinementNetwork(nn.Module):
    """DiCMoR's refinement of a recovered modality (one RCAN residual group in a wider space).

    1×1 conv d → 2d; residual group (num_blocks blocks + conv, with the group skip); conv; long
    skip from the widened input; 1×1 conv 2d → d. As in RCAN, the long skip spans the group and
    the conv after it, so the two skips are distinct paths.

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
        padding = _same_padding("RefinementNetwork", kernel_size)
        wide = 2 * channels
        self.channels = channels
        self.head = nn.Conv1d(channels, wide, 1)
        self.group = ResidualGroup(wide, num_blocks, kernel_size, reduction)
        self.body_conv = nn.Conv1d(wide, wide, kernel_size, padding=padding)
        self.tail = nn.Conv1d(wide, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, d, T) → (B, d, T)."""
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"RefinementNetwork: expected input (B, {self.channels}, T), got {tuple(x.shape)}"
            )
        wide = self.head(x)  # (B, 2d, T)
        return self.tail(wide + self.body_conv(self.group(wide)))  # (B, d, T)
