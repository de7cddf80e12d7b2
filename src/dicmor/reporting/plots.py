"""Plots of a sweep: a metric against the missing rate (or per protocol), mean ± std over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed

import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase

from dicmor.config import ConfigError
from dicmor.evaluation.metrics import PERCENT_METRICS, PRIMARY_METRIC, metric_labels
from dicmor.outputs import writable_file, write_atomic


def read_summary(path: str | Path) -> dict:
    """A sweep's ``summary.json`` (a folder holding one, or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep summary here (run `dicmor sweep` first)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not a readable sweep summary ({error})") from None
    rows = summary.get("rows") if isinstance(summary, dict) else None
    if summary.get("task") not in ("classification", "regression") or not isinstance(rows, list):
        raise ConfigError(f"{path}: not a sweep summary (needs 'task' and a list of 'rows')")
    if not rows:
        raise ConfigError(f"{path}: the sweep summary has no rows yet")
    for k, row in enumerate(rows):
        if not isinstance(row, dict) or not {"method", "protocol", "metrics"} <= set(row):
            raise ConfigError(f"{path}: rows[{k}] lacks 'method', 'protocol' or 'metrics'")
    return summary


def image_path(out: str | Path) -> Path:
    """``out`` as a figure file matplotlib can write (by its extension), in a usable folder."""
    out = writable_file(out)
    formats = FigureCanvasBase.get_supported_filetypes()
    extension = out.suffix.lower().lstrip(".")
    if extension not in formats:
        known = ", ".join(f".{name}" for name in sorted(formats))
        raise ConfigError(f"{out}: unknown figure format '{out.suffix}' (use one of {known})")
    return out


def plot_summary(summary: dict, out: str | Path, metric: str | None = None) -> Path:
    """Draw ``metric`` (default: the task's primary metric) for every method.

    Random and legacy-batch protocols are drawn as lines over the missing rate; other protocols
    (fixed subsets) as grouped bars. Error bars are the standard deviation over seeds.
    """
    out = image_path(out)
    rows = summary["rows"]
    metric = metric or PRIMARY_METRIC[summary["task"]]
    if metric not in rows[0]["metrics"]:
        raise ConfigError(f"unknown metric '{metric}' (have: {', '.join(rows[0]['metrics'])})")
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_rate = all(r["kind"] in ("none", "random", "legacy-batch") for r in rows)
    fig, ax = plt.subplots(figsize=(6.0, 4.0), layout="constrained")
    if by_rate:
        for method in methods:
            mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["rate"])
            ax.errorbar(
                [r["rate"] for r in mine],
                [scale * r["metrics"][metric] for r in mine],
                yerr=[scale * r.get("std", {}).get(metric, 0.0) for r in mine],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xlabel("missing rate")
    else:
        protocols = list(dict.fromkeys(r["protocol"] for r in rows))
        width = 0.8 / len(methods)
        for k, method in enumerate(methods):
            values = {r["protocol"]: r for r in rows if r["method"] == method}
            xs = [i + k * width for i, p in enumerate(protocols) if p in values]
            present = [p for p in protocols if p in values]
            ax.bar(
                xs,
                [scale * values[p]["metrics"][metric] for p in present],
                width,
                yerr=[scale * values[p].get("std", {}).get(metric, 0.0) for p in present],
                capsize=3,
                label=method,
            )
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(protocols))], protocols)
        ax.tick_params(axis="x", labelrotation=20)
    ax.set_ylabel(metric_labels[metric] + (" (%)" if scale == 100.0 else ""))
    ax.grid(alpha=0.3)
    ax.legend()
    try:
        write_atomic(out, lambda partial: fig.savefig(partial, dpi=150, format=out.suffix[1:]))
    finally:
        plt.close(fig)
    return out
