"""Pre-norm transformer encoder with optional cross-attention, as used by the Multimodal
Transformer (Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences",
ACL 2019).

Sequences are batch-first throughout: (B, T, d). Positions are the sinusoids of Vaswani et al.
("Attention Is All You Need", NeurIPS 2017). Attention runs through
`torch.nn.functional.scaled_dot_product_attention` so the fused kernels are used where available.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.nn.dropout import Dropout, dropout

__all__ = ["TransformerEncoder", "TransformerLayer", "causal_mask", "sinusoidal_positions"]


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """Sinusoidal position table of Vaswani et al. (2017).

    PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(p / 10000^(2i/dim)), positions p from 0.

    Returns:
        (length, dim) float32 tensor.
    """
    if length < 0 or dim < 1:
        raise ValueError(
            f"sinusoidal_positions: need length >= 0 and dim >= 1, got {length}, {dim}"
        )
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (ceil(dim / 2),)
    angles = position * inv_freq  # (L, ceil(dim / 2))
    table = torch.empty(length, dim)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def causal_mask(query_len: int, key_len: int, device: torch.device | None = None) -> Tensor:
    """Boolean attention mask (True = may attend) that hides the future.

    With equal lengths, query step i sees key steps 0..i. With a longer source the two sequences
    are aligned at their ends, so the last query sees the whole source; with a shorter source they
    are aligned at their starts, so no query is left with nothing to attend to.

    Returns:
        (query_len, key_len) bool tensor.
    """
    offset = max(0, key_len - query_len)
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(offset)


class TransformerLayer(nn.Module):
    """One pre-norm transformer layer; cross-attention when a source sequence is given.

    LayerNorm → multi-head attention (queries from x; keys/values from the source, normalised by
    the same LayerNorm, as in MulT) → dropout → residual; LayerNorm → Linear(d, 4d) → ReLU →
    dropout → Linear(4d, d) → dropout → residual.

    Args:
        dim: model width d (divisible by num_heads).
        num_heads: attention heads h.
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout on each sub-layer's output before its residual sum.
        attn_mask: hide future steps (see `causal_mask`).

    Shapes:
        x: (B, T_q, d), x_kv: (B, T_kv, d) or None (self-attention) → (B, T_q, d)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        attn_mask: bool = False,
    ) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"TransformerLayer: dim {dim} must be a positive multiple of num_heads {num_heads}"
            )
        for name, value in (
            ("attn_dropout", attn_dropout),
            ("relu_dropout", relu_dropout),
            ("res_dropout", res_dropout),
        ):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerLayer.{name}: must be in [0, 1), got {value}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dropout = attn_dropout
        self.attn_mask = attn_mask
        self.attn_norm = nn.LayerNorm(dim)
        # One packed q/k/v projection; cross-attention applies its row blocks to different inputs,
        # so every weight is used in both modes.
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.relu_dropout = Dropout(relu_dropout)
        self.res_dropout = Dropout(res_dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)  # (B, h, T, d/h)

    def _attend(self, x: Tensor, x_kv: Tensor | None) -> Tensor:
        batch, query_len, _ = x.shape
        if x_kv is None:
            q, k, v = self.in_proj(x).chunk(3, dim=-1)  # 3 × (B, T, d)
            key_len = query_len
        else:
            weight, bias = self.in_proj.weight, self.in_proj.bias
            q = F.linear(x, weight[: self.dim], bias[: self.dim])  # (B, T_q, d)
            k, v = F.linear(x_kv, weight[self.dim :], bias[self.dim :]).chunk(2, dim=-1)
            key_len = x_kv.shape[1]
        mask = None
        is_causal = False
        if self.attn_mask:
            # The fused causal path assumes top-left alignment, which matches only equal lengths.
            if key_len == query_len:
                is_causal = True
            else:
                mask = causal_mask(query_len, key_len, device=x.device)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if self.training and self.attn_dropout > 0.0:
            # Written out so that the attention weights go through the cheaper CPU dropout;
            # PyTorch's fused kernels take no dropout on CPU and fall back to a slower path.
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, h, T_q, T_kv)
            if is_causal:
                mask = causal_mask(query_len, key_len, device=x.device)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = dropout(scores.softmax(dim=-1), self.attn_dropout)
            out = weights @ v  # (B, h, T_q, d/h)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal
            )  # (B, h, T_q, d/h)
        out = out.transpose(1, 2).reshape(batch, query_len, self.dim)  # (B, T_q, d)
        return self.out_proj(out)

    def forward(self, x: Tensor, x_kv: Tensor | None = None) -> Tensor:
        """x: (B, T_q, d), x_kv: (B, T_kv, d) or None → (B, T_q, d)."""
        normed = self.attn_norm(x)
        source = None if x_kv is None else self.attn_norm(x_kv)
        x = x + self.res_dropout(self._attend(normed, source))
        hidden = self.relu_dropout(self.fc1(self.ff_norm(x)).relu())
        return x + self.res_dropout(self.fc2(hidden))


class TransformerEncoder(nn.Module):
    """Stack of `TransformerLayer`s with scaled embeddings, sinusoidal positions and a final norm.

    Both streams are scaled by √d, given positions and embed dropout; the source stream is the
    same for every layer (MulT's crossmodal transformer attends to the source embedding itself).

    Args:
        dim: model width d.
        num_heads: attention heads.
        num_layers: number of layers.
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout before each residual sum.
        embed_dropout: dropout on the position-augmented input embeddings.
        attn_mask: hide future steps in every layer.

    Shapes:
        x_q: (B, T_q, d), x_kv: (B, T_kv, d) or None (self-attention) → (B, T_q, d)
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.0,
        attn_mask: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TransformerEncoder.num_layers: must be >= 1, got {num_layers}")
        if not 0.0 <= embed_dropout < 1.0:
            raise ValueError(
                f"TransformerEncoder.embed_dropout: must be in [0, 1), got {embed_dropout}"
            )
        self.dim = dim
        self.embed_scale = math.sqrt(dim)
        self.embed_dropout = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, num_heads, attn_dropout, relu_dropout, res_dropout, attn_mask)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        # A plain cache rather than a buffer: the table is a pure function of the length, so it
        # has no place in checkpoints or in the buffers that distributed training synchronises.
        self._position_cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def _positions(self, length: int, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        table = self._position_cache.get(key)
        if table is None or table.shape[0] < length:
            table = sinusoidal_positions(length, self.dim).to(device=like.device, dtype=like.dtype)
            self._position_cache[key] = table
        return table[:length]  # (T, d)

    def _embed(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"TransformerEncoder: expected input (B, T, {self.dim}), got {tuple(x.shape)}"
            )
        return self.embed_dropout(self.embed_scale * x + self._positions(x.shape[1], x))

    def forward(self, x_q: Tensor, x_kv: Tensor | None = None) -> Tensor:
        """x_q: (B, T_q, d), x_kv: (B, T_kv, d) or None → (B, T_q, d)."""
        x = self._embed(x_q)
        source = None if x_kv is None else self._embed(x_kv)
        for layer in self.layers:
            x = layer(x, source)
        return self.norm(x)
