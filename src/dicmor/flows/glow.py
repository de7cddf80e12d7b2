"""Flow steps and the K-step flow that maps one modality's features to the shared latent space.

A Glow step (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
NeurIPS 2018) is ActNorm -> invertible 1x1 convolution -> affine coupling. DiCMoR (Wang, Cui & Li,
"Distribution-Consistent Modal Recovering for Incomplete Multimodal Learning", ICCV 2023) gives
each modality such a flow, K = 32 steps, acting on the d channels at each time step. Since every
modality has the same d and length, the M flows run as one flow of M groups: the same arithmetic
in a third of the calls.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from dicmor.flows.actnorm import ActNorm, selected_groups
from dicmor.flows.coupling import AffineCoupling
from dicmor.flows.invconv import InvertibleConv1x1, lu_factors
from dicmor.nn.grouped import GroupSelection, select_groups

StepType = Literal["glow", "coupling-only"]
_INVCONV_TENSORS = ("permutation", "lower", "upper", "sign_s", "log_abs_s")


class GlowStep(nn.Module):
    """ActNorm -> InvertibleConv1x1 -> AffineCoupling on points ``x: (G, N, C)``.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the coupling conditioner.
        groups: number of groups G.

    Shapes:
        x: (G, N, C), mask: (G, N) bool → z: (G, N, C), logdet: (G, N)
    """

    def __init__(self, channels: int, hidden: int = 64, groups: int = 1) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels, groups)
        self.invconv = InvertibleConv1x1(channels, groups)
        self.coupling = AffineCoupling(channels, hidden, groups)

    def forward(
        self, x: Tensor, group: GroupSelection = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``; ``mask`` as in
        `ActNorm`."""
        x, logdet_norm = self.actnorm(x, group, mask)
        x, logdet_conv = self.invconv(x, group)
        z, logdet_coupling = self.coupling(x, group)
        return z, logdet_norm + logdet_conv + logdet_coupling

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        x = self.invconv.inverse(self.coupling.inverse(z, group), group)
        return self.actnorm.inverse(x, group)


class CouplingOnlyStep(nn.Module):
    """A step made of one AffineCoupling, with no normalisation and no channel mixing.

    This reproduces the public DiCMoR code, which runs only the coupling layers with the same
    split every step. Consequently the first ``C // 2`` channels pass through a whole flow of
    these steps unchanged; only the other half is transformed. Use it for parity experiments.

    Args:
        channels: number of channels C (at least 2).
        hidden: width of the coupling conditioner.
        groups: number of groups G.

    Shapes:
        x: (G, N, C) → z: (G, N, C), logdet: (G, N)
    """

    def __init__(self, channels: int, hidden: int = 64, groups: int = 1) -> None:
        super().__init__()
        self.coupling = AffineCoupling(channels, hidden, groups)

    def forward(
        self, x: Tensor, group: GroupSelection = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``x: (G, N, C)`` to ``(z: (G, N, C), logdet: (G, N))``; ``mask`` is unused (no
        data-dependent initialisation)."""
        return self.coupling(x, group)

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map ``z: (G, N, C)`` back to ``x: (G, N, C)``."""
        return self.coupling.inverse(z, group)


_STEPS: dict[str, type[GlowStep] | type[CouplingOnlyStep]] = {
    "glow": GlowStep,
    "coupling-only": CouplingOnlyStep,
}


class Flow(nn.Module):
    """K flow steps mapping data ``x: (B, C, T)`` to a latent ``z: (B, C, T)`` of the same shape.

    With ``groups = G`` the module holds G independent flows (one per modality) and maps
    ``x: (G, B, C, T)`` to ``z: (G, B, C, T)`` in one pass. A 3-D input is one group: the only
    one of a single-group flow, or the one named by ``group``; a list of groups takes
    ``(len(group), B, C, T)``. Each time step is a point of the step layers, so the sequence is
    flattened to ``(G, B·T, C)`` once, not at every step.

    Args:
        channels: number of channels C (at least 2).
        num_steps: number of steps K.
        step_type: ``"glow"`` for full Glow steps, ``"coupling-only"`` for the public code's
            coupling-only steps (see `CouplingOnlyStep`).
        hidden: width of each coupling conditioner.
        groups: number of independent flows G.

    Shapes:
        x: (G, B, C, T) → z: (G, B, C, T), logdet: (G, B); or x: (B, C, T) → z: (B, C, T),
        logdet: (B,)
    """

    def __init__(
        self,
        channels: int,
        num_steps: int = 32,
        step_type: StepType = "glow",
        hidden: int = 64,
        groups: int = 1,
    ) -> None:
        super().__init__()
        if step_type not in _STEPS:
            raise ValueError(
                f"Flow: step_type must be one of {list(get_args(StepType))}, got {step_type!r}"
            )
        if num_steps < 1:
            raise ValueError(f"Flow: num_steps must be >= 1, got {num_steps}")
        if groups < 1:
            raise ValueError(f"Flow: groups must be >= 1, got {groups}")
        self.channels = channels
        self.step_type = step_type
        self.groups = groups
        step_cls = _STEPS[step_type]
        self.steps = nn.ModuleList(step_cls(channels, hidden, groups) for _ in range(num_steps))
        # Affine maps built without gradient, by (direction, groups): see `_affine_maps`.
        self._affine_cache: dict[tuple, tuple] = {}

    def _points(self, x: Tensor, group: GroupSelection) -> Tensor:
        """(G', B, C, T) or one group's (B, C, T) → points (G', B·T, C)."""
        single = isinstance(group, int) or (group is None and self.groups == 1)
        if x.dim() == 3 and single:
            x = x[None]
        if not all(0 <= g < self.groups for g in selected_groups(self.groups, group)):
            raise ValueError(f"Flow: group must be in [0, {self.groups}), got {group}")
        selected = len(selected_groups(self.groups, group))
        if x.dim() != 4 or x.shape[2] != self.channels or x.shape[0] != selected:
            groups = "" if single else f"{selected}, "
            raise ValueError(
                f"Flow: expected a tensor of shape ({groups}B, {self.channels}, T), "
                f"got {tuple(x.shape)}"
            )
        return x.transpose(2, 3).reshape(x.shape[0], -1, self.channels)  # (G', B·T, C)

    @staticmethod
    def _sequences(points: Tensor, like: Tensor) -> Tensor:
        """Points (G', B·T, C) back to the layout of ``like``."""
        batch, length = like.shape[-3], like.shape[-1]
        x = points.view(points.shape[0], batch, length, -1).transpose(2, 3)  # (G', B, C, T)
        return x if like.dim() == 4 else x[0]

    def _awaiting_initialization(self, group: GroupSelection, mask: Tensor | None) -> bool:
        """Whether some selected group has an uninitialised ActNorm and data to initialise it
        (``mask: (G', B)``)."""
        if self.step_type != "glow":
            return False
        groups = selected_groups(self.groups, group)
        pending = [
            row
            for row, g in enumerate(groups)
            if not all(step.actnorm._initialized[g] for step in self.steps)
        ]
        if not pending or mask is None:
            return bool(pending)
        return bool(mask[pending].any())

    def _stacked(self, layer: str, name: str, group: GroupSelection) -> Tensor:
        """One parameter or buffer of every step's ``layer``, stacked: (K, G', *)."""
        return torch.stack(
            [select_groups(getattr(getattr(step, layer), name), group) for step in self.steps]
        )

    def _raw_parts(self, group: GroupSelection) -> tuple[Tensor, ...]:
        """The ActNorm and 1x1-convolution parameters of every step, stacked (K, G', *):
        ``(permutation, lower, upper, sign_s, log_abs_s, actnorm_bias, actnorm_log_scale)``."""
        return (
            *(self._stacked("invconv", name, group) for name in _INVCONV_TENSORS),
            self._stacked("actnorm", "bias", group),
            self._stacked("actnorm", "log_scale", group),
        )

    def forward(
        self, x: Tensor, group: GroupSelection = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map data ``x: (G, B, C, T)`` to ``(z: (G, B, C, T), logdet: (G, B))`` summed over
        steps (3-D ``x``: one group, ``logdet: (B,)``).

        ``mask: (G, B)`` marks the samples that ActNorm's data-dependent initialisation may use
        (those whose modality is available); the map itself treats every sample alike.
        """
        points = self._points(x, group)
        batch, length = x.shape[-3], x.shape[-1]
        if mask is not None:
            if mask.shape != x.shape[:-2]:
                raise ValueError(
                    f"Flow: mask must have shape {tuple(x.shape[:-2])} (one flag per sample), "
                    f"got {tuple(mask.shape)}"
                )
            mask = mask.reshape(points.shape[0], batch)
        if self.training and self._awaiting_initialization(group, mask):
            point_mask = None
            if mask is not None:
                point_mask = mask[:, :, None].expand(-1, -1, length).reshape(points.shape[0], -1)
            # ActNorm initialises from each step's own input, so this pass goes step by step;
            # its output is discarded so that every call computes z the same way, to the bit.
            with torch.no_grad():
                h = points
                for step in self.steps:
                    h, _ = step(h, group, point_mask)
        logdets = []
        if self.step_type == "glow":
            # ActNorm and the 1x1 convolution of a step compose to one affine map per point,
            # z = W diag(e^s) x + W diag(e^s) b: computed for all steps at once, applied in one
            # product per step.
            weights, shifts, constant = self._affine_maps(group, inverse=False)
            for step, weight_k, shift_k in zip(self.steps, weights, shifts, strict=True):
                points = torch.baddbmm(shift_k, points, weight_k)  # row form
                points, step_logdet = step.coupling(points, group)
                logdets.append(step_logdet)
            logdet = torch.stack(logdets).sum(dim=0) + constant  # (G', B·T)
        else:
            for step in self.steps:
                points, step_logdet = step.coupling(points, group)
                logdets.append(step_logdet)
            logdet = torch.stack(logdets).sum(dim=0)  # (G', B·T)
        logdet = logdet.view(points.shape[0], batch, length).sum(dim=2)  # (G', B)
        return self._sequences(points, x), logdet if x.dim() == 4 else logdet[0]

    def inverse(self, z: Tensor, group: GroupSelection = None) -> Tensor:
        """Map a latent ``z: (G, B, C, T)`` (or one group's ``(B, C, T)``) back to data."""
        points = self._points(z, group)
        if self.step_type != "glow":
            for step in reversed(self.steps):
                points = step.coupling.inverse(points, group)
            return self._sequences(points, z)
        weights, shifts, _ = self._affine_maps(group, inverse=True)
        for step, weight_k, shift_k in reversed(
            list(zip(self.steps, weights, shifts, strict=True))
        ):
            points = step.coupling.inverse(points, group)
            points = torch.baddbmm(shift_k, points, weight_k)
        return self._sequences(points, z)

    def _affine_maps(
        self, group: GroupSelection, *, inverse: bool
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """Every step's ActNorm and 1x1 convolution as one affine map of points in row form,
        ``points @ weight_k + shift_k`` (weight_k (G', C, C), shift_k (G', 1, C)), and the
        log-determinant they add per point ((G', 1), forward only).

        In eval mode without gradient (inference, validation) the maps of a selection are built
        once and reused: building them (stacking every step's parameters, LU products and, for
        the inverse, two triangular solves) costs as much as decoding one sample. They are
        dropped when the mode changes, a state is loaded or the module moves (`train`,
        `_load_from_state_dict`, `_apply`), and rebuilt when a parameter's version count
        changes. A parameter changed in eval mode by a kernel that leaves no version count
        (PyTorch's fused Adam) needs a mode change first, as a training loop makes anyway.
        """
        if self.training or torch.is_grad_enabled():
            return self._build_affine_maps(self._raw_parts(group), inverse=inverse)
        key = (inverse, tuple(selected_groups(self.groups, group)))
        versions = [t._version for t in self._affine_tensors()]
        cached = self._affine_cache.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        maps = self._build_affine_maps(self._raw_parts(group), inverse=inverse)
        self._affine_cache[key] = (versions, maps)
        return maps

    def _affine_tensors(self) -> list[Tensor]:
        """The parameters and buffers the affine maps are built from."""
        return [
            t
            for step in self.steps
            for t in (
                *step.invconv.parameters(),
                *step.invconv.buffers(),
                *step.actnorm.parameters(),
            )
        ]

    def train(self, mode: bool = True) -> Flow:
        self._affine_cache.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._affine_cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._affine_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _build_affine_maps(
        self, raw: tuple[Tensor, ...], *, inverse: bool
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """The maps of `_affine_maps` from the stacked parameters ``raw`` (of `_raw_parts`),
        for all steps at once."""
        permutation, lower, upper, sign_s, log_abs_s, bias, log_scale = raw
        lower, upper = lu_factors(lower, upper, sign_s, log_abs_s)
        if not inverse:
            # z = W diag(e^s) x + W diag(e^s) b
            weight = permutation @ lower @ upper * log_scale.exp()[:, :, None, :]
            shift = (weight @ bias[..., None]).squeeze(-1)  # (K, G', C)
            constant = (log_scale.sum(dim=(0, 2)) + log_abs_s.sum(dim=(0, 2)))[:, None]
            return weight.transpose(2, 3).unbind(0), shift[:, :, None].unbind(0), constant
        # x = diag(e^-s) W^-1 z - b, with W^-1 = U^-1 L^-1 P^T from two batched triangular
        # solves.
        identity = torch.eye(self.channels, dtype=lower.dtype, device=lower.device)
        weight = torch.linalg.solve_triangular(
            lower, identity.expand_as(lower), upper=False, unitriangular=True
        )
        weight = torch.linalg.solve_triangular(upper, weight, upper=True)
        weight = weight @ permutation.transpose(2, 3)  # W^-1: (K, G', C, C)
        weight = weight.transpose(2, 3) * (-log_scale).exp()[:, :, None, :]  # row form
        return weight.unbind(0), (-bias)[:, :, None].unbind(0), log_scale.new_zeros(())
