"""Activation normalisation with data-dependent initialisation.

ActNorm is the first layer of each Glow step (Kingma & Dhariwal, "Glow: Generative Flow with
Invertible 1x1 Convolutions", NeurIPS 2018), used per modality in DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023).

Every flow layer here acts on points ``x: (G, N, C)``: N points of C channels in each of G
independent groups (one group per modality), each group with its own parameters. A layer given
``group=g`` takes ``x: (1, N, C)`` and applies group g's parameters only; given a list of groups,
``x: (len(group), N, C)`` and those groups' parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dicmor.nn.grouped import GroupSelection, select_groups

__all__ = ["ActNorm", "check_points", "selected_groups"]


def selected_groups(groups: int, group: GroupSelection) -> list[int]:
    """The indices that ``group`` selects among ``groups`` groups."""
    if group is None:
        return list(range(groups))
    return [group] if isinstance(group, int) else list(group)


def check_points(owner: str, x: Tensor, groups: int, channels: int, group: GroupSelection) -> None:
    """Raise a one-line error unless ``x`` is ``(G', N, C)`` for the G' selected groups and the
    selection names existing groups."""
    selected = selected_groups(groups, group)
    if x.dim() != 3 or x.shape[0] != len(selected) or x.shape[2] != channels:
        raise ValueError(
            f"{owner}: expected a tensor of shape ({len(selected)}, N, {channels}), "
            f"got {tuple(x.shape)}"
        )
    if not all(0 <= g < groups for g in selected):
        raise ValueError(f"{owner}: group must be in [0, {groups}), got {group}")


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
        self, x: Tensor, group: GroupSelection = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``; ``mask: (G, N)`` marks
        the points the data-dependent initialisation may use (default: all)."""
        check_points("ActNorm", x, self.groups, self.channels, group)
        groups = selected_groups(self.groups, group)
        if self.training and not all(self._initialized[g] for g in groups):
            self._initialize(x, groups, mask)
        log_scale = select_groups(self.log_scale, group)  # (G', C)
        z = (x + select_groups(self.bias, group)[:, None]) * log_scale.exp()[:, None]
        logdet = log_scale.sum(dim=1, keepdim=True).expand(x.shape[0], x.shape[1])
        return z, logdet

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        check_points("ActNorm", z, self.groups, self.channels, group)
        log_scale = select_groups(self.log_scale, group)
        return z * (-log_scale).exp()[:, None] - select_groups(self.bias, group)[:, None]


def _sync_initialized_flags(module: nn.Module, incompatible_keys: object) -> None:
    module._initialized = [bool(flag) for flag in module.initialized.tolist()]
