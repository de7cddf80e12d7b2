"""Dropout whose CPU mask costs a quarter of the random draws of PyTorch's.

PyTorch's CPU dropout draws one Mersenne-Twister number per element. At DiCMoR's sizes (a few
thousand to a few tens of thousands of elements, hundreds of dropout calls per training step)
those draws are most of the Multimodal Transformer's training time. Here one 64-bit draw decides
four elements, 16 bits each, so the drop probability is quantised to a multiple of 1/65536 and
the kept values are rescaled by the exact inverse of the quantised keep probability (the output
stays unbiased). Other devices use PyTorch's dropout unchanged: their generator is counter-based
and cheap. Both follow the global seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Zero each element of ``x`` with probability ``p`` (quantised to 1/65536 on CPU) and scale
    the rest by 1 / (1 - p); the identity when not training or when ``p == 0``."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    dropped = round(p * _LEVELS)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[:n].view(x.shape)  # uniform over [-32768, 32767]
    keep = bits >= dropped - _LEVELS // 2
    return x * keep.to(x.dtype) * (_LEVELS / (_LEVELS - dropped))


class Dropout(nn.Module):
    """Module form of :func:`dropout`; ``x: (*)`` → ``(*)``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout.p: must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
