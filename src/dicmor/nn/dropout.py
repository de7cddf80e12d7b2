"""Dropout whose CPU mask costs a quarter of the random draws of PyTorch's, with an optional
drop probability per group.

PyTorch's CPU dropout draws one Mersenne-Twister number per element. At DiCMoR's sizes (a few
thousand to a few tens of thousands of elements, hundreds of dropout calls per training step)
those draws are most of the Multimodal Transformer's training time. Here one 64-bit draw decides
four elements, 16 bits each, so the drop probability is quantised to a multiple of 1/65536 and
the kept values are rescaled by the exact inverse of the quantised keep probability (the output
stays unbiased). Other devices use PyTorch's generator unchanged: it is counter-based and cheap.
Both follow the global seed.

Grouped layers (one group per modality) may need a different probability per group, such as the
per-target attention dropout of the Multimodal Transformer: a sequence of probabilities applies
one to each index of the first dimension.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    if isinstance(p, float):
        if x.device.type != "cpu":
            return F.dropout(x, p, True)
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
            keep = torch.rand_like(x) >= probability
            return x * keep.to(x.dtype) / (1.0 - probability)
        dropped_by_group = [round(v * _LEVELS) for v in p]
        threshold = torch.tensor(
            [d - _LEVELS // 2 for d in dropped_by_group], dtype=torch.int16
        ).view(shape)
        scale = torch.tensor(
            [_LEVELS / (_LEVELS - d) for d in dropped_by_group], dtype=x.dtype
        ).view(shape)
    # The comparison writes its 0/1 straight into a float tensor, and the scale goes into that
    # mask in place: one pass over the data fewer than a bool mask cast and scaled.
    mask = torch.ge(
        _bits(x), threshold, out=torch.empty_like(x, memory_format=torch.contiguous_format)
    )
    return x * mask.mul_(scale)


def _bits(x: Tensor) -> Tensor:
    """Uniform int16 values over [-32768, 32767], one per element of ``x``, laid out like a
    contiguous ``x``."""
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    return words.view(torch.int16)[:n].view(x.shape)


def _keep_mask(x: Tensor, p: float | tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """``(keep, scale)`` for dropping elements of ``x: (G, *)`` as :func:`dropout` does: ``keep``
    a bool tensor like ``x`` (the same draws as :func:`dropout` on CPU), ``scale`` the factor of
    the kept values, a scalar or one per index g (shape (G, 1, ...))."""
    probabilities = (p,) if isinstance(p, float) else p
    shape = (len(probabilities),) + (1,) * (x.dim() - 1) if not isinstance(p, float) else ()
    if x.device.type != "cpu":
        probability = torch.tensor(probabilities, dtype=x.dtype, device=x.device).view(shape)
        return torch.rand_like(x) >= probability, 1.0 / (1.0 - probability)
    dropped = [round(v * _LEVELS) for v in probabilities]
    threshold = torch.tensor([d - _LEVELS // 2 for d in dropped], dtype=torch.int16).view(shape)
    scale = torch.tensor([_LEVELS / (_LEVELS - d) for d in dropped], dtype=x.dtype).view(shape)
    return torch.ge(_bits(x), threshold), scale


class _DroppedProduct(torch.autograd.Function):
    """``(weights * keep * scale) @ values``, saving the 1-byte ``keep`` instead of a float mask
    and the dropped weights: the backward recomputes them from ``weights``, which the softmax
    before it keeps anyway."""

    @staticmethod
    def forward(ctx, weights: Tensor, values: Tensor, keep: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(weights, values, keep, scale)
        return (weights * keep * scale) @ values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        weights, values, keep, scale = ctx.saved_tensors
        grad_weights = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_weights = (grad @ values.transpose(-2, -1)) * keep * scale
        if ctx.needs_input_grad[1]:
            grad_values = (weights * keep * scale).transpose(-2, -1) @ grad
        return grad_weights, grad_values, None, None


def dropout_matmul(
    weights: Tensor, values: Tensor, p: float | Sequence[float], training: bool = True
) -> Tensor:
    """``dropout(weights, p) @ values`` for attention: ``weights: (G·B, h, T_q, T_kv)``,
    ``values: (G·B, h, T_kv, d)``, ``p`` one probability or one per group g of the G (the
    leading G·B rows taken g-major). The same draws and values as :func:`dropout` followed by
    the product; in training it keeps a 1-byte mask for the backward instead of two float
    tensors of the weights' size (the mask and the dropped weights)."""
    p = _check("dropout_matmul.p", p)
    if not training or p == 0.0:
        return weights @ values
    groups = 1 if isinstance(p, float) else len(p)
    if weights.shape[0] % groups:
        raise ValueError(
            f"dropout_matmul: {groups} probabilities for a first dimension of size "
            f"{weights.shape[0]}"
        )
    flat = weights.reshape(groups, -1)  # (G, B·h·T_q·T_kv), g-major like the rows
    keep, scale = _keep_mask(flat, p)
    keep = keep.view(weights.shape)
    if isinstance(scale, Tensor) and scale.dim() > 0:
        scale = scale.view(groups).repeat_interleave(weights.shape[0] // groups)
        scale = scale.view(-1, 1, 1, 1)
    scale = torch.as_tensor(scale, dtype=weights.dtype, device=weights.device)
    return _DroppedProduct.apply(weights, values, keep, scale)


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
