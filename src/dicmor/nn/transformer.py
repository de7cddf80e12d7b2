"""Pre-norm transformer encoder with optional cross-attention, as used by the Multimodal
Transformer (Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences",
ACL 2019).

Sequences are batch-first: (B, T, d). Positions are the sinusoids of Vaswani et al. ("Attention
Is All You Need", NeurIPS 2017). Attention runs through
`torch.nn.functional.scaled_dot_product_attention` so the fused kernels are used where available.

The layers are grouped: one module holds G independent encoders of the same shape (parameters
stacked along a leading group axis) and runs them on ``(G, B, T, d)`` in one pass. At MulT's sizes
the cost of a call, not its arithmetic, dominates, so the six crossmodal transformers of three
modalities cost about what one did. A module given ``group=g`` runs group g alone on
``(B, T, d)``, which serves sequences whose lengths differ between groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.nn.dropout import Dropout, dropout_matmul, thin_right_product
from dicmor.nn.grouped import GroupedLayerNorm, GroupedLinear, grouped_linear, select_groups
from dicmor.nn.precision import autocast_operands

__all__ = [
    "TransformerEncoder",
    "TransformerLayer",
    "causal_mask",
    "sinusoidal_positions",
]


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


WRITTEN_OUT_CPU_SCORES = 2**19
"""On CPU, attention with at most this many scores (batch·heads·T_q·T_kv) is written out as
scaled product, softmax and product rather than run by the fused kernel: measured on a 2-core
AMD EPYC (torch 2.13, T = 50), the written-out form takes 0.6–0.8 of the fused kernel's time
up to about 5·10^5 scores (MulT at batch 1 to 4) and 1.5 times it at 2·10^6 (batch 32)."""


def _per_group(owner: str, value: float | Sequence[float], groups: int) -> tuple[float, ...]:
    values = (float(value),) * groups if isinstance(value, (int, float)) else tuple(value)
    if len(values) != groups:
        raise ValueError(f"{owner}: expected one value per group ({groups}), got {len(values)}")
    if not all(0.0 <= v < 1.0 for v in values):
        raise ValueError(f"{owner}: must be in [0, 1), got {value}")
    return values


class _ScaledScores(torch.autograd.Function):
    """``scale · q kᵀ (+ hidden)`` of ``q: (N, T_q, e)``, ``k: (N, T_kv, e)``, whose backward
    takes its two products through `thin_right_product`."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, hidden: Tensor | None, scale: float) -> Tensor:
        q, k, hidden = autocast_operands(q, k, hidden)
        ctx.save_for_backward(q, k)
        ctx.scale = scale
        if hidden is None:
            return (q * scale) @ k.transpose(1, 2)
        return torch.baddbmm(hidden, q, k.transpose(1, 2), alpha=scale)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k = ctx.saved_tensors
        grad_q = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_q = thin_right_product(grad, k * ctx.scale)
        if ctx.needs_input_grad[1]:
            grad_k = thin_right_product(grad.transpose(1, 2), q * ctx.scale)
        return grad_q, grad_k, None, None


class TransformerLayer(nn.Module):
    """One pre-norm transformer layer, G groups at once; cross-attention when a source is given.

    LayerNorm → multi-head attention (queries from x; keys/values from the source, normalised by
    the same LayerNorm, as in MulT) → dropout → residual; LayerNorm → Linear(d, 4d) → ReLU →
    dropout → Linear(4d, d) → dropout → residual. Each LayerNorm's affine map is folded into the
    projection that follows it (`GroupedLayerNorm.fold`): the same function, one pass fewer over
    the activations.

    Args:
        dim: model width d (divisible by num_heads).
        num_heads: attention heads h.
        attn_dropout: dropout on the attention weights, one value or one per group.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout on each sub-layer's output before its residual sum.
        attn_mask: hide future steps (see `causal_mask`).
        groups: number of independent layers G.

    Shapes:
        x: (G, B, T_q, d), x_kv: (G, B, T_kv, d) or None (self-attention) → (G, B, T_q, d);
        one group (``group=g``, or G = 1) also takes x: (B, T_q, d), x_kv: (B, T_kv, d).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_dropout: float | Sequence[float] = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        attn_mask: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(
                f"TransformerLayer: dim {dim} must be a positive multiple of num_heads {num_heads}"
            )
        if groups < 1:
            raise ValueError(f"TransformerLayer.groups: must be >= 1, got {groups}")
        self.attn_dropout = _per_group("TransformerLayer.attn_dropout", attn_dropout, groups)
        for name, value in (("relu_dropout", relu_dropout), ("res_dropout", res_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerLayer.{name}: must be in [0, 1), got {value}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.groups = groups
        self.attn_mask = attn_mask
        self.attn_norm = GroupedLayerNorm(groups, dim)
        # One packed q/k/v projection; cross-attention applies its column blocks to different
        # inputs, so every weight is used in both modes.
        self.in_proj = GroupedLinear(groups, dim, 3 * dim)
        self.out_proj = GroupedLinear(groups, dim, dim)
        self.ff_norm = GroupedLayerNorm(groups, dim)
        self.fc1 = GroupedLinear(groups, dim, 4 * dim)
        self.fc2 = GroupedLinear(groups, 4 * dim, dim)
        self.relu_dropout = Dropout(relu_dropout)
        self.res_dropout = Dropout(res_dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        groups, batch, length, _ = x.shape
        x = x.reshape(groups * batch, length, self.num_heads, self.head_dim)
        return x.transpose(1, 2)  # (G·B, h, T, d/h)

    def _scores(self, q: Tensor, k: Tensor, mask: Tensor | None) -> Tensor:
        """Scaled dot products ``(G·B, h, T_q, T_kv)`` of ``q: (G·B, h, T_q, d/h)`` and
        ``k: (G·B, h, T_kv, d/h)``, -inf where ``mask`` (T_q, T_kv) hides a key."""
        scale = self.head_dim**-0.5
        heads, query_len, key_len = q.shape[:2], q.shape[2], k.shape[2]
        hidden = None
        if mask is not None:
            # The mask enters as the additive term of one scaled product: no pass over the
            # scores to hide the future, forward or backward.
            # Out of place, so that a traced graph computes it once, as a constant.
            hidden = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
            hidden = hidden.masked_fill(~mask, float("-inf"))  # (T_q, T_kv)
        q, k = q.reshape(-1, query_len, self.head_dim), k.reshape(-1, key_len, self.head_dim)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            scores = _ScaledScores.apply(q, k, hidden, scale)
        elif hidden is None:
            scores = (q * scale) @ k.transpose(1, 2)
        else:
            scores = torch.baddbmm(hidden, q, k.transpose(1, 2), alpha=scale)
        return scores.view(*heads, query_len, key_len)

    def _attend(
        self, x: Tensor, x_kv: Tensor | None, weight: Tensor, bias: Tensor, group: int | None
    ) -> Tensor:
        """Attention of the standardised x to the standardised x_kv (or itself), with the packed
        q/k/v projection ``weight: (G', d, 3d)``, ``bias: (G', 3d)`` (the norm folded in)."""
        groups, batch, query_len, _ = x.shape
        if x_kv is None:
            q, k, v = grouped_linear(x, weight, bias).chunk(3, dim=-1)  # 3 × (G, B, T, d)
            key_len = query_len
        else:
            (weight_q, weight_kv), (bias_q, bias_kv) = (
                weight.split([self.dim, 2 * self.dim], dim=2),
                bias.split([self.dim, 2 * self.dim], dim=1),
            )
            q = grouped_linear(x, weight_q, bias_q)  # (G, B, T_q, d)
            k, v = grouped_linear(x_kv, weight_kv, bias_kv).chunk(2, dim=-1)  # (G, B, T_kv, d)
            key_len = x_kv.shape[2]
        mask = None
        is_causal = False
        if self.attn_mask:
            # The fused causal path assumes top-left alignment, which matches only equal lengths.
            if key_len == query_len:
                is_causal = True
            else:
                mask = causal_mask(query_len, key_len, device=x.device)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        p = self.attn_dropout if group is None else self.attn_dropout[group : group + 1]
        dropped = self.training and any(p)
        small = x.device.type == "cpu" and q.shape[0] * q.shape[1] * query_len * key_len <= (
            WRITTEN_OUT_CPU_SCORES
        )
        if dropped or small:
            # Written out: so that the attention weights go through the cheaper CPU dropout
            # (one probability per group; PyTorch's fused kernels take no dropout on CPU and
            # fall back to a slower path), or because at a few heads' worth of scores the
            # fused CPU kernel costs more than the three products it fuses.
            if is_causal:
                mask = causal_mask(query_len, key_len, device=x.device)
            scores = self._scores(q, k, mask)
            if scores.dtype not in (torch.bfloat16, torch.float16):
                weights = scores.softmax(dim=-1)  # (G·B, h, T_q, T_kv)
            else:
                # bfloat16 scores (autocast): the softmax computes in float32 and rounds its
                # result, as CUDA's autocast has it; PyTorch's CPU softmax on bfloat16 is also
                # 2.5-3 times slower than on float32 (MOSEI's (96, 8, 46, 46) scores on one
                # core, 2-core AMD EPYC, torch 2.13: 6.1 ms against 2.3 with the rounding).
                weights = scores.softmax(dim=-1, dtype=torch.float32).to(scores.dtype)
            # Dropout and the product with the values in one step that keeps no dropped weights
            # for the backward, and no mask for the groups that drop nothing.
            out = dropout_matmul(weights, v, p, self.training)  # (G·B, h, T_q, d/h)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal
            )  # (G·B, h, T_q, d/h)
        out = out.transpose(1, 2).reshape(groups, batch, query_len, self.dim)  # (G, B, T_q, d)
        return self.out_proj(out, group)

    def forward(
        self,
        x: Tensor,
        x_kv: Tensor | None = None,
        group: int | None = None,
        last_step_only: bool = False,
    ) -> Tensor:
        """x: (G, B, T_q, d), x_kv: (G, B, T_kv, d) or None → (G, B, T_q, d), or (G, B, 1, d)
        for the last step only (whose keys and values still span the whole sequence)."""
        if x.dim() == 3:
            out = self.forward(x[None], None if x_kv is None else x_kv[None], group, last_step_only)
            return out[0]
        weight, bias = (
            select_groups(self.in_proj.weight, group),
            select_groups(self.in_proj.bias, group),
        )
        weight, bias = self.attn_norm.fold(weight, bias, group)
        normed = self.attn_norm.standardize(x)
        source = None if x_kv is None else self.attn_norm.standardize(x_kv)
        if last_step_only:
            # Self-attention becomes attention from the last step to the whole sequence: the
            # same weights and the same output for that step, without the other T − 1 rows.
            source = normed if source is None else source
            x, normed = x[:, :, -1:], normed[:, :, -1:]
        x = x + self.res_dropout(self._attend(normed, source, weight, bias, group))
        weight, bias = select_groups(self.fc1.weight, group), select_groups(self.fc1.bias, group)
        weight, bias = self.ff_norm.fold(weight, bias, group)
        hidden = grouped_linear(self.ff_norm.standardize(x), weight, bias).relu()
        return x + self.res_dropout(self.fc2(self.relu_dropout(hidden), group))


class TransformerEncoder(nn.Module):
    """Stack of `TransformerLayer`s with scaled embeddings, sinusoidal positions and a final norm,
    G independent encoders at once.

    Both streams are scaled by √d, given positions and embed dropout; the source stream is the
    same for every layer (MulT's crossmodal transformer attends to the source embedding itself).

    Args:
        dim: model width d.
        num_heads: attention heads.
        num_layers: number of layers.
        attn_dropout: dropout on the attention weights, one value or one per group.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout before each residual sum.
        embed_dropout: dropout on the position-augmented input embeddings.
        attn_mask: hide future steps in every layer.
        groups: number of independent encoders G.

    Shapes:
        x_q: (G, B, T_q, d), x_kv: (G, B, T_kv, d) or None (self-attention) → (G, B, T_q, d);
        one group (``group=g``, or G = 1) also takes x_q: (B, T_q, d), x_kv: (B, T_kv, d).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        attn_dropout: float | Sequence[float] = 0.0,
        relu_dropout: float = 0.1,
        res_dropout: float = 0.1,
        embed_dropout: float = 0.0,
        attn_mask: bool = False,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"TransformerEncoder.num_layers: must be >= 1, got {num_layers}")
        if not 0.0 <= embed_dropout < 1.0:
            raise ValueError(
                f"TransformerEncoder.embed_dropout: must be in [0, 1), got {embed_dropout}"
            )
        self.dim = dim
        self.groups = groups
        self.embed_scale = math.sqrt(dim)
        self.embed_dropout = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                dim, num_heads, attn_dropout, relu_dropout, res_dropout, attn_mask, groups
            )
            for _ in range(num_layers)
        )
        self.norm = GroupedLayerNorm(groups, dim)
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
        scaled = torch.add(self._positions(x.shape[2], x), x, alpha=self.embed_scale)
        return self.embed_dropout(scaled)  # (G, B, T, d)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor | None = None,
        group: int | None = None,
        last_step_only: bool = False,
    ) -> Tensor:
        """x_q: (G, B, T_q, d), x_kv: (G, B, T_kv, d) or None → (G, B, T_q, d); with
        ``last_step_only``, the output of the last step alone, (G, B, 1, d), for a fraction of
        the last layer's cost."""
        if group is not None and not 0 <= group < self.groups:
            raise ValueError(
                f"TransformerEncoder: group must be in [0, {self.groups}), got {group}"
            )
        single = group is not None or self.groups == 1
        squeeze = single and x_q.dim() == 3
        expected = f"(B, T, {self.dim})" if single else f"({self.groups}, B, T, {self.dim})"
        for x in (x_q, x_kv):
            if x is None:
                continue
            if (
                x.dim() != (3 if squeeze else 4)
                or x.shape[-1] != self.dim
                or (not squeeze and x.shape[0] != (1 if single else self.groups))
            ):
                raise ValueError(
                    f"TransformerEncoder: expected input {expected}, got {tuple(x.shape)}"
                )
        if squeeze:
            x_q = x_q[None]
            x_kv = None if x_kv is None else x_kv[None]
        x = self._embed(x_q)
        source = None if x_kv is None else self._embed(x_kv)
        for i, layer in enumerate(self.layers):
            x = layer(x, source, group, last_step_only and i == len(self.layers) - 1)
        out = self.norm(x, group)
        return out[0] if squeeze else out
