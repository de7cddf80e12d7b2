"""Affine coupling layer with a sigmoid scale.

The coupling layer of Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
Convolutions", NeurIPS 2018), section 3.3, with the ``sigmoid(s + 2)`` scale of its reference
code, as used by DiCMoR (Wang, Cui & Li, "Distribution-Consistent Modal Recovering for Incomplete
Multimodal Learning", ICCV 2023). The conditioner sees one time step at a time (1x1 convolutions),
so the layer is invertible per time step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AffineCoupling(nn.Module):
    """Split ``x: (B, C, T)`` into ``a = x[:, :C//2]`` and ``b = x[:, C//2:]``; transform b given a.

    ``(s_raw, t) = NN(a)``, ``b' = (b + t) * sigmoid(s_raw + 2)``, output ``cat(a, b')``. NN is
    three 1x1 convolutions (a linear map of the channels at each time step) with ReLUs between
    them. Its last layer starts at zero, so the layer starts as ``b' = b * sigmoid(2)``. The sigmoid
    keeps the scale in (0, 1), which bounds how much one layer can expand the data.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the conditioner's hidden layers.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"AffineCoupling: channels must be >= 2, got {channels}")
        if hidden < 1:
            raise ValueError(f"AffineCoupling: hidden must be >= 1, got {hidden}")
        self.channels = channels
        self.split = channels // 2
        out = 2 * (channels - self.split)
        self.net = nn.Sequential(
            nn.Linear(self.split, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"AffineCoupling: expected a tensor of shape (B, {self.channels}, T), "
                f"got {tuple(x.shape)}"
            )

    def _conditioner(self, a: Tensor) -> tuple[Tensor, Tensor]:
        # Linear layers on (B, T, C) are the 1x1 convolutions of the conditioner; at flow sizes
        # they run faster on CPU than the convolution kernel.
        s_raw, t = self.net(a.transpose(1, 2)).transpose(1, 2).chunk(2, dim=1)  # (B, C - C//2, T)
        return s_raw + 2.0, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))``."""
        self._check(x)
        a, b = x[:, : self.split], x[:, self.split :]
        s, t = self._conditioner(a)
        log_scale = F.logsigmoid(s)
        b = (b + t) * log_scale.exp()
        return torch.cat([a, b], dim=1), log_scale.sum(dim=(1, 2))

    def inverse(self, z: Tensor) -> Tensor:
        """Map ``z: (B, C, T)`` back to ``x: (B, C, T)``."""
        self._check(z)
        a, b = z[:, : self.split], z[:, self.split :]
        s, t = self._conditioner(a)
        # 1 / sigmoid(s) = 1 + exp(-s) exactly, and unlike the division it never meets 0.
        b = b * (1.0 + (-s).exp()) - t
        return torch.cat([a, b], dim=1)
