"""Small seeded synthetic datasets for tests, benchmarks and trying the package out.

- :func:`make_mmsa_dict` / :func:`write_mmsa_pickle`: a dict (or pickle) in exactly the layout of
  the MMSA feature files (see :mod:`dicmor.data.mmsa`), aligned or unaligned, with the quirks of
  the real files: ``-inf`` in audio, zero padding after each sequence's length, ``video$_$clip``
  ids, raw text, and keys the loader ignores.
- :func:`make_classification_dataset` / :func:`make_regression_dataset`: a
  :class:`MultimodalDataset` directly, optionally with genuinely missing entries.

Every modality carries the label (a class prototype, or a fixed direction scaled by the
regression label) plus independent noise, part of it constant over time so that averaging over
steps cannot remove it. Any single modality is therefore informative, and together they are more
so. ``signal`` scales the label's part; ``signal=0`` gives pure noise.

With ``shared_factors=F > 0`` the modalities also share F sample-level factors beyond the label:
each sample draws ``s ~ N(0, I_F)``, constant over time, and modality j sees the factors f with
``f mod (M + 1) != j`` through a fixed random loading (so every modality sees only part of them,
every pair shares some, and the factors ``f = M mod (M + 1)`` are seen by all). Given the label,
the modalities are then no longer independent: one modality's features carry information about
another's that the class alone does not, which is what a cross-modal recovery can exploit. With
``F = 0`` (the default) the data are those of earlier versions, bit for bit.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dicmor.data.dataset import SPLITS, MultimodalDataset, Split

MMSA_DIMS: dict[str, int] = {"text": 768, "audio": 5, "vision": 20}
DEFAULT_MODALITIES: dict[str, tuple[int, int]] = {
    "text": (8, 12),
    "audio": (8, 5),
    "vision": (8, 7),
}
_WORDS = ("the", "movie", "was", "really", "not", "good", "bad", "i", "liked", "it", "plot", "uh")
_SENTIMENT = ("Negative", "Neutral", "Positive")


def shared_factor_views(num_modalities: int, factors: int) -> list[np.ndarray]:
    """For each modality j, the indices of the shared factors it sees: ``f mod (M + 1) != j``."""
    return [
        np.array([f for f in range(factors) if f % (num_modalities + 1) != j], dtype=np.int64)
        for j in range(num_modalities)
    ]


def _shared_offsets(
    seed: int, n: int, dims: Mapping[str, int], factors: int, strength: float
) -> dict[str, np.ndarray]:
    """``{m: (n, D_m)}`` float32: each modality's view of F per-sample shared factors.

    Drawn from a generator of its own, so that the rest of the data stay as without factors.
    """
    if factors < 0:
        raise ValueError(f"shared_factors must be >= 0, got {factors}")
    if factors == 0:
        return {m: np.zeros((n, d), dtype=np.float32) for m, d in dims.items()}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    values = rng.standard_normal((n, factors))  # (N, F)
    offsets = {}
    for (m, d), view in zip(dims.items(), shared_factor_views(len(dims), factors), strict=True):
        loading = rng.standard_normal((len(view), d))  # (F_m, D)
        # Unit-norm rows: each factor moves a modality by as much as the class signal of 1.0.
        loading /= np.linalg.norm(loading, axis=1, keepdims=True)
        offsets[m] = (strength * values[:, view] @ loading).astype(np.float32)
    return offsets


def _regression_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n,)`` float32 sentiment-like labels: multiples of 0.2 in [-3, 3], about 10% exactly 0."""
    labels = np.round(rng.uniform(-3.0, 3.0, n) * 5) / 5
    labels[rng.random(n) < 0.1] = 0.0
    return labels.astype(np.float32)


def make_mmsa_dict(
    n_train: int,
    n_valid: int,
    n_test: int,
    *,
    seq_len: int = 50,
    dims: Mapping[str, int] | None = None,
    aligned: bool = True,
    seed: int = 0,
    signal: float = 1.0,
    shared_factors: int = 0,
    shared_signal: float = 1.0,
) -> dict[str, dict[str, Any]]:
    """A dict in the layout of an MMSA ``aligned_50.pkl`` / ``unaligned_50.pkl`` file.

    Args:
        n_train, n_valid, n_test: samples per split.
        seq_len: the text length ``T``; aligned files use it for every modality, unaligned ones
            give audio ``2 T`` and vision ``3 T // 2`` steps plus ``audio_lengths`` and
            ``vision_lengths``.
        dims: feature size per modality; default ``MMSA_DIMS`` (CMU-MOSI's).
        aligned: aligned (one length per sample for all modalities) or unaligned layout.
        seed: seed of everything random.
        signal: strength of the label's trace in every modality.
        shared_factors: number F of per-sample factors the modalities share beyond the label
            (see the module docstring); 0 for none.
        shared_signal: scale of the shared factors' trace.

    Returns:
        ``{split: {key: value}}`` with ``text`` ``(N, T, Dt)``, ``text_bert`` ``(N, 3, T)``
        (token ids, attention mask, segment ids), ``audio`` ``(N, Ta, Da)`` with some ``-inf``,
        ``vision`` ``(N, Tv, Dv)``, ``regression_labels`` ``(N,)``, ``classification_labels``,
        ``id``, ``raw_text``, ``annotations`` and, unaligned, the two length lists. Features are
        zero after each sample's length.
    """
    dims = dict(MMSA_DIMS if dims is None else dims)
    if sorted(dims) != sorted(MMSA_DIMS):
        raise ValueError(f"dims must give the sizes of {sorted(MMSA_DIMS)}, got {sorted(dims)}")
    rng = np.random.default_rng(seed)
    steps = {"text": seq_len, "audio": seq_len, "vision": seq_len}
    if not aligned:
        steps = {"text": seq_len, "audio": 2 * seq_len, "vision": 3 * seq_len // 2}
    directions = {m: rng.standard_normal(d).astype(np.float32) for m, d in dims.items()}
    content: dict[str, dict[str, Any]] = {}
    clip = 0
    sizes = (n_train, n_valid, n_test)
    shared = _shared_offsets(seed, sum(sizes), dims, shared_factors, shared_signal)
    for split, n in zip(SPLITS, sizes, strict=True):
        labels = _regression_labels(rng, n)
        text_lengths = rng.integers(min(3, seq_len), seq_len + 1, n)
        lengths = {m: text_lengths for m in dims}
        if not aligned:
            lengths.update(
                {m: rng.integers(steps[m] // 4, steps[m] + 1, n) for m in ("audio", "vision")}
            )
        part: dict[str, Any] = {}
        for m, d in dims.items():
            valid = np.arange(steps[m])[None, :] < lengths[m][:, None]  # (N, T)
            x = rng.standard_normal((n, steps[m], d)).astype(np.float32)
            x += signal * (labels / 3)[:, None, None] * directions[m]
            x += shared[m][clip : clip + n, None, :]
            x *= valid[..., None]
            if m == "audio":
                # COVAREP writes -inf for log features of silent frames.
                x[(rng.random(x.shape) < 0.02) & valid[..., None]] = -np.inf
            part[m] = x
        tokens = rng.integers(1000, 30000, (n, seq_len)).astype(np.float64)
        mask = np.arange(seq_len)[None, :] < text_lengths[:, None]  # (N, T)
        tokens[:, 0] = 101
        tokens[np.arange(n), text_lengths - 1] = 102
        part["text_bert"] = np.stack([tokens * mask, mask, np.zeros_like(tokens)], axis=1)
        part["regression_labels"] = labels
        part["classification_labels"] = (np.sign(labels) + 1).astype(np.float32)
        part["annotations"] = [_SENTIMENT[int(c)] for c in part["classification_labels"]]
        part["id"] = np.array(
            [f"vid{(clip + i) // 4}$_${(clip + i) % 4 + 1}" for i in range(n)], dtype=object
        )
        part["raw_text"] = np.array(
            [" ".join(rng.choice(_WORDS, max(int(k) - 2, 1))) for k in text_lengths], dtype=object
        )
        if not aligned:
            part["audio_lengths"] = [int(k) for k in lengths["audio"]]
            part["vision_lengths"] = [int(k) for k in lengths["vision"]]
        content[split] = part
        clip += n
    return content


def write_mmsa_pickle(path: str | Path, *, protocol: int = 4, **kwargs: Any) -> Path:
    """Pickle ``make_mmsa_dict(**kwargs)`` to ``path`` and return the path."""
    path = Path(path)
    with open(path, "wb") as handle:
        pickle.dump(make_mmsa_dict(**kwargs), handle, protocol=protocol)
    return path


def _split_sizes(n: int) -> tuple[int, int, int]:
    """60/20/20 train/valid/test sizes of ``n`` samples."""
    if n < 10:
        raise ValueError(f"need at least 10 samples for three splits, got {n}")
    held_out = n // 5
    return n - 2 * held_out, held_out, held_out


def _absent(rng: np.random.Generator, n: int, m: int, rate: float) -> np.ndarray:
    """``(n, m)`` bool: about ``rate`` of the entries absent, every row keeping one entry."""
    absent = rng.random((n, m)) < rate
    full = absent.all(axis=1)
    absent[full, rng.integers(0, m, int(full.sum()))] = False
    return absent


def _assemble(
    name: str,
    labels: np.ndarray,
    features: dict[str, np.ndarray],
    num_classes: int | None,
    rng: np.random.Generator,
    missing_rate: float,
) -> MultimodalDataset:
    """Zero absent entries, cut into 60/20/20 splits and build the dataset."""
    n = labels.shape[0]
    absent = _absent(rng, n, len(features), missing_rate)
    for column, x in enumerate(features.values()):
        x[absent[:, column]] = 0
    sizes = _split_sizes(n)
    bounds = np.cumsum((0, *sizes))
    ids = np.array([f"{name}-{i}" for i in range(n)])
    splits = {}
    for split, start, stop in zip(SPLITS, bounds[:-1], bounds[1:], strict=True):
        splits[split] = Split(
            modalities={m: x[start:stop] for m, x in features.items()},
            labels=labels[start:stop],
            ids=ids[start:stop],
            present=~absent[start:stop],
        )
    notes = [f"about {missing_rate:.0%} of entries genuinely missing"] if missing_rate else []
    return MultimodalDataset(
        name=name,
        task="regression" if num_classes is None else "classification",
        num_classes=num_classes,
        modality_names=tuple(features),
        splits=splits,
        source=name,
        notes=notes,
    )


def _noise(rng: np.random.Generator, n: int, t: int, d: int) -> np.ndarray:
    """``(n, t, d)`` noise: a per-sample offset constant over time plus per-step noise."""
    return rng.standard_normal((n, 1, d)) + 0.5 * rng.standard_normal((n, t, d))


def make_classification_dataset(
    n: int = 300,
    *,
    num_classes: int = 3,
    modalities: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    signal: float = 1.0,
    missing_rate: float = 0.0,
    shared_factors: int = 0,
    shared_signal: float = 1.0,
) -> MultimodalDataset:
    """A classification dataset whose every modality hints at the class.

    Args:
        n: samples in total, split 60/20/20 into train/valid/test.
        num_classes: number of (balanced) classes.
        modalities: name -> ``(T, D)``; default ``DEFAULT_MODALITIES``.
        seed: seed of everything random.
        signal: distance scale of the class prototypes relative to the noise.
        missing_rate: approximate share of genuinely missing (sample, modality) entries; every
            sample keeps at least one modality.
        shared_factors: number F of per-sample factors the modalities share beyond the class
            (see the module docstring); 0 for none.
        shared_signal: scale of the shared factors' trace.

    Returns:
        A dataset with float32 modalities ``(N, T, D)`` and int64 labels in ``[0, num_classes)``.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    dims = {m: d for m, (_, d) in shapes.items()}
    shared = _shared_offsets(seed, n, dims, shared_factors, shared_signal)
    features = {}
    for m, (t, d) in shapes.items():
        prototypes = rng.standard_normal((num_classes, d))  # (C, D)
        # A fixed norm keeps the difficulty independent of D.
        prototypes *= 1.2 / np.linalg.norm(prototypes, axis=1, keepdims=True)
        x = signal * prototypes[labels][:, None, :] + _noise(rng, n, t, d)  # (N, T, D)
        features[m] = (x + shared[m][:, None, :]).astype(np.float32)
    return _assemble("synthetic-classification", labels, features, num_classes, rng, missing_rate)


def make_regression_dataset(
    n: int = 300,
    *,
    modalities: Mapping[str, tuple[int, int]] | None = None,
    seed: int = 0,
    signal: float = 1.0,
    missing_rate: float = 0.0,
    shared_factors: int = 0,
    shared_signal: float = 1.0,
) -> MultimodalDataset:
    """A sentiment-like regression dataset whose every modality hints at the label.

    Args:
        n: samples in total, split 60/20/20 into train/valid/test.
        modalities: name -> ``(T, D)``; default ``DEFAULT_MODALITIES``.
        seed: seed of everything random.
        signal: scale of the label's direction relative to the noise.
        missing_rate: approximate share of genuinely missing (sample, modality) entries; every
            sample keeps at least one modality.
        shared_factors: number F of per-sample factors the modalities share beyond the label
            (see the module docstring); 0 for none.
        shared_signal: scale of the shared factors' trace.

    Returns:
        A dataset with float32 modalities ``(N, T, D)`` and float32 labels: multiples of 0.2 in
        ``[-3, 3]``, about 10% exactly 0.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(DEFAULT_MODALITIES if modalities is None else modalities)
    labels = _regression_labels(rng, n)
    dims = {m: d for m, (_, d) in shapes.items()}
    shared = _shared_offsets(seed, n, dims, shared_factors, shared_signal)
    features = {}
    for m, (t, d) in shapes.items():
        direction = rng.standard_normal(d)  # (D,)
        direction *= 1.5 / np.linalg.norm(direction)
        x = signal * (labels / 3)[:, None, None] * direction + _noise(rng, n, t, d)  # (N, T, D)
        features[m] = (x + shared[m][:, None, :]).astype(np.float32)
    return _assemble("synthetic-regression", labels, features, None, rng, missing_rate)
