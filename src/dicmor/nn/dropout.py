"""Dropout whose CPU mask costs a quarter of the random draws of PyTorch's, with an optional
drop probability per group.

PyTorch's CPU dropout draws one Mersenne-Twister number per element. At DiCMoR's sizes (a few
thousand to a few tens of thousands of elements, hundreds of dropout calls per training step)
those draws are most of the Multimodal Transformer's training time. Here one 64-bit draw decides
four elements, 16 bits each, so the drop probability is quantised to a multiple of 1/65536 and
the kept values are rescaled by the exact inverse of the quantised keep probability (the output
stays unbiased). Other devices use PyTorch's generator unchanged: it is counter-based and cheap.
Both follow the global seed; on CPU a training micro-batch draws from a generator of its own,
seeded from the global one (`dicmor.concurrency`).

Grouped layers (one group per modality) may need a different probability per group, such as the
per-target attention dropout of the Multimodal Transformer: a sequence of probabilities applies
one to each index of the first dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.concurrency import generator
from dicmor.nn.precision import autocast_operands

_LEVELS = 1 << 16


def _check(owner: str, p: float | Sequence[float]) -> float | tuple[float, ...]:
    values = (p,) if isinstance(p, (int, float)) else tuple(p)
    if not values or not all(0.0 <= v < 1.0 for v in values):
        raise ValueError(f"{owner}: must be in [0, 1) (or a sequence of such), got {p}")
    if isinstance(p, (int, float)):
        return float(p)
    # One shared probability takes the cheaper scalar path.
    return values[0] if len(set(values)) == 1 else values


def dropout(x: Tensor, p: float | Sequence[float], training: bool = True) -> Tensor:
    """Zero each element of ``x: (G, *)`` with probability ``p`` (quantised to 1/65536 on CPU)
    and scale the rest by 1 / (1 - p); the identity when not training or when ``p == 0``.

    ``p`` is one probability, or one per index g of the first dimension (G of them)."""
    return _dropout(x, _check("dropout.p", p), training)


def _dropout(x: Tensor, p: float | tuple[float, ...], training: bool) -> Tensor:
    if not training or p == 0.0:
        return x
    if isinstance(p, float) and x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * _scaled_mask(x, p)


def _scaled_mask(x: Tensor, p: float | tuple[float, ...]) -> Tensor:
    """The mask that :func:`dropout` multiplies ``x: (G, *)`` by: 0 for a dropped element,
    the inverse keep probability for a kept one, a float tensor like ``x``."""
    if isinstance(p, float):
        if x.device.type != "cpu":
            return (torch.rand_like(x) >= p).to(x.dtype) / (1.0 - p)
        dropped = round(p * _LEVELS)
        threshold: int | Tensor = dropped - _LEVELS // 2
        scale: float | Tensor = _LEVELS / (_LEVELS - dropped)
    else:
        if len(p) != x.shape[0]:
            raise ValueError(
                f"dropout: {len(p)} probabilities for a first dimension of size {x.shape[0]}"
            )
        shape = (len(p),) + (1,) * (x.dim() - 1)
        if x.device.type != "cpu":
            probability = torch.tensor(p, dtype=x.dtype, device=x.device).view(shape)
            return (torch.rand_like(x) >= probability).to(x.dtype) / (1.0 - probability)
        if not all(p):
            return _mixed_mask(x, p)
        dropped_by_group = [round(v * _LEVELS) for v in p]
        threshold = torch.tensor(
            [d - _LEVELS // 2 for d in dropped_by_group], dtype=torch.int16
        ).view(shape)
        scale = torch.tensor(
            [_LEVELS / (_LEVELS - d) for d in dropped_by_group], dtype=x.dtype
        ).view(shape)
    # The comparison writes its 0/1 straight into a float tensor, and the scale goes into that
    # mask in place: one pass over the data fewer than a bool mask cast and scaled (and a
    # product with a bool tensor is many times slower on CPU than with a float one).
    mask = torch.ge(
        _bits(x), threshold, out=torch.empty_like(x, memory_format=torch.contiguous_format)
    )
    return mask.mul_(scale)


def _mixed_mask(x: Tensor, p: tuple[float, ...]) -> Tensor:
    """:func:`_scaled_mask` on CPU for ``x: (G, *)`` whose groups do not all drop: ones for a
    group of probability 0, which draws nothing; the dropping groups draw one run of bits, in
    group order (the draws `dropout_matmul` takes for the same groups)."""
    mask = torch.ones(x.shape, dtype=x.dtype)
    dropping = [g for g, v in enumerate(p) if v > 0.0]
    bits = _bits(mask[: len(dropping)])
    for rows, g in zip(bits, dropping, strict=True):
        _scaled_keep(rows, p[g], out=mask[g])
    return mask


def _scaled_keep(bits: Tensor, p: float, out: Tensor) -> Tensor:
    """``out`` (a float tensor of ``bits``' shape) set to the mask that ``bits`` give for a drop
    probability ``p``: 0 where dropped, the inverse quantised keep probability elsewhere."""
    level = round(p * _LEVELS)
    torch.ge(bits, level - _LEVELS // 2, out=out)
    return out.mul_(_LEVELS / (_LEVELS - level))


def _bits(x: Tensor) -> Tensor:
    """Uniform int16 values over [-32768, 32767], one per element of ``x``, laid out like a
    contiguous ``x``."""
    n = x.numel()
    # `random_(min, None)` draws the whole 64-bit range with no reduction modulo a range, as
    # `randint(-2**63, 2**63 - 1)` does (406,272 words: 1.35 against 1.56-1.75 ms here).
    # Inside a training micro-batch, its own dropout generator (`dicmor.concurrency`).
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(
        -(2**63), None, generator=generator("dropout", x.device)
    )
    return words.view(torch.int16)[:n].view(x.shape)


THIN_WIDTH = 16
"""Below this width of ``b``, `thin_right_product` takes ``a @ b`` as ``(bᵀ aᵀ)ᵀ``."""


def thin_right_product(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for a square-ish ``a: (*, T, T')`` and a thin ``b: (*, T', d)`` (an attention
    head's width). Below a width of 16 it is computed as ``(bᵀ aᵀ)ᵀ`` (a transposed view):
    PyTorch's CPU batched product runs such shapes 2.6–4.7 times faster with the thin operand on
    the left, and 1.4 times slower from 16 on (96 to 768 matrices of 46 x 46 by 46 x d, d = 4 to
    32, on a 2-core AMD EPYC, torch 2.13; 768 by 46 x 8: 1.34 ms against 0.47 ms)."""
    if b.shape[-1] >= THIN_WIDTH:
        return a @ b
    return (b.transpose(-2, -1) @ a.transpose(-2, -1)).transpose(-2, -1)


class _DroppedProduct(torch.autograd.Function):
    """``(weights * mask) @ values`` that keeps ``weights``, which the softmax before it keeps
    anyway, instead of the dropped weights: the backward recomputes them (one product).

    ``runs`` gives consecutive row ranges ``(start, stop, dropping)`` of ``weights`` whose
    groups share a probability, and ``masks`` one mask per dropping run, in their order: the
    rows of a run that drops nothing are a plain product, forward and backward, with no pass
    over their weights for a mask of ones."""

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, runs: tuple, *masks: Tensor) -> Tensor:
        weights, values, *masks = autocast_operands(weights, values, *masks)
        ctx.save_for_backward(weights, values, *masks)
        ctx.runs = runs
        parts, dropping_runs = [], iter(masks)
        for start, stop, dropping in runs:
            w = weights[start:stop]
            if dropping:
                w = w * next(dropping_runs)
            parts.append(thin_right_product(w, values[start:stop]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        weights, values, *masks = ctx.saved_tensors
        runs = ctx.runs
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            # One product for every row, then the mask on the rows that drop, in place.
            grad_weights = grad @ values.transpose(-2, -1)
            dropping_runs = iter(masks)
            for start, stop, dropping in runs:
                if dropping:
                    grad_weights[start:stop].mul_(next(dropping_runs))
        if ctx.needs_input_grad[1]:
            parts, dropping_runs = [], iter(masks)
            for start, stop, dropping in runs:
                w = weights[start:stop]
                if dropping:
                    w = w * next(dropping_runs)
                parts.append(thin_right_product(w.transpose(-2, -1), grad[start:stop]))
            grad_values = parts[0] if len(parts) == 1 else torch.cat(parts)
        return grad_weights, grad_values, None, *(None for _ in masks)


def _runs(p: tuple[float, ...], rows: int) -> tuple[tuple[int, int, bool], ...]:
    """Row ranges ``(start, stop, dropping)`` of ``rows`` rows taken g-major over ``len(p)``
    groups, consecutive groups of one probability merged."""
    per_group = rows // len(p)
    runs: list[list] = []
    for g, value in enumerate(p):
        if runs and p[g - 1] == value:
            runs[-1][1] += per_group
        else:
            runs.append([g * per_group, (g + 1) * per_group, value > 0.0])
    return tuple((start, stop, dropping) for start, stop, dropping in runs)


def dropout_matmul(
    weights: Tensor, values: Tensor, p: float | Sequence[float], training: bool = True
) -> Tensor:
    """``dropout(weights.view(G, -1), p).view_as(weights) @ values`` for attention:
    ``weights: (G·B, h, T_q, T_kv)``, ``values: (G·B, h, T_kv, d)``, ``p`` one probability or
    one per group g of the G (the leading G·B rows taken g-major). The same draws and values;
    in training the dropped weights are not kept for the backward (a tensor of the weights'
    size less per attention layer), and groups whose probability is 0 draw nothing and get no
    mask at all."""
    p = _check("dropout_matmul.p", p)
    if not training:
        # Inference too takes the thin operand on the left: at batch 1 MulT's value products
        # are 48 matrices of 46 x 46 by 46 x 4 (MOSI), 108 µs as written, 27 µs so.
        return thin_right_product(weights, values)
    if p == 0.0:
        return _DroppedProduct.apply(weights, values, ((0, weights.shape[0], False),))
    groups = 1 if isinstance(p, float) else len(p)
    if weights.shape[0] % groups:
        raise ValueError(
            f"dropout_matmul: {groups} probabilities for a first dimension of size "
            f"{weights.shape[0]}"
        )
    if isinstance(p, float) or weights.device.type != "cpu" or all(p):
        mask = _scaled_mask(weights.reshape(groups, -1), p).view(weights.shape)
        return _DroppedProduct.apply(weights, values, ((0, weights.shape[0], True),), mask)
    # Only the groups that drop draw bits and get a mask: one run of draws over their rows, in
    # order (the draws `dropout` takes for them; two thirds fewer for MOSEI's crossmodal
    # attention, where four of six groups drop nothing).
    runs = _runs(p, weights.shape[0])
    per_group = weights.shape[0] // groups
    dropping_rows = sum(stop - start for start, stop, dropping in runs if dropping)
    bits = _bits(weights[:dropping_rows])
    masks, offset = [], 0
    for start, stop, dropping in runs:
        if dropping:
            rows = bits[offset : offset + stop - start]
            offset += stop - start
            mask = torch.empty(rows.shape, dtype=weights.dtype)
            masks.append(_scaled_keep(rows, p[start // per_group], out=mask))
    return _DroppedProduct.apply(weights, values, runs, *masks)


class Dropout(nn.Module):
    """Module form of :func:`dropout`; ``x: (G, *)`` → ``(G, *)``.

    Args:
        p: drop probability, or one per index of the input's first dimension.
    """

    def __init__(self, p: float | Sequence[float] = 0.5) -> None:
        super().__init__()
        self.p = _check("Dropout.p", p)

    def forward(self, x: Tensor) -> Tensor:
        return _dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
