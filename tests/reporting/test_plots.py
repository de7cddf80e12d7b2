"""Sweep plots: lines over the missing rate, bars per fixed subset, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicmor.cli import main
from dicmor.reporting.plots import plot_summary, read_summary


def row(protocol: str, kind: str, rate: float, method: str, acc: float) -> dict:
    metrics = {"acc": acc, "f1_macro": acc - 0.01, "f1_weighted": acc - 0.02}
    return {
        "protocol": protocol,
        "kind": kind,
        "rate": rate,
        "method": method,
        "n": 2,
        "metrics": metrics,
        "std": {k: 0.01 for k in metrics},
    }


def test_lines_over_the_missing_rate(tmp_path: Path) -> None:
    rows = [row("none", "none", 0.0, m, 0.9) for m in ("a", "b")]
    rows += [row("random MR=0.50", "random", 0.5, m, 0.7) for m in ("a", "b")]
    out = plot_summary({"task": "classification", "rows": rows}, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bars_per_fixed_subset_and_metric_choice(tmp_path: Path) -> None:
    rows = [row("fixed {a}", "fixed", 0.0, "m", 0.6), row("fixed {b}", "fixed", 0.0, "m", 0.5)]
    out = plot_summary({"task": "classification", "rows": rows}, tmp_path / "p.svg", "f1_macro")
    assert "<svg" in out.read_text()
    with pytest.raises(ValueError, match="unknown metric 'acc7'"):
        plot_summary({"task": "classification", "rows": rows}, tmp_path / "q.png", "acc7")


def test_plot_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row("none", "none", 0.0, "m", 0.9)]
    (tmp_path / "summary.json").write_text(json.dumps({"task": "classification", "rows": rows}))
    assert read_summary(tmp_path)["rows"] == rows
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 0
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "no sweep summary" in capsys.readouterr().err


def test_table_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [row("none", "none", 0.0, "m", 0.9), row("random MR=0.50", "random", 0.5, "m", 0.7)]
    (tmp_path / "summary.json").write_text(json.dumps({"task": "classification", "rows": rows}))
    assert main(["table", str(tmp_path), "--format", "markdown", "--metrics", "acc"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| protocol | method | n | Acc |"
    assert lines[3] == "| random MR=0.50 | m | 2 | 70.0 ± 1.0 |"
    out = tmp_path / "t.tex"
    assert main(["table", str(tmp_path), "--format", "latex", "--out", str(out)]) == 0
    assert out.read_text().startswith(r"\begin{tabular}")
    assert main(["table", str(tmp_path), "--metrics", "acc7"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown metric 'acc7'")
