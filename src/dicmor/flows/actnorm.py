"""Activation normalisation with data-dependent initialisation.

ActNorm is the first layer of each Glow step (Kingma & Dhariwal, "Glow: Generative Flow with
Invertible 1x1 Convolutions", NeurIPS 2018), used per modality in DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023).

Every flow layer here acts on points ``x: (G, N, C)``: N points of C channels in each of G
independent groups (one group per modality), each group with its own parameters. A layer given
``group=g`` takes ``x: (1, N, C)`` and applies group g's parameters only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_points(owner: str, x: Tensor, groups: int, channels: int, group: int | None) -> None:
    """Raise a one-line error unless ``x`` is ``(G, N, C)``, or ``(1, N, C)`` when a group is
    selected, and ``group`` names an existing group."""
    expected = 1 if group is not None else groups
    if x.dim() != 3 or x.shape[0] != expected or x.shape[2] != channels:
        raise ValueError(
            f"{owner}: expected a tensor of shape ({expected}, N, {channels}), got {tuple(x.shape)}"
        )
    if group is not None and not 0 <= group < groups:
        raise ValueError(f"{owner}: group must be in [0, {groups}), got {group}")


def select(parameter: Tensor, group: int | None) -> Tensor:
    """All groups' ``parameter: (G, *)``, or group g's as ``(1, *)``."""
    return parameter if group is None else parameter[group : group + 1]


class ActNorm(nn.Module):
    """Per-channel affine map ``z = (x + bias) * exp(log_scale)`` for each group.

    The first forward call in training mode sets a group's ``bias`` and ``log_scale`` so that
    its points come out with zero mean and unit variance per channel. Before that the layer is
    the identity, in both directions. A mask can exclude points from these statistics (samples
    whose modality is unavailable, fed as zeros); a group with no unmasked point stays
    uninitialised.

    Args:
        channels: number of channels C.
        groups: number of groups G.
        eps: added to the standard deviation at initialisation, so constant channels stay finite.

    Shapes:
        x: (G, N, C), mask: (G, N) bool → z: (G, N, C), logdet: (G, N)
    """

    def __init__(self, channels: int, groups: int = 1, eps: float = 1e-6) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"ActNorm: channels must be >= 1, got {channels}")
        if groups < 1:
            raise ValueError(f"ActNorm: groups must be >= 1, got {groups}")
        self.channels = channels
        self.groups = groups
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(groups, channels))
        self.log_scale = nn.Parameter(torch.zeros(groups, channels))
        # A buffer so the flags travel with state_dict; the Python mirror lets forward decide
        # without reading a tensor (a host sync on accelerators).
        self.register_buffer("initialized", torch.zeros(groups, dtype=torch.bool))
        self._initialized = [False] * groups
        self.register_load_state_dict_post_hook(_sync_initialized_flags)

    @torch.no_grad()
    def _initialize(self, x: Tensor, groups: list[int], mask: Tensor | None) -> None:
        if mask is None:
            var, mean = torch.var_mean(x, dim=1, correction=0)  # (G', C), (G', C)
            counts = [x.shape[1]] * x.shape[0]
        else:
            weight = mask.to(x.dtype)[:, :, None]  # (G', N, 1)
            count = weight.sum(dim=1)  # (G', 1)
            mean = (x * weight).sum(dim=1) / count.clamp(min=1.0)  # (G', C)
            var = ((x - mean[:, None]).square() * weight).sum(dim=1) / count.clamp(min=1.0)
            counts = count.squeeze(1).tolist()
        for row, g in enumerate(groups):
            if self._initialized[g] or counts[row] == 0:
                continue
            self.bias[g].copy_(-mean[row])
            self.log_scale[g].copy_(-torch.log(var[row].sqrt() + self.eps))
            self.initialized[g] = True
            self._initialized[g] = True

    def forward(
        self, x: Tensor, group: int | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``; ``mask: (G, N)`` marks
        the points the data-dependent initialisation may use (default: all)."""
        check_points("ActNorm", x, self.groups, self.channels, group)
        groups = list(range(self.groups)) if group is None else [group]
        if self.training and not all(self._initialized[g] for g in groups):
            self._initialize(x, groups, mask)
        log_scale = select(self.log_scale, group)  # (G', C)
        z = (x + select(self.bias, group)[:, None]) * log_scale.exp()[:, None]
        logdet = log_scale.sum(dim=1, keepdim=True).expand(x.shape[0], x.shape[1])
        return z, logdet

    def inverse(self, z: Tensor, group: int | None = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        check_points("ActNorm", z, self.groups, self.channels, group)
        log_scale = select(self.log_scale, group)
        return z * (-log_scale).exp()[:, None] - select(self.bias, group)[:, None]


def _sync_initialized_flags(module: nn.Module, incompatible_keys: object) -> None:
    module._initialized = [bool(flag) for flag in module.initialized.tolist()]
