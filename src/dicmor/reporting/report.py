"""One self-contained HTML report of a sweep: settings, tables, curves, gaps, t-SNE, run links.

Everything is inline (images as base64 PNG, no script, no style sheet or font from elsewhere), so
the file opens without network access; the content is headings, paragraphs and tables, so it
reads as plain text too.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicmor.config import ConfigError
from dicmor.outputs import writable_file, write_text
from dicmor.reporting.gaps import gaps_of, load_recovered
from dicmor.reporting.plots import plot_summary, read_summary
from dicmor.reporting.tables import format_value, metric_keys
from dicmor.reporting.tsne import plot_tsne, recovered_panels

GAP_COLUMNS = ("mse", "cosine", "class_mmd", "class_frechet", "c2st")
GAP_LABELS = {
    "mse": "MSE",
    "cosine": "cosine",
    "class_mmd": "per-class MMD",
    "class_frechet": "per-class Fréchet",
    "c2st": "C2ST acc.",
}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


def _image(draw, alt: str) -> str:
    """``draw(path)`` writes a PNG; returned inline as an ``<img>``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode()
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _mean_std(values: list[float]) -> str:
    array = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(array) == 0:
        return "–"
    if len(array) == 1:
        return f"{array[0]:.3f}"
    return f"{array.mean():.3f} ± {array.std(ddof=1):.3f}"


def class_gap_rows(groups: dict[tuple[str, str, str], list[dict]]) -> list[list[str]]:
    """Per (protocol, method, modality, class): MMD and Fréchet distance, recovery (zeros),
    mean ± std over seeds."""
    rows = []
    for (protocol, method, m), found in groups.items():
        classes = sorted(
            {k.split("@", 1)[1] for r in found for k in r if k.startswith("mmd@") and "_" not in k},
            key=float,
        )
        for c in classes:
            cells = [protocol, method, m, c]
            for key in ("mmd", "frechet"):
                own = _mean_std([r.get(f"{key}@{c}", np.nan) for r in found])
                zero = _mean_std([r.get(f"{key}@{c}_zero", np.nan) for r in found])
                cells.append(f"{own} (zeros {zero})")
            rows.append(cells)
    return rows


def _gap_groups(runs: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Each run's gaps (of its ``recovered.npz``) grouped by (protocol, method, modality)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for run in runs:
        path = Path(run["run_dir"]) / "recovered.npz"
        if not path.is_file():
            continue
        for m, row in gaps_of(load_recovered(path)).items():
            groups.setdefault((run["protocol"], run["method"], m), []).append(row)
    return groups


def gap_rows(groups: dict[tuple[str, str, str], list[dict]]) -> list[list[str]]:
    """Per (protocol, method, modality): each gap measure, recovery (zeros / mean), mean ± std
    over the seeds whose runs kept ``recovered.npz``."""
    table = []
    for (protocol, method, m), rows in groups.items():
        cells = [protocol, method, m, str(len(rows))]
        for key in GAP_COLUMNS:
            own = _mean_std([r[key] for r in rows])
            zero = _mean_std([r[f"{key}_zero"] for r in rows])
            mean = _mean_std([r[f"{key}_mean"] for r in rows])
            cells.append(f"{own} (zeros {zero}; mean {mean})")
        table.append(cells)
    return table


def write_report(sweep: str | Path, out: str | Path) -> Path:
    """Write the HTML report of the sweep folder ``sweep`` to ``out`` (whole or not at all)."""
    sweep = Path(sweep)
    summary = read_summary(sweep)
    listing = sweep / "sweep.json"
    if not listing.is_file():
        raise ConfigError(f"{sweep}: no sweep.json here (run `dicmor sweep` first)")
    try:
        runs = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{listing}: not a readable sweep listing ({error})") from None
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError(f"{listing}: not a sweep listing (needs a list of runs)")
    out = writable_file(out)
    task, rows = summary["task"], summary["rows"]
    parts = ["<h1>dicmor sweep report</h1>", f"<p>Sweep folder: {html.escape(str(sweep))}</p>"]

    first = Path(runs[0]["run_dir"]) if runs else None
    parts.append("<h2>Settings</h2>")
    if first is not None and (first / "config.yaml").is_file():
        version = json.loads((first / "metrics.json").read_text()).get("version", "?")
        methods = ", ".join(dict.fromkeys(r["method"] for r in runs))
        seeds = ", ".join(str(s) for s in dict.fromkeys(r["seed"] for r in runs))
        parts.append(
            f"<p>Code version {html.escape(version)}; methods {html.escape(methods)}; "
            f"seeds {html.escape(seeds)}; {len(runs)} runs. The first run's configuration "
            "(the others differ in method, protocol and seed):</p>"
        )
        parts.append(f"<pre>{html.escape((first / 'config.yaml').read_text())}</pre>")

    keys = metric_keys(task)
    parts.append("<h2>Results: mean ± std over seeds</h2>")
    header = ["protocol", "method", "n", *keys]
    body = [
        [r["protocol"], r["method"], str(r["n"])]
        + [format_value(k, r["metrics"][k], r.get("std", {}).get(k)) for k in keys]
        for r in rows
    ]
    parts.append(_table(header, body))

    by_rate = [r for r in rows if r["kind"] in ("none", "random", "legacy-batch")]
    fixed = [r for r in rows if r["kind"] == "fixed"]
    if by_rate:
        parts.append("<h2>Metric against the missing rate</h2>")
        data = {"task": task, "rows": by_rate}
        parts.append(_image(lambda p: plot_summary(data, p), "metric against missing rate"))
    if fixed:
        parts.append("<h2>Fixed subsets</h2>")
        data = {"task": task, "rows": fixed}
        parts.append(_image(lambda p: plot_summary(data, p), "metric per fixed subset"))

    evaluated = []
    for run in runs:
        path = Path(run["run_dir"]) / "evaluations.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                evaluated.append(
                    [run["method"], str(run["seed"]), row["protocol"], row["split"]]
                    + [format_value(k, row["metrics"][k]) for k in keys]
                )
    if evaluated:
        parts.append("<h2>Per-subset evaluation (dicmor evaluate)</h2>")
        parts.append(_table(["method", "seed", "protocol", "split", *keys], evaluated))

    groups = _gap_groups(runs)
    gaps = gap_rows(groups)
    if gaps:
        parts.append("<h2>Distribution gaps of the recovered test entries</h2>")
        parts.append(
            "<p>Shallow-feature space. MMD: Gaussian kernels at 0.5, 1 and 2 times the median "
            "pairwise distance; Fréchet: Gaussian fits; both per class of the prior, weighted by "
            "class size. C2ST: cross-validated accuracy of a logistic regression telling real "
            "from recovered entries (0.5 = indistinguishable). References: zeros (zero-fill) and "
            "the mean of the real entries (a constant fill).</p>"
        )
        header = ["protocol", "method", "modality", "seeds", *(GAP_LABELS[k] for k in GAP_COLUMNS)]
        parts.append(_table(header, gaps))
        parts.append("<h3>Per class</h3>")
        header = ["protocol", "method", "modality", "class", "MMD", "Fréchet"]
        parts.append(_table(header, class_gap_rows(groups)))
        panels = recovered_panels(sweep)
        parts.append("<h2>t-SNE of real and recovered features</h2>")
        parts.append(_image(lambda p: plot_tsne(panels, p), "t-SNE of real and recovered"))

    parts.append("<h2>Runs</h2>")
    links = []
    for run in runs:
        target = os.path.relpath(run["run_dir"], out.resolve().parent)
        label = f"{run['method']}, {run['protocol']}, seed {run['seed']}"
        links.append(f'<li><a href="{html.escape(target)}">{html.escape(label)}</a></li>')
    parts.append("<ul>" + "".join(links) + "</ul>")

    style = (
        "body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
    )
    document = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>dicmor sweep report</title>\n<style>{style}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
    return write_text(out, document)
