"""Invertible 1x1 convolution with an LU-parametrised weight.

From Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018), section 3.2; one of the three layers of each flow step in DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class InvertibleConv1x1(nn.Module):
    """Channel mixing ``z[:, :, t] = W x[:, :, t]``, ``W = P L (U + diag(sign(s) exp(log|s|)))``.

    P is a fixed permutation, L lower triangular with unit diagonal, U strictly upper triangular.
    The parametrisation makes ``log|det W| = sum(log|s|)`` free to compute and keeps W invertible
    while the signs of s are fixed. W starts as a random orthogonal matrix drawn from the global
    torch RNG, so the layer is volume-preserving at initialisation.

    Args:
        channels: number of channels C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"InvertibleConv1x1: channels must be >= 1, got {channels}")
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal()
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", s.sign())
        # Only the strict triangles of `lower` and `upper` are used; the rest is masked out.
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_abs_s = nn.Parameter(s.abs().log())
        self.register_buffer("identity", torch.eye(channels), persistent=False)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"InvertibleConv1x1: expected a tensor of shape (B, {self.channels}, T), "
                f"got {tuple(x.shape)}"
            )

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower.tril(-1) + self.identity
        # identity * v is diag(v) in one elementwise op, cheaper than torch.diag at this size.
        upper = self.upper.triu(1) + self.identity * (self.sign_s * self.log_abs_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The current weight ``W: (C, C)``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))``."""
        self._check(x)
        z = self.weight() @ x
        logdet = (self.log_abs_s.sum() * x.shape[2]).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """Map ``z: (B, C, T)`` back to ``x: (B, C, T)``."""
        self._check(z)
        lower, upper = self._factors()
        # Two triangular solves undo L and U without forming W^-1.
        y = self.permutation.T @ z
        y = torch.linalg.solve_triangular(lower, y, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, y, upper=True)
