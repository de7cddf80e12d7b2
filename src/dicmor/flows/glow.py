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
import torch.nn.functional as F
from torch import Tensor, nn

from dicmor.flows.actnorm import ActNorm, selected_groups
from dicmor.flows.coupling import AffineCoupling
from dicmor.flows.invconv import InvertibleConv1x1, lu_factors
from dicmor.nn.grouped import GroupSelection, select_groups

StepType = Literal["glow", "coupling-only"]
INFERENCE_RTOL = 1e-4
INFERENCE_ATOL = 1e-5
"""How far the glow inference path (eval mode, no gradient: `Flow._fused_forward`,
`Flow._fused_inverse`) may be from the training path's function: the same products,
associated differently, so they agree to float rounding accumulated over the steps."""
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
        # Inference step tensors by (direction, groups): see `_fused_steps`.
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
        if self.step_type == "glow" and not (self.training or torch.is_grad_enabled()):
            points, logdet = self._fused_forward(points, group)
        elif self.step_type == "glow":
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
        if not (self.training or torch.is_grad_enabled()):
            return self._sequences(self._fused_inverse(points, group), z)
        weights, shifts, _ = self._affine_maps(group, inverse=True)
        for step, weight_k, shift_k in reversed(
            list(zip(self.steps, weights, shifts, strict=True))
        ):
            points = step.coupling.inverse(points, group)
            points = torch.baddbmm(shift_k, points, weight_k)
        return self._sequences(points, z)

    def _fused_forward(self, points: Tensor, group: GroupSelection) -> tuple[Tensor, Tensor]:
        """The glow forward for inference (eval mode, no gradient): ``points (G', N, C)`` →
        ``(z (G', N, C), logdet (G', N))`` in fewer operations.

        Each step's affine map (ActNorm and 1x1 convolution) and its coupling conditioner's
        first linear map act on the same points, so one product gives both (`_fused_steps`);
        the coupling then updates its half of that product's output in place, with ``+2``
        folded into the conditioner's last bias. The same function as the training path, to
        rounding (the products are associated differently): the log-determinant is computed
        as there, from the same ``s``; a traced graph that does not return it drops it.
        """
        steps, constant = self._fused_steps(group, inverse=False)
        coupling = self.steps[0].coupling
        split, widths = coupling.split, [self.channels, coupling.net[0].out_features]
        logdet = None
        for fused_weight, fused_bias, (w2, b2), (w3, b3) in steps:
            mixed = torch.baddbmm(fused_bias, points, fused_weight)  # (G', N, C + H)
            points, hidden = mixed.split(widths, dim=-1)
            hidden = torch.baddbmm(b2, hidden.relu_(), w2).relu_()
            s, t = torch.baddbmm(b3, hidden, w3).chunk(2, dim=-1)
            points[..., split:].add_(t).mul_(s.sigmoid())
            step_logdet = F.logsigmoid(s).sum(dim=-1)
            logdet = step_logdet if logdet is None else logdet + step_logdet
        return points, logdet + constant

    def _fused_inverse(self, points: Tensor, group: GroupSelection) -> Tensor:
        """The glow inverse for inference (eval mode, no gradient), as `_fused_forward`: each
        step's inverse affine map shares one product with the first linear map of the next
        coupling to invert; the coupling's last layer gives ``-s`` and ``-t``, so that
        ``b (1 + e^{-s}) - t`` is one exponential and two in-place updates."""
        steps, _ = self._fused_steps(group, inverse=True)
        coupling = self.steps[0].coupling
        split, widths = coupling.split, [self.channels, coupling.net[0].out_features]
        # The couplings update the points in place: never the caller's tensor.
        points = points.clone()
        first_weight, first_bias = steps[0][0]
        hidden = torch.baddbmm(first_bias, points[..., :split], first_weight)
        last = len(steps) - 1
        for position, (_, (w2, b2), (w3, b3), (fused_weight, fused_bias)) in enumerate(steps):
            hidden = torch.baddbmm(b2, hidden.relu_(), w2).relu_()
            negative_s, negative_t = torch.baddbmm(b3, hidden, w3).chunk(2, dim=-1)
            b = points[..., split:]
            b.addcmul_(b, negative_s.exp()).add_(negative_t)
            mixed = torch.baddbmm(fused_bias, points, fused_weight)
            if position == last:  # step 0 inverted: its affine map alone
                return mixed
            points, hidden = mixed.split(widths, dim=-1)
        raise AssertionError("unreachable: a flow has at least one step")

    def _fused_steps(self, group: GroupSelection, *, inverse: bool) -> tuple[list, Tensor]:
        """The per-step tensors of `_fused_forward` / `_fused_inverse`.

        They are built once per selection and direction and reused: building them (stacking
        every step's parameters, LU products, for the inverse two triangular solves, and the
        fusions) costs as much as decoding one sample. They are dropped when the mode changes,
        a state is loaded or the module moves (`train`, `_load_from_state_dict`, `_apply`), and
        rebuilt when a parameter's or buffer's version count changes. A parameter changed in
        eval mode by a kernel that leaves no version count (PyTorch's fused Adam) needs a mode
        change first, as a training loop makes anyway.
        """
        key = (inverse, tuple(selected_groups(self.groups, group)))
        versions = [t._version for t in (*self.parameters(), *self.buffers())]
        cached = self._affine_cache.get(key)
        if cached is not None and cached[0] == versions:
            return cached[1]
        maps = self._build_fused_steps(group, inverse=inverse)
        self._affine_cache[key] = (versions, maps)
        return maps

    @torch.no_grad()
    def _build_fused_steps(self, group: GroupSelection, *, inverse: bool) -> tuple[list, Tensor]:
        weights, shifts, constant = self._affine_maps(group, inverse=inverse)

        def linear(layer: nn.Module) -> tuple[Tensor, Tensor]:
            weight, bias = (select_groups(t, group).detach() for t in (layer.weight, layer.bias))
            return weight, bias[:, None]  # (G', in, out), (G', 1, out)

        nets = []
        for step in self.steps:
            first, second, last = step.coupling.net
            w3, b3 = linear(last)
            half = w3.shape[-1] // 2
            b3 = torch.cat([b3[..., :half] + 2.0, b3[..., half:]], dim=-1)
            if inverse:
                w3, b3 = -w3, -b3
            nets.append((linear(first), linear(second), (w3, b3)))
        split = self.steps[0].coupling.split

        def fuse(weight: Tensor, shift: Tensor, first: tuple[Tensor, Tensor]) -> tuple:
            # [x | a W1 + b1] with x = p W + s and a = x[..., :split]: one product of p.
            w1, b1 = first
            return (
                torch.cat([weight, weight[..., :split] @ w1], dim=-1),
                torch.cat([shift, torch.baddbmm(b1, shift[..., :split], w1)], dim=-1),
            )

        if not inverse:
            steps = [
                (*fuse(weight, shift, net[0]), net[1], net[2])
                for weight, shift, net in zip(weights, shifts, nets, strict=True)
            ]
            return steps, constant
        # Inverse order: step K-1's coupling first; after each coupling the affine map of its
        # step, fused with the first linear map of the coupling before it (none after step 0).
        order = list(range(len(self.steps)))[::-1]
        steps = []
        for position, k in enumerate(order):
            if position + 1 < len(order):
                affine = fuse(weights[k], shifts[k], nets[order[position + 1]][0])
            else:
                affine = (weights[k], shifts[k])
            steps.append((nets[k][0], nets[k][1], nets[k][2], affine))
        return steps, constant

    def _affine_maps(
        self, group: GroupSelection, *, inverse: bool
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], Tensor]:
        """Every step's ActNorm and 1x1 convolution as one affine map of points in row form,
        ``points @ weight_k + shift_k`` (weight_k (G', C, C), shift_k (G', 1, C)), and the
        log-determinant they add per point ((G', 1), forward only), for all steps at once."""
        permutation, lower, upper, sign_s, log_abs_s, bias, log_scale = self._raw_parts(group)
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

    def train(self, mode: bool = True) -> Flow:
        self._affine_cache.clear()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._affine_cache.clear()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._affine_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)
