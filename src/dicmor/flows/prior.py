"""Class-conditional Gaussian prior shared by all modalities' flows, and the flow loss.

DiCMoR (Wang, Cui & Li, "Distribution-Consistent Modal Recovering for Incomplete Multimodal
Learning", ICCV 2023) maps every modality of class c to the same Gaussian N(mu_c, diag sigma_c^2),
constant over time, so that a latent encoded by one modality's flow can be decoded by another's.
The loss is the negative log-likelihood in bits per dimension, as in Glow (Kingma & Dhariwal,
NeurIPS 2018).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


class ClassConditionalPrior(nn.Module):
    """Diagonal Gaussian per class over C channels, the same at every time step.

    One ``(K, C)`` table each for the means and the log standard deviations, indexed by the label,
    so a batch costs one gather whatever its classes. Starts at N(0, I) for every class.

    Args:
        num_classes: number of classes K.
        channels: number of channels C.
    """

    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassConditionalPrior: num_classes must be >= 1, got {num_classes}")
        if channels < 1:
            raise ValueError(f"ClassConditionalPrior: channels must be >= 1, got {channels}")
        self.num_classes = num_classes
        self.channels = channels
        self.mean = nn.Parameter(torch.zeros(num_classes, channels))
        self.log_std = nn.Parameter(torch.zeros(num_classes, channels))

    def _check_labels(self, y: Tensor) -> None:
        if y.dim() != 1 or y.dtype != torch.long:
            raise ValueError(
                f"ClassConditionalPrior: y must be a 1-D long tensor of class indices, "
                f"got shape {tuple(y.shape)} and dtype {y.dtype}"
            )

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """Log density of ``z: (B, C, T)`` under the prior of classes ``y: (B,)``, shape (B,)."""
        self._check_labels(y)
        if z.dim() != 3 or z.shape[1] != self.channels or z.shape[0] != y.shape[0]:
            raise ValueError(
                f"ClassConditionalPrior: z must have shape ({y.shape[0]}, {self.channels}, T) "
                f"to match y, got {tuple(z.shape)}"
            )
        mean = self.mean[y][:, :, None]  # (B, C, 1)
        log_std = self.log_std[y][:, :, None]  # (B, C, 1)
        u = (z - mean) * (-log_std).exp()
        log_density = -0.5 * u.square() - log_std - 0.5 * _LOG_2PI  # (B, C, T)
        return log_density.sum(dim=(1, 2))

    def sample(
        self,
        y: Tensor,
        length: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``z: (B, C, length)`` for classes ``y: (B,)``; temperature scales the std."""
        self._check_labels(y)
        if length < 1:
            raise ValueError(f"ClassConditionalPrior: length must be >= 1, got {length}")
        mean = self.mean[y][:, :, None]  # (B, C, 1)
        std = self.log_std[y].exp()[:, :, None]  # (B, C, 1)
        noise = torch.randn(
            y.shape[0],
            self.channels,
            length,
            generator=generator,
            dtype=self.mean.dtype,
            device=self.mean.device,
        )
        return mean + temperature * std * noise


def nll_bits_per_dim(log_prob: Tensor, logdet: Tensor, num_dims: int) -> Tensor:
    """Flow loss ``-(sum logdet + sum log_prob) / (ln 2 * B * num_dims)``, floored at 0.

    Args:
        log_prob: prior log density of each latent, (B,).
        logdet: log|det| of the flow's Jacobian for each sample, (B,).
        num_dims: dimensions per sample, C * T.

    Returns:
        A scalar tensor.
    """
    if log_prob.dim() != 1 or log_prob.shape != logdet.shape:
        raise ValueError(
            f"nll_bits_per_dim: log_prob and logdet must both have shape (B,), "
            f"got {tuple(log_prob.shape)} and {tuple(logdet.shape)}"
        )
    if num_dims < 1:
        raise ValueError(f"nll_bits_per_dim: num_dims must be >= 1, got {num_dims}")
    nll = -(logdet.sum() + log_prob.sum()) / (math.log(2.0) * log_prob.shape[0] * num_dims)
    return nll.clamp(min=0.0)
