"""Activation normalisation with data-dependent initialisation.

ActNorm is the first layer of each Glow step (Kingma & Dhariwal, "Glow: Generative Flow with
Invertible 1x1 Convolutions", NeurIPS 2018), used per modality in DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ActNorm(nn.Module):
    """Per-channel affine map ``z = (x + bias) * exp(log_scale)``.

    The first forward call in training mode sets ``bias`` and ``log_scale`` so that this batch
    comes out with zero mean and unit variance per channel over (B, T). Before that the layer is
    the identity, in both directions.

    Args:
        channels: number of channels C.
        eps: added to the standard deviation at initialisation, so constant channels stay finite.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ActNorm: channels must be >= 1, got {channels}")
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        # A buffer so the flag travels with state_dict; the Python mirror lets forward decide
        # without reading a tensor (a host sync on accelerators).
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False
        self.register_load_state_dict_post_hook(_sync_initialized_flag)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.channels:
            raise ValueError(
                f"ActNorm: expected a tensor of shape (B, {self.channels}, T), got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        var, mean = torch.var_mean(x, dim=(0, 2), correction=0)  # (C,), (C,)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))``."""
        self._check(x)
        if self.training and not self._initialized:
            self._initialize(x)
        z = (x + self.bias[:, None]) * self.log_scale.exp()[:, None]
        logdet = (self.log_scale.sum() * x.shape[2]).expand(x.shape[0])
        return z, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """Map ``z: (B, C, T)`` back to ``x: (B, C, T)``."""
        self._check(z)
        return z * (-self.log_scale).exp()[:, None] - self.bias[:, None]


def _sync_initialized_flag(module: nn.Module, incompatible_keys: object) -> None:
    module._initialized = bool(module.initialized)
