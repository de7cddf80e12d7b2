"""Flow steps and the K-step flow that maps one modality's features to the shared latent space.

A Glow step (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018) is ActNorm -> invertible 1x1 convolution -> affine coupling. DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023) gives
each modality such a flow, K = 32 steps, acting on the d channels at each time step.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from dicmor.flows.actnorm import ActNorm
from dicmor.flows.coupling import AffineCoupling
from dicmor.flows.invconv import InvertibleConv1x1

StepType = Literal["glow", "coupling-only"]


class GlowStep(nn.Module):
    """ActNorm -> InvertibleConv1x1 -> AffineCoupling on ``x: (B, C, T)``.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the coupling conditioner.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvertibleConv1x1(channels)
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))``."""
        x, logdet_norm = self.actnorm(x)
        x, logdet_conv = self.invconv(x)
        z, logdet_coupling = self.coupling(x)
        return z, logdet_norm + logdet_conv + logdet_coupling

    def inverse(self, z: Tensor) -> Tensor:
        """Map ``z: (B, C, T)`` back to ``x: (B, C, T)``."""
        return self.actnorm.inverse(self.invconv.inverse(self.coupling.inverse(z)))


class CouplingOnlyStep(nn.Module):
    """A step made of one AffineCoupling, with no normalisation and no channel mixing.

    This reproduces the public DiCMoR code, which runs only the coupling layers with the same
    split every step. Consequently the first ``C // 2`` channels pass through a whole flow of
    these steps unchanged; only the other half is transformed. Use it for parity experiments.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the coupling conditioner.
    """

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.coupling = AffineCoupling(channels, hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))``."""
        return self.coupling(x)

    def inverse(self, z: Tensor) -> Tensor:
        """Map ``z: (B, C, T)`` back to ``x: (B, C, T)``."""
        return self.coupling.inverse(z)


_STEPS: dict[str, type[GlowStep] | type[CouplingOnlyStep]] = {
    "glow": GlowStep,
    "coupling-only": CouplingOnlyStep,
}


class Flow(nn.Module):
    """K flow steps mapping data ``x: (B, C, T)`` to a latent ``z: (B, C, T)`` of the same shape.

    Args:
        channels: number of channels C (at least 2).
        num_steps: number of steps K.
        step_type: ``"glow"`` for full Glow steps, ``"coupling-only"`` for the public code's
            coupling-only steps (see `CouplingOnlyStep`).
        hidden: width of each coupling conditioner.
    """

    def __init__(
        self,
        channels: int,
        num_steps: int = 32,
        step_type: StepType = "glow",
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if step_type not in _STEPS:
            raise ValueError(
                f"Flow: step_type must be one of {list(get_args(StepType))}, got {step_type!r}"
            )
        if num_steps < 1:
            raise ValueError(f"Flow: num_steps must be >= 1, got {num_steps}")
        self.channels = channels
        self.step_type = step_type
        step_cls = _STEPS[step_type]
        self.steps = nn.ModuleList(step_cls(channels, hidden) for _ in range(num_steps))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map data ``x: (B, C, T)`` to ``(z: (B, C, T), logdet: (B,))`` summed over steps."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for step in self.steps:
            x, step_logdet = step(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, z: Tensor) -> Tensor:
        """Map a latent ``z: (B, C, T)`` back to data ``x: (B, C, T)``."""
        for step in reversed(self.steps):
            z = step.inverse(z)
        return z
