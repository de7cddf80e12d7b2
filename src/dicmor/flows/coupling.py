"""Affine coupling layer with a sigmoid scale.

The coupling layer of Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
Convolutions", NeurIPS 2018), section 3.3, with the ``sigmoid(s + 2)`` scale of its reference
code, as used by DiCMoR (Wang, Cui & Li, "Distribution-Consistent Modal Recovering for Incomplete
Multimodal Learning", ICCV 2023). The conditioner sees one point (time step) at a time, as the
1x1 convolutions of the original, so the layer is invertible per point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.flows.actnorm import check_points
from dicmor.nn.grouped import GroupedLinear, GroupSelection


class AffineCoupling(nn.Module):
    """Split ``x: (G, N, C)`` into ``a = x[..., :C//2]`` and ``b = x[..., C//2:]``; transform b
    given a.

    ``(s_raw, t) = NN(a)``, ``b' = (b + t) * sigmoid(s_raw + 2)``, output ``cat(a, b')``. NN is
    three linear maps of the channels (1x1 convolutions over time) with ReLUs between them, one
    set per group. Its last layer starts at zero, so the layer starts as ``b' = b * sigmoid(2)``.
    The sigmoid keeps the scale in (0, 1), which bounds how much one layer can expand the data.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the conditioner's hidden layers.
        groups: number of groups G.

    Shapes:
        x: (G, N, C) → z: (G, N, C), logdet: (G, N)
    """

    def __init__(self, channels: int, hidden: int = 64, groups: int = 1) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"AffineCoupling: channels must be >= 2, got {channels}")
        if hidden < 1:
            raise ValueError(f"AffineCoupling: hidden must be >= 1, got {hidden}")
        if groups < 1:
            raise ValueError(f"AffineCoupling: groups must be >= 1, got {groups}")
        self.channels = channels
        self.groups = groups
        self.split = channels // 2
        out = 2 * (channels - self.split)
        self.net = nn.ModuleList(
            [
                GroupedLinear(groups, self.split, hidden),
                GroupedLinear(groups, hidden, hidden),
                GroupedLinear(groups, hidden, out),
            ]
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _conditioner(self, a: Tensor, group: GroupSelection) -> tuple[Tensor, Tensor]:
        first, second, last = self.net
        hidden = second(first(a, group).relu(), group).relu()
        s_raw, t = last(hidden, group).chunk(2, dim=-1)  # (G, N, C - C//2) each
        return s_raw + 2.0, t

    def forward(self, x: Tensor, group: GroupSelection = None) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``."""
        check_points("AffineCoupling", x, self.groups, self.channels, group)
        # One split rather than two slices: its backward is one concatenation, not two
        # zero-filled full-size gradients.
        a, b = x.split([self.split, self.channels - self.split], dim=-1)
        s, t = self._conditioner(a, group)
        log_scale = F.logsigmoid(s)
        b = (b + t) * log_scale.exp()
        return torch.cat([a, b], dim=-1), log_scale.sum(dim=-1)

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        check_points("AffineCoupling", z, self.groups, self.channels, group)
        a, b = z.split([self.split, self.channels - self.split], dim=-1)
        s, t = self._conditioner(a, group)
        # 1 / sigmoid(s) = 1 + exp(-s) exactly, and unlike the division it never meets 0.
        b = b * (1.0 + (-s).exp()) - t
        return torch.cat([a, b], dim=-1)
