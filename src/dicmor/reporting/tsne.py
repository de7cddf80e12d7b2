"""t-SNE of real and recovered features: does a recovery lie on the real features' distribution?

One panel per method (or run): the test split's real entries of a modality and the method's
recoveries of those same entries (``recovered.npz`` of each run), time-averaged, embedded together
by scikit-learn's t-SNE (PCA initialisation, one fixed seed), coloured by class (the prior's:
labels, or the 7 sentiment bins), real as dots and recovered as crosses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only

import matplotlib.pyplot as plt
import numpy as np

from dicmor.config import ConfigError
from dicmor.outputs import writable_file, write_atomic
from dicmor.reporting.gaps import load_recovered

Panel = tuple[str, dict[str, dict[str, np.ndarray]]]
"""(title, entries of ``recovered.npz``)."""


def recovered_panels(path: str | Path, protocol: str | None = None) -> list[Panel]:
    """The panels of a run folder (one) or a sweep folder (one per method that kept
    recoveries, its first seed under ``protocol``, default the sweep's last protocol with any)."""
    path = Path(path)
    if (path / "recovered.npz").is_file():
        method = json.loads((path / "metrics.json").read_text()).get("method", path.name)
        entries = load_recovered(path / "recovered.npz")
        if not entries:
            raise ConfigError(f"{path}: this run recovered nothing (nothing was missing)")
        return [(method, entries)]
    if (path / "metrics.json").is_file():
        raise ConfigError(
            f"{path}: this run kept no recovered features (its method recovers none, or "
            "train.save_recovered was off)"
        )
    listing = path / "sweep.json"
    if not listing.is_file():
        raise ConfigError(f"{path}: neither a run with recovered.npz nor a sweep folder")
    runs = []
    for run in json.loads(listing.read_text()):
        path = Path(run["run_dir"]) / "recovered.npz"
        if path.is_file() and load_recovered(path):  # a run at MR 0 recovers nothing
            runs.append(run)
    if not runs:
        raise ConfigError(f"{path}: no run of this sweep kept recovered features")
    protocols = list(dict.fromkeys(r["protocol"] for r in runs))
    chosen = protocol or protocols[-1]
    if chosen not in protocols:
        raise ConfigError(f"--protocol {chosen!r}: not in this sweep's runs (have: {protocols})")
    panels: dict[str, Panel] = {}
    for run in runs:
        if run["protocol"] == chosen and run["method"] not in panels:
            entries = load_recovered(Path(run["run_dir"]) / "recovered.npz")
            panels[run["method"]] = (f"{run['method']}, {chosen}", entries)
    return list(panels.values())


def embed(real: np.ndarray, recovered: np.ndarray, seed: int = 0) -> np.ndarray:
    """Joint 2-D t-SNE of ``real`` and ``recovered`` ((n, F) each) → (2n, 2)."""
    from sklearn.manifold import TSNE

    points = np.concatenate([real, recovered]).astype(np.float64)
    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    return TSNE(2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(points)


def plot_tsne(
    panels: Sequence[Panel], out: str | Path, modality: str | None = None, seed: int = 0
) -> list[Path]:
    """Draw one t-SNE panel per entry of ``panels`` for ``modality`` (default: the first one
    every panel recovered); writes ``out`` and, beside it, the PDF (or PNG) twin."""
    if not panels:
        raise ConfigError("t-SNE: nothing to draw")
    shared = [m for m in panels[0][1] if all(m in entries for _, entries in panels)]
    modality = modality or (shared[0] if shared else None)
    if modality is None or modality not in shared:
        raise ConfigError(f"t-SNE: modality {modality!r} is not recovered in every panel")
    out = writable_file(out)
    if out.suffix.lower() not in (".png", ".pdf"):
        raise ConfigError(f"{out}: a t-SNE figure is written as .png or .pdf")
    plt.rcParams.update({"font.size": 8})
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.6 * len(panels), 2.8), layout="constrained", squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for ax, (title, entries) in zip(axes[0], panels, strict=True):
        entry = entries[modality]
        real, recovered = entry["real"].mean(axis=2), entry["recovered"].mean(axis=2)
        points = embed(real, recovered, seed)
        n = len(real)
        classes = entry["classes"]
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            colour = colours(int(c) % 10)
            ax.scatter(*points[rows].T, s=9, marker="o", color=colour, alpha=0.55, linewidths=0)
            ax.scatter(*points[n + rows].T, s=12, marker="x", color=colour, linewidths=0.8)
        ax.set_title(f"{title}\n{modality}: {n} entries", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color="0.3", label="real"),
        plt.Line2D([], [], marker="x", linestyle="", color="0.3", label="recovered"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    twin = out.with_suffix(".pdf" if out.suffix.lower() == ".png" else ".png")
    written = []
    try:
        for path in (out, twin):
            fmt = path.suffix[1:].lower()
            write_atomic(path, lambda partial, fmt=fmt: fig.savefig(partial, dpi=200, format=fmt))
            written.append(path)
    finally:
        plt.close(fig)
    return written
