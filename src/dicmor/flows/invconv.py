"""Invertible 1x1 convolution with an LU-parametrised weight.

From Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018), section 3.2; one of the three layers of each flow step in DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dicmor.flows.actnorm import check_points
from dicmor.nn.grouped import GroupSelection, select_groups


class InvertibleConv1x1(nn.Module):
    """Channel mixing ``z_n = W x_n``, ``W = P L (U + diag(sign(s) exp(log|s|)))``, per group.

    P is a fixed permutation, L lower triangular with unit diagonal, U strictly upper triangular.
    The parametrisation makes ``log|det W| = sum(log|s|)`` free to compute and keeps W invertible
    while the signs of s are fixed. Each group's W starts as a random orthogonal matrix drawn from
    the global torch RNG, so the layer is volume-preserving at initialisation.

    Args:
        channels: number of channels C.
        groups: number of groups G.

    Shapes:
        x: (G, N, C) → z: (G, N, C), logdet: (G, N)
    """

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"InvertibleConv1x1: channels must be >= 1, got {channels}")
        if groups < 1:
            raise ValueError(f"InvertibleConv1x1: groups must be >= 1, got {groups}")
        self.channels = channels
        self.groups = groups
        q, _ = torch.linalg.qr(torch.randn(groups, channels, channels))
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal(dim1=1, dim2=2)  # (G, C)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", s.sign())
        # Only the strict triangles of `lower` and `upper` are used; the rest is masked out.
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(upper)
        self.log_abs_s = nn.Parameter(s.abs().log())

    def _factors(self, group: GroupSelection) -> tuple[Tensor, Tensor]:
        return lu_factors(
            select_groups(self.lower, group),
            select_groups(self.upper, group),
            select_groups(self.sign_s, group),
            select_groups(self.log_abs_s, group),
        )

    def weight(self, group: GroupSelection = None) -> Tensor:
        """The current weights ``W: (G, C, C)``, or group g's as ``(1, C, C)``."""
        lower, upper = self._factors(group)
        return select_groups(self.permutation, group) @ lower @ upper

    def forward(self, x: Tensor, group: GroupSelection = None) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``."""
        check_points("InvertibleConv1x1", x, self.groups, self.channels, group)
        z = x @ self.weight(group).transpose(1, 2)  # row form of W x_n
        logdet = select_groups(self.log_abs_s, group).sum(dim=1, keepdim=True)
        return z, logdet.expand(x.shape[0], x.shape[1])

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        check_points("InvertibleConv1x1", z, self.groups, self.channels, group)
        lower, upper = self._factors(group)
        # In row form z = x U^T L^T P^T, and P^T P = I: two triangular solves from the right undo
        # L and U without forming W^-1.
        y = z @ select_groups(self.permutation, group)
        y = torch.linalg.solve_triangular(
            lower.transpose(1, 2), y, upper=True, left=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(upper.transpose(1, 2), y, upper=False, left=False)


def lu_factors(
    lower: Tensor, upper: Tensor, sign_s: Tensor, log_abs_s: Tensor
) -> tuple[Tensor, Tensor]:
    """The triangular factors ``(L, U + diag(sign(s) exp(log|s|)))`` of W from the raw
    parameters, for any leading shape: lower, upper (*, C, C); sign_s, log_abs_s (*, C)."""
    ones = torch.ones(lower.shape[-2:], dtype=lower.dtype, device=lower.device)
    # Multiplying by 0/1 triangles is the same as tril/triu and much faster for a stack.
    lower = lower * ones.tril(-1) + torch.eye(
        lower.shape[-1], dtype=lower.dtype, device=lower.device
    )
    upper = upper * ones.triu(1) + torch.diag_embed(sign_s * log_abs_s.exp())
    return lower, upper
