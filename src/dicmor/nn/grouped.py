"""Grouped layers: G independent layers of one shape, parameters stacked on a leading group axis.

At DiCMoR's sizes the cost of a call, not its arithmetic, dominates a CPU step, so the per-
modality flows and the crossmodal transformers run as the groups of one module: one call does the
work of G. ``group`` selects what runs: all groups, one (an index), or several (indices).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupSelection", "GroupedLayerNorm", "GroupedLinear", "grouped_linear", "select_groups"]

GroupSelection = int | Sequence[int] | None
"""Which groups of a grouped module to run: all (None), one (an index), or several (indices)."""


def select_groups(parameter: Tensor, group: GroupSelection) -> Tensor:
    """The selected groups of ``parameter: (G, *)``: all of it, group g as ``(1, *)``, or the
    listed groups as ``(len(group), *)``."""
    if group is None:
        return parameter
    if isinstance(group, int):
        return parameter[group : group + 1]
    groups = list(group)
    if not groups:
        raise ValueError("select_groups: the selection names no group")
    if groups == list(range(groups[0], groups[0] + len(groups))):
        # Consecutive groups are a view; any other list is a gather (a copy).
        return parameter[groups[0] : groups[0] + len(groups)]
    return parameter[groups]


BALANCE_MIN_ROWS = 512
BALANCE_MIN_WEIGHT = 12288
"""On CPU, a grouped product whose G groups do not divide evenly among the threads (three
groups on two threads: MulT's self-attention over three modalities) is run as G·p products of
1/p of the rows each, so that every thread gets the same work, when each group has at least
this many rows and its weight at least this many elements. Measured on a 2-core AMD EPYC
(torch 2.13), three groups of 736 rows: 1.2–1.45× faster forward, 1.1–1.2× for the weight
gradient (whose products then contract over half the rows and are summed); below these sizes
(MOSI's 184 rows, the flows' 64-wide maps) the cut is slower, and so is cutting groups that
already divide evenly."""


def _balanced_pieces(x: Tensor, groups: int, rows: int, weight_size: int) -> int:
    """Pieces to cut each group's rows into (1: none); see `BALANCE_MIN_ROWS`."""
    if x.device.type != "cpu" or rows < BALANCE_MIN_ROWS or weight_size < BALANCE_MIN_WEIGHT:
        return 1
    threads = torch.get_num_threads()
    if groups == 1 or groups % threads == 0 or groups > 4 * threads:
        return 1
    pieces = threads // math.gcd(groups, threads)
    return pieces if rows % pieces == 0 else 1


def grouped_linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``y[g] = x[g] W_g + b_g`` for x: (G, *, in), weight: (G, in, out), bias: (G, out).

    Groups that would leave a thread idle have their rows cut in pieces (`BALANCE_MIN_ROWS`):
    the same products, row by row; autograd's backward of the expanded weight sums the
    pieces' gradients."""
    groups, in_features, out_features = weight.shape
    points = x.reshape(groups, -1, in_features)  # (G, N, in)
    rows = points.shape[1]
    pieces = _balanced_pieces(points, groups, rows, in_features * out_features)
    if pieces > 1:
        points = points.reshape(groups * pieces, rows // pieces, in_features)
        weight = weight[:, None].expand(-1, pieces, -1, -1).reshape(-1, in_features, out_features)
        bias = bias[:, None].expand(-1, pieces, -1).reshape(-1, out_features)
    out = torch.baddbmm(bias[:, None], points, weight)
    return out.view(*x.shape[:-1], out_features)


class GroupedLinear(nn.Module):
    """G independent linear maps applied in one batched product: ``y[g] = x[g] W_g + b_g``.

    Each group is initialised as `torch.nn.Linear` would be (uniform in ±1/√in_features for
    weight and bias).

    Args:
        groups: number of groups G.
        in_features: input width.
        out_features: output width.

    Shapes:
        x: (G, *, in_features) → (G, *, out_features); with ``group=g``, x: (1, *, in_features)
        uses group g's parameters only, with ``group=[g, h, …]`` x: (len(group), *, in_features)
        those groups' parameters.
    """

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        if groups < 1 or in_features < 1 or out_features < 1:
            raise ValueError(
                f"GroupedLinear: groups, in_features and out_features must be >= 1, "
                f"got {groups}, {in_features}, {out_features}"
            )
        self.groups = groups
        self.in_features = in_features
        self.out_features = out_features
        # Stored as (in, out) so that the product needs no transpose.
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        bound = in_features**-0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, group: GroupSelection = None) -> Tensor:
        """x: (G', *, in_features) → (G', *, out_features) for the selected G' groups."""
        return grouped_linear(x, select_groups(self.weight, group), select_groups(self.bias, group))

    def extra_repr(self) -> str:
        return (
            f"groups={self.groups}, in_features={self.in_features}, "
            f"out_features={self.out_features}"
        )


class GroupedLayerNorm(nn.Module):
    """Layer normalisation over the last dimension with a learnt affine map per group.

    Args:
        groups: number of groups G.
        dim: normalised width d.
        eps: added to the variance, as in `torch.nn.LayerNorm`.

    Shapes:
        x: (G, *, d) → (G, *, d); with ``group=g``, x: (1, *, d).
    """

    def __init__(self, groups: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, dim))
        self.bias = nn.Parameter(torch.zeros(groups, dim))

    def standardize(self, x: Tensor) -> Tensor:
        """The normalisation without the affine map: x: (*, d) → (*, d)."""
        return F.layer_norm(x, (self.dim,), eps=self.eps)

    def fold(self, weight: Tensor, bias: Tensor, group: int | None = None) -> tuple[Tensor, Tensor]:
        """Fold the affine map into the grouped linear map that follows the norm, so that
        ``linear(norm(x)) = standardize(x) W' + b'`` with ``W' = diag(γ) W``, ``b' = β W + b``.

        The fold costs two products of parameter-sized tensors where the affine map costs a pass
        (and its backward) over every activation.

        Args:
            weight: the linear map's weights (G', d, out) for the selected groups.
            bias: its biases (G', out).
        """
        gamma, beta = select_groups(self.weight, group), select_groups(self.bias, group)  # (G', d)
        folded_bias = torch.baddbmm(bias[:, None], beta[:, None], weight)  # (G', 1, out)
        return gamma[:, :, None] * weight, folded_bias[:, 0]

    def forward(self, x: Tensor, group: int | None = None) -> Tensor:
        """x: (G, *, d) → (G, *, d)."""
        weight, bias = select_groups(self.weight, group), select_groups(self.bias, group)
        if weight.shape[0] == 1:
            return F.layer_norm(x, (self.dim,), weight[0], bias[0], self.eps)
        shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (self.dim,)
        normed = F.layer_norm(x, (self.dim,), eps=self.eps)
        return torch.addcmul(bias.view(shape), normed, weight.view(shape))
