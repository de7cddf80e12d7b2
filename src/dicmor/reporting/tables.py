"""Plain-text tables of metrics; values are rounded only here, when printing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dicmor.evaluation.metrics import METRIC_NAMES, PERCENT_METRICS, metric_labels


def format_value(key: str, value: float, spread: float | None = None) -> str:
    """Accuracy-like fractions as percentages with one decimal, MAE and Corr with three;
    ``spread`` (a standard deviation) is appended as ``± s``."""
    scale, digits = (100.0, 1) if key in PERCENT_METRICS else (1.0, 3)
    text = f"{scale * value:.{digits}f}"
    if spread is not None:
        text += f" ± {scale * spread:.{digits}f}"
    return text


def metrics_table(rows: Sequence[dict], task: str, leading: Sequence[str]) -> str:
    """A fixed-width table: ``leading`` columns taken from each row, then the task's metrics.

    Each row is a dict with the ``leading`` keys and a ``metrics`` dict; an optional ``std``
    dict of the same keys prints as ``mean ± std``.
    """
    keys = METRIC_NAMES[task]
    header = [*leading, *(metric_labels[k] for k in keys)]
    body = [
        [str(row[c]) for c in leading]
        + [format_value(k, row["metrics"][k], row.get("std", {}).get(k)) for k in keys]
        for row in rows
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= len(leading) else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def aggregate(runs: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Group runs (dicts with ``keys`` and ``metrics``) by ``keys``; mean and sample standard
    deviation (ddof = 1; no ``std`` for a group of one run) of every metric over each group, in
    first-seen order, with the number of runs as ``n``."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run[k] for k in keys), []).append(run["metrics"])
    rows = []
    for group, members in groups.items():
        names = members[0].keys()
        values = {m: np.array([member[m] for member in members], dtype=float) for m in names}
        row = {
            **dict(zip(keys, group, strict=True)),
            "n": len(members),
            "metrics": {m: float(v.mean()) for m, v in values.items()},
        }
        if len(members) > 1:
            row["std"] = {m: float(v.std(ddof=1)) for m, v in values.items()}
        rows.append(row)
    return rows
