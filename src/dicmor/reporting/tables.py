"""Tables of metrics: plain text, Markdown, LaTeX or CSV. Values are rounded only here, when
printing, and not at all in CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from dicmor.config import ConfigError
from dicmor.evaluation.metrics import METRIC_NAMES, PERCENT_METRICS, metric_labels

TABLE_FORMATS = ("text", "markdown", "latex", "csv")


def format_value(key: str, value: float, spread: float | None = None) -> str:
    """Accuracy-like fractions as percentages with one decimal, MAE and Corr with three;
    ``spread`` (a standard deviation) is appended as ``± s``."""
    scale, digits = (100.0, 1) if key in PERCENT_METRICS else (1.0, 3)
    text = f"{scale * value:.{digits}f}"
    if spread is not None:
        text += f" ± {scale * spread:.{digits}f}"
    return text


def metric_keys(task: str, chosen: Sequence[str] | None = None) -> tuple[str, ...]:
    """The task's metrics in table order, or the ``chosen`` ones (unknown keys are an error)."""
    keys = METRIC_NAMES[task]
    if not chosen:
        return keys
    unknown = [k for k in chosen if k not in keys]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r} for {task} (have: {', '.join(keys)})")
    return tuple(chosen)


def metrics_table(
    rows: Sequence[dict],
    task: str,
    leading: Sequence[str],
    fmt: str = "text",
    metrics: Sequence[str] | None = None,
) -> str:
    """A table: ``leading`` columns taken from each row, then the task's metrics (or ``metrics``).

    Each row is a dict with the ``leading`` keys and a ``metrics`` dict; an optional ``std``
    dict of the same keys prints as ``mean ± std``. ``fmt`` is ``text`` (fixed width),
    ``markdown``, ``latex`` (a ``tabular``) or ``csv`` (unrounded values, ``_std`` columns).
    """
    keys = metric_keys(task, metrics)
    if fmt == "csv":
        return _csv_table(rows, leading, keys)
    header = [*leading, *(metric_labels[k] for k in keys)]
    body = [
        [str(row[c]) for c in leading]
        + [format_value(k, row["metrics"][k], row.get("std", {}).get(k)) for k in keys]
        for row in rows
    ]
    if fmt == "markdown":
        align = ["---"] * len(leading) + ["---:"] * len(keys)
        lines = [header, align, *body]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in lines)
    if fmt == "latex":
        spec = "l" * len(leading) + "r" * len(keys)
        lines = [" & ".join(_latex(c) for c in r) + r" \\" for r in [header, *body]]
        begin, end = rf"\begin{{tabular}}{{{spec}}}", r"\end{tabular}"
        rules = (r"\toprule", r"\midrule", r"\bottomrule")
        return "\n".join([begin, rules[0], lines[0], rules[1], *lines[1:], rules[2], end])
    if fmt != "text":
        raise ConfigError(f"unknown table format {fmt!r} (have: {', '.join(TABLE_FORMATS)})")
    return _text_table(header, body, len(leading))


def _latex(cell: str) -> str:
    """A cell in LaTeX: special characters escaped, ``±`` as ``$\\pm$``."""
    for char in "&%$#_{}":
        cell = cell.replace(char, "\\" + char)
    return cell.replace("±", r"$\pm$")


def _csv_table(rows: Sequence[dict], leading: Sequence[str], keys: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*leading, *(c for k in keys for c in (k, f"{k}_std"))])
    for row in rows:
        spread = row.get("std", {})
        values = [v for k in keys for v in (row["metrics"][k], spread.get(k, ""))]
        writer.writerow([*(row[c] for c in leading), *values])
    return out.getvalue().rstrip("\n")


def _text_table(header: list[str], body: list[list[str]], leading: int) -> str:
    """Fixed width: leading columns left-aligned, metrics right-aligned."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i >= leading else c.ljust(w)
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


PAPER_METRICS = {"regression": ("acc2_non0", "f1_non0"), "classification": ("acc", "f1_macro")}
"""The two numbers per cell of the paper's tables (Acc-2 / F1, non-0, for sentiment)."""


def _column(row: dict) -> str:
    """A protocol's column header in the paper layout: the rate, or the subset kept."""
    if row["kind"] in ("random", "legacy-batch"):
        return f"{row['rate']:.1f}"
    if row["kind"] == "none":
        return "0.0"
    return str(row["protocol"]).removeprefix("fixed ")


def paper_table(
    rows: Sequence[dict], task: str, fmt: str = "text", metrics: Sequence[str] | None = None
) -> str:
    """The paper's layout: methods × protocols, each cell ``a / b`` of two metrics (default
    Acc-2 / F1 non-0, or accuracy / macro-F1), mean over seeds; one table per protocol kind
    (``legacy-batch``, ``random``, ``fixed``; ``none`` joins the rate tables as MR 0.0)."""
    keys = tuple(metrics or PAPER_METRICS[task])
    if len(keys) != 2:
        raise ConfigError(f"the paper layout shows two metrics per cell, got {list(keys)}")
    metric_keys(task, keys)
    kinds = [k for k in ("legacy-batch", "random", "fixed") if any(r["kind"] == k for r in rows)]
    if not kinds:
        kinds = ["random"]
    tables = []
    for kind in kinds:
        chosen = (
            [r for r in rows if r["kind"] in (kind, "none")]
            if kind != "fixed"
            else [r for r in rows if r["kind"] == "fixed"]
        )
        columns = list(dict.fromkeys(_column(r) for r in chosen))
        if kind != "fixed":
            columns.sort(key=float)
        methods = list(dict.fromkeys(r["method"] for r in chosen))
        cells = {(r["method"], _column(r)): r for r in chosen}
        body = []
        for method in methods:
            line = [method]
            for column in columns:
                row = cells.get((method, column))
                line.append(
                    " / ".join(format_value(k, row["metrics"][k]) for k in keys) if row else "–"
                )
            body.append(line)
        label = "kept" if kind == "fixed" else "MR"
        header = [f"{kind} ({label})", *columns]
        caption = f"{kind}: {' / '.join(metric_labels[k] for k in keys)}, mean over seeds"
        tables.append(_layout(header, body, fmt, caption))
    return "\n\n".join(tables)


def _layout(header: list[str], body: list[list[str]], fmt: str, caption: str) -> str:
    """One table in ``fmt`` (text, markdown or latex), with ``caption``."""
    if fmt == "markdown":
        align = ["---"] + ["---:"] * (len(header) - 1)
        lines = [header, align, *body]
        table = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in lines)
        return f"{caption}\n\n{table}"
    if fmt == "latex":
        spec = "l" + "c" * (len(header) - 1)
        lines = [" & ".join(_latex(c) for c in r) + r" \\" for r in [header, *body]]
        return "\n".join(
            [
                f"% {caption}",
                rf"\begin{{tabular}}{{{spec}}}",
                r"\toprule",
                lines[0],
                r"\midrule",
                *lines[1:],
                r"\bottomrule",
                r"\end{tabular}",
            ]
        )
    if fmt != "text":
        raise ConfigError(f"the paper layout is text, markdown or latex, not {fmt!r}")
    return f"{caption}\n{_text_table(header, body, 1)}"
