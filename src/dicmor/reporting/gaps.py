"""Distribution gaps between real and recovered features.

DiCMoR (Wang, Cui & Li, ICCV 2023) argues that a recovery method should be judged by how close
the *distribution* of its recovered features is to the real one, not only by the per-sample
error. Two measures make that visible:

- :func:`mse`: the per-entry mean squared error, blind to distributions (a regressor that outputs
  the conditional mean does well here while its outputs collapse onto a small region).
- :func:`mmd_rbf`: the squared maximum mean discrepancy (Gretton et al., "A Kernel Two-Sample
  Test", JMLR 2012) with a mixture of Gaussian kernels: zero for identical distributions and
  growing as they part, whatever the pairing of samples.

Both accept numpy arrays or torch tensors and return a Python float computed in float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dicmor.data.batches import Batches

if TYPE_CHECKING:
    from dicmor.data.dataset import Split
    from dicmor.models.recovery import Recovering

ArrayLike = np.ndarray | torch.Tensor

MEDIAN_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0)
"""Default bandwidths of :func:`mmd_rbf`, as multiples of the median pairwise distance."""


def _as_float64(x: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: holds non-finite values")
    return tensor


def mse(x: ArrayLike, y: ArrayLike) -> float:
    """Mean over every entry of ``(x - y)²``.

    x, y: arrays of one shape, e.g. recovered and real features (N, d, T).
    """
    a, b = _as_float64(x, "x"), _as_float64(y, "y")
    if a.shape != b.shape:
        raise ValueError(f"mse: shapes differ, x {tuple(a.shape)} vs y {tuple(b.shape)}")
    if a.numel() == 0:
        raise ValueError("mse: inputs are empty")
    return float((a - b).square().mean())


def mmd_rbf(x: ArrayLike, y: ArrayLike, bandwidths: Sequence[float] | None = None) -> float:
    """Squared MMD between the samples ``x`` and ``y`` under a mixture of Gaussian kernels.

    The kernel is the mean over bandwidths s of ``exp(-|a - b|² / (2 s²))``, so it lies in (0, 1]
    and the estimate in [0, 2]. This is the biased (V-statistic) estimator

        MMD² = mean k(x_i, x_j) + mean k(y_i, y_j) - 2 mean k(x_i, y_j),

    with the diagonal terms included: it is never negative, and two samples of one distribution
    give a small positive value of order 1/N + 1/M rather than exactly 0.

    Args:
        x: (N, F) samples of one distribution (e.g. real features, one row per sample).
        y: (M, F) samples of the other (e.g. recovered features).
        bandwidths: kernel widths s; default ``MEDIAN_SCALES`` times the median pairwise
            distance of the pooled samples (the median heuristic), or 1 where that median is 0.

    Returns:
        The squared MMD estimate.
    """
    a, b = _as_float64(x, "x"), _as_float64(y, "y")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(
            f"mmd_rbf: x and y must be (N, F) and (M, F), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mmd_rbf: feature sizes differ, x has {a.shape[1]}, y has {b.shape[1]}")
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("mmd_rbf: x and y need at least one sample each")
    pooled = torch.cat([a, b])  # (N + M, F)
    # The matrix-product shortcut of cdist loses precision exactly where MMD is small.
    distances = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")
    total = len(pooled)
    if bandwidths is None:
        # The median of the off-diagonal distances: in the sorted matrix the diagonal's zeros
        # come first, so it is the order statistic shifted by their number (no masked copy).
        median = float(distances.flatten().kthvalue(total + (total * (total - 1) + 1) // 2)[0])
        bandwidths = [s * (median if median > 0 else 1.0) for s in MEDIAN_SCALES]
    widths = torch.as_tensor(list(bandwidths), dtype=torch.float64)
    if widths.numel() == 0 or not bool((widths > 0).all()):
        raise ValueError(f"mmd_rbf: bandwidths must be positive, got {list(bandwidths)}")
    squared = distances.square_()  # (N + M, N + M), in place
    n = a.shape[0]
    value = 0.0
    for width in widths.tolist():
        kernel = torch.mul(squared, -0.5 / width**2).exp_()
        value += float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())
    value /= len(widths)
    # Rounding can leave a tiny negative value for identical samples.
    return max(float(value), 0.0)


def recovery_gaps(
    model: Recovering, split: Split, modality_names: Sequence[str], available: np.ndarray
) -> dict[str, tuple[float, float, float, float]]:
    """How far a recovering model's recoveries of ``split``'s missing entries are from the real
    features, against zeros (what zero-filling recovers in any bias-free feature space).

    Everything is measured in the model's shallow-feature space; MMD treats each time step's
    feature vector as one sample. ``available: (N, M)`` marks what the model may read.

    Returns:
        ``{m: (MSE recovered, MSE zeros, MMD recovered, MMD zeros)}`` for each modality the model
        recovered somewhere.
    """
    batch = next(iter(Batches(split, modality_names, available, len(split), with_targets=True)))
    model.eval()
    with torch.no_grad():
        recovered = model(batch)["recovered"]
    gaps = {}
    for m, (index, features) in recovered.items():
        real = model.target_features(m, batch, index)  # (n, d, T')
        zero = torch.zeros_like(real)
        steps = [x.transpose(1, 2).reshape(-1, x.shape[1]) for x in (real, features, zero)]
        gaps[m] = (
            mse(features, real),
            mse(zero, real),
            mmd_rbf(steps[0], steps[1]),
            mmd_rbf(steps[0], steps[2]),
        )
    return gaps


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to the samples ``x: (N, F)`` and ``y: (M, F)``:
    ``|mu_x - mu_y|² + Tr(S_x + S_y - 2 (S_x S_y)^(1/2))`` (Dowson & Landau, 1982; the FID of
    Heusel et al., NeurIPS 2017, on these features). Sensitive to a collapse of spread that the
    MSE rewards: a recovery at the conditional mean has a small covariance.
    """
    from scipy import linalg

    a, b = _as_float64(x, "x").numpy(), _as_float64(y, "y").numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance: x and y must be (N, F) and (M, F), got {a.shape} and {b.shape}"
        )
    if len(a) < 2 or len(b) < 2:
        raise ValueError("frechet_distance: x and y need at least two samples each")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # A singular product (e.g. against a recovery of all zeros) has a square root all the
        # same; scipy warns that it may be inexact.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    # Rounding leaves a tiny imaginary part.
    root = np.real(root)
    value = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)


GAP_KEYS: tuple[str, ...] = (
    "mse",
    "cosine",
    "mmd",
    "class_mmd",
    "frechet",
    "class_frechet",
    "c2st",
)
"""The measures :func:`distribution_gaps` reports for a recovery (and for the references:
zeros, ``*_zero``, and the mean of the real entries, ``*_mean``)."""
REFERENCES = ("zero", "mean")


def _subsample(points: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    if len(points) <= limit:
        return points
    return points[torch.randperm(len(points), generator=generator)[:limit]]


def cosine_similarity(x: ArrayLike, y: ArrayLike) -> float:
    """Mean over entries (rows of ``x``, ``y``: (n, ...)) of the cosine between the flattened
    entries; an all-zero entry has cosine 0 to anything."""
    a = _as_float64(x, "x").flatten(1)
    b = _as_float64(y, "y").flatten(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    cosine = torch.where(norms > 0, (a * b).sum(dim=1) / norms.clamp(min=1e-300), 0.0)
    return float(cosine.mean())


def classifier_two_sample(x: ArrayLike, y: ArrayLike, *, folds: int = 5, seed: int = 0) -> float:
    """The classifier two-sample test's statistic: the cross-validated accuracy of a logistic
    regression telling rows of ``x`` from rows of ``y`` (each (n, F), balanced by drawing the
    same number from both). 0.5: indistinguishable; 1.0: fully apart. NaN with fewer than
    ``folds`` rows per side."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _as_float64(x, "x").flatten(1).numpy()
    b = _as_float64(y, "y").flatten(1).numpy()
    n = min(len(a), len(b))
    if n < folds:
        return float("nan")
    rng = np.random.default_rng(seed)
    a, b = a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]
    features = np.concatenate([a, b])
    labels = np.repeat([0, 1], n)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, labels, cv=split).mean())


def _distribution_measures(
    real: torch.Tensor,
    other: torch.Tensor,
    classes: torch.Tensor,
    max_points: int,
    generator: torch.Generator,
) -> dict[str, float]:
    """MSE, cosine, pooled and per-class MMD and Fréchet distance, and the classifier
    two-sample accuracy (on time-averaged entries) of ``other`` against ``real`` (both
    (n, d, T), one class per sample); each class's MMD and Fréchet distance as ``mmd@c`` and
    ``frechet@c``."""
    steps = real.shape[2]

    def points(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(-1, x.shape[1])  # (n·T, d)

    point_classes = classes.repeat_interleave(steps)
    real_points, other_points = points(real), points(other)
    chosen = _subsample(torch.arange(len(real_points)), max_points, generator)
    measures = {
        "mse": mse(other, real),
        "cosine": cosine_similarity(other, real),
        "mmd": mmd_rbf(real_points[chosen], other_points[chosen]),
        "frechet": frechet_distance(real_points[chosen], other_points[chosen]),
        "c2st": classifier_two_sample(real.mean(dim=2), other.mean(dim=2)),
    }
    # Per class: MMD for every class with 2 or more points; the Fréchet distance only where a
    # class has more points than dimensions (a full-rank covariance). Each averaged over the
    # classes it covers, weighted by their samples.
    per_class: dict[str, list[tuple[float, float]]] = {"mmd": [], "frechet": []}
    for c in torch.unique(classes).tolist():
        rows = (point_classes == c).nonzero().squeeze(1)
        if len(rows) < 2:
            continue
        rows = _subsample(rows, max_points, generator)
        weight = float((classes == c).sum())
        measures[f"mmd@{c}"] = mmd_rbf(real_points[rows], other_points[rows])
        per_class["mmd"].append((weight, measures[f"mmd@{c}"]))
        if len(rows) > real.shape[1]:
            measures[f"frechet@{c}"] = frechet_distance(real_points[rows], other_points[rows])
            per_class["frechet"].append((weight, measures[f"frechet@{c}"]))
    for key, pairs in per_class.items():
        if pairs:
            w = np.array([p[0] for p in pairs])
            measures[f"class_{key}"] = float(np.dot(w / w.sum(), [p[1] for p in pairs]))
        else:
            measures[f"class_{key}"] = float("nan")
    return measures


def recovered_entries(
    model: Recovering,
    split: Split,
    modality_names: Sequence[str],
    available: np.ndarray,
    *,
    task: str,
) -> dict[str, dict[str, np.ndarray]]:
    """The entries of ``split`` that ``model`` recovers under ``available`` and whose real
    features exist: ``{m: {"index": (n,), "recovered": (n, d, T'), "real": (n, d, T'),
    "classes": (n,)}}`` in the model's shallow-feature space (classes of the prior: labels, or
    the 7 sentiment bins)."""
    from dicmor.data.labels import prior_classes

    batches = Batches(split, modality_names, available, len(split), with_targets=True)
    batch = next(iter(batches))
    model.eval()
    with torch.no_grad():
        recovered = model(batch)["recovered"]
    labels = prior_classes(torch.from_numpy(split.labels), task)
    entries = {}
    for m, (index, features) in recovered.items():
        j = list(modality_names).index(m)
        keep = batch["present"][index, j].nonzero().squeeze(1)
        if len(keep) == 0:
            continue  # only genuinely absent entries: nothing to compare
        index = index.index_select(0, keep)
        with torch.no_grad():
            real = model.target_features(m, batch, index)  # (n, d, T')
        entries[m] = {
            "index": index.numpy(),
            "recovered": features.index_select(0, keep).float().numpy(),
            "real": real.float().numpy(),
            "classes": labels.index_select(0, index).numpy(),
        }
    return entries


def gaps_of(
    entries: dict[str, dict[str, np.ndarray]], *, max_points: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """The measures of :data:`GAP_KEYS` for each modality's recovered entries (as
    :func:`recovered_entries` gives or ``recovered.npz`` holds), with those of the references:
    zeros (``*_zero``: what zero-fill gives in a bias-free feature space) and the mean of the
    real entries (``*_mean``: one constant per modality). Modalities with fewer than 2 entries
    are left out."""
    generator = torch.Generator().manual_seed(seed)
    gaps: dict[str, dict[str, float]] = {}
    for m, entry in entries.items():
        if len(entry["index"]) < 2:
            continue
        real = torch.from_numpy(entry["real"]).double()
        features = torch.from_numpy(entry["recovered"]).double()
        classes = torch.from_numpy(entry["classes"])
        row: dict[str, float] = {"n": float(len(real))}
        row.update(_distribution_measures(real, features, classes, max_points, generator))
        references = {"zero": torch.zeros_like(real), "mean": real.mean(dim=0).expand_as(real)}
        for name, reference in references.items():
            measures = _distribution_measures(real, reference, classes, max_points, generator)
            row.update({f"{k}_{name}": v for k, v in measures.items()})
        gaps[m] = row
    return gaps


def distribution_gaps(
    model: Recovering,
    split: Split,
    modality_names: Sequence[str],
    available: np.ndarray,
    *,
    task: str,
    max_points: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per modality, how far a recovering model's recoveries of ``split``'s missing entries
    (those whose real features exist) are from the real features, and how far the references
    (zeros, the mean) are.

    Measured in the model's shallow-feature space, each time step's feature vector one point:
    the MSE; the cosine to the real entry; the MMD of :func:`mmd_rbf` (kernel widths 0.5, 1 and
    2 times the median pairwise distance of the pooled points); the Fréchet distance; both of the
    latter per class of the prior (labels, or the 7 sentiment bins), averaged over classes
    weighted by their samples (MMD over classes of 2 or more points, Fréchet over classes of
    more points than feature dimensions); and the classifier two-sample accuracy on
    time-averaged entries (0.5 = indistinguishable). At most ``max_points`` points per
    comparison, drawn with ``seed``.

    Returns:
        ``{m: {"n": entries, "mse": …, "mse_zero": …, "mse_mean": …, …}}`` with the keys of
        :data:`GAP_KEYS` and their ``_zero`` / ``_mean`` counterparts, for every modality
        recovered.
    """
    entries = recovered_entries(model, split, modality_names, available, task=task)
    return gaps_of(entries, max_points=max_points, seed=seed)


def save_recovered(
    path: Path, entries: dict[str, dict[str, np.ndarray]], available: np.ndarray
) -> None:
    """``recovered.npz`` (compressed): per modality ``{m}/index``, ``{m}/recovered``,
    ``{m}/real``, ``{m}/classes``, and the ``mask`` (N, M) they were recovered under. Written
    whole or not at all."""
    arrays = {f"{m}/{k}": v for m, entry in entries.items() for k, v in entry.items()}
    partial = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(partial, mask=available, **arrays)
    partial.replace(path)


def load_recovered(path: Path | str) -> dict[str, dict[str, np.ndarray]]:
    """The entries :func:`save_recovered` wrote (without the mask)."""
    entries: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as archive:
        for key in archive.files:
            if "/" in key:
                m, part = key.split("/", 1)
                entries.setdefault(m, {})[part] = archive[key]
    return entries


def gaps_table(gaps: dict[str, dict[str, float]]) -> str:
    """A text table of :func:`distribution_gaps`: one row per modality, recovery (zeros)."""
    header = ["modality", "n", *(f"{k} (zeros)" for k in GAP_KEYS)]
    rows = [
        [m, str(int(row["n"])), *(f"{row[k]:.4f} ({row[k + '_zero']:.4f})" for k in GAP_KEYS)]
        for m, row in gaps.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )
