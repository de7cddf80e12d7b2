"""Shallow temporal feature extractor shared by the multimodal models.

Each modality's raw sequence is projected to the common model width with a 1-D convolution over
time, as in the Multimodal Transformer (Tsai et al., "Multimodal Transformer for Unaligned
Multimodal Language Sequences", ACL 2019) and DiCMoR (Wang et al., ICCV 2023).
"""

from __future__ import annotations

from torch import Tensor, nn

from dicmor.nn.dropout import Dropout

__all__ = ["TemporalConv"]


class TemporalConv(nn.Module):
    """Conv1d over time, without padding or bias, from `in_dim` to `out_dim` channels.

    No padding keeps every output step a function of real input steps only; no bias keeps a
    zero-filled (missing) input mapped to exactly zero.

    Args:
        in_dim: feature size D of the input.
        out_dim: output channels d.
        kernel_size: temporal kernel k; the output has T − k + 1 steps.
        dropout: dropout applied to the input features (used for text).

    Shapes:
        x: (B, T, D) → (B, d, T − k + 1)
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(
                f"TemporalConv: in_dim and out_dim must be >= 1, got {in_dim}, {out_dim}"
            )
        if kernel_size < 1:
            raise ValueError(f"TemporalConv.kernel_size: must be >= 1, got {kernel_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TemporalConv.dropout: must be in [0, 1), got {dropout}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.kernel_size = kernel_size
        self.dropout = Dropout(dropout)
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size, padding=0, bias=False)

    def output_length(self, length: int) -> int:
        """Number of output steps for an input of `length` steps (T − k + 1)."""
        if length < self.kernel_size:
            raise ValueError(
                f"TemporalConv: sequence length {length} is shorter than kernel_size "
                f"{self.kernel_size}"
            )
        return length - self.kernel_size + 1

    def _check(self, x: Tensor) -> int:
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"TemporalConv: expected input (B, T, {self.in_dim}), got {tuple(x.shape)}"
            )
        return self.output_length(x.shape[1])

    def zeros(self, x: Tensor) -> Tensor:
        """What `forward` gives for an all-zero ``x: (B, T, D)`` (no bias: zeros), without the
        convolution: (B, d, T − k + 1)."""
        return x.new_zeros(x.shape[0], self.out_dim, self._check(x))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) → (B, d, T − k + 1)."""
        self._check(x)
        x = self.dropout(x)
        return self.conv(x.transpose(1, 2))  # (B, d, T - k + 1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, kernel_size={self.kernel_size}"
