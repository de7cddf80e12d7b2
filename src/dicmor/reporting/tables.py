"""Plain-text tables of metrics; percentages are rounded only here, when printing."""

from __future__ import annotations

from collections.abc import Sequence

from dicmor.evaluation.metrics import METRIC_NAMES, metric_labels

PERCENT_FREE = {"mae", "corr"}


def format_value(key: str, value: float) -> str:
    """Accuracy-like fractions as percentages with one decimal; MAE and Corr with three."""
    if key in PERCENT_FREE:
        return f"{value:.3f}"
    return f"{100 * value:.1f}"


def metrics_table(rows: Sequence[dict], task: str, leading: Sequence[str]) -> str:
    """A fixed-width table: ``leading`` columns taken from each row, then the task's metrics.

    Each row is a dict with the ``leading`` keys and a ``metrics`` dict.
    """
    keys = METRIC_NAMES[task]
    header = [*leading, *(metric_labels[k] for k in keys)]
    body = [
        [str(row[c]) for c in leading] + [format_value(k, row["metrics"][k]) for k in keys]
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
