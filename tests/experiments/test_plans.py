"""Named sweep plans, and the paper's table layout of a sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicmor.cli import main
from dicmor.config import ConfigError
from dicmor.experiments.plans import get_plan
from dicmor.reporting.plots import read_summary
from dicmor.reporting.tables import paper_table


def test_the_paper_plan_has_the_papers_methods_protocols_and_seeds() -> None:
    plan = get_plan("paper", ("text", "audio", "vision"), batch_size=32)
    assert plan.methods == ("dcca", "dccae", "mctn", "mmin", "gcnet", "dicmor")
    assert plan.seeds == tuple(range(1111, 1120))
    by_kind: dict[str, list] = {}
    for protocol in plan.protocols:
        by_kind.setdefault(protocol.kind, []).append(protocol)
    assert [p.rate for p in by_kind["legacy-batch"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    # Random missing leaves every sample a modality only up to (M - 1) / M = 2/3.
    assert [p.rate for p in by_kind["random"]] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    kept = sorted(tuple(p.keep) for p in by_kind["fixed"])
    assert len(kept) == 6 and ("text",) in kept and ("audio", "vision") in kept
    assert all(p.batch_size == 32 for p in by_kind["legacy-batch"])
    four = get_plan("paper", ("a", "b", "c", "d"), batch_size=8)
    assert sum(p.kind == "fixed" for p in four.protocols) == 14
    assert max(p.rate for p in four.protocols if p.kind == "random") == 0.7
    with pytest.raises(ConfigError, match="unknown plan 'papers'"):
        get_plan("papers", ("a", "b"), 8)


def test_a_plan_sweep_narrowed_prints_the_paper_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    args = ["sweep", "tiny", "--plan", "paper", "--methods", "zero_fill", "mctn"]
    args += ["--missing", "legacy-batch:0.3", "random:0.3", "fixed:fourier", "--seeds", "1"]
    args += ["--set", "train.max_epochs=1", "--set", "train.progress=false"]
    assert main([*args, "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["table", str(out), "--layout", "paper"]) == 0
    text = capsys.readouterr().out
    assert "legacy-batch: Acc / F1 (macro), mean over seeds" in text
    assert "random (MR)" in text and "fixed (kept)" in text and "{fourier}" in text
    summary = read_summary(out)
    row = next(r for r in summary["rows"] if r["method"] == "mctn" and r["kind"] == "random")
    cell = f"{100 * row['metrics']['acc']:.1f} / {100 * row['metrics']['f1_macro']:.1f}"
    assert any(line.startswith("mctn") and cell in line for line in text.splitlines())
    assert main(["table", str(out), "--layout", "paper", "--format", "latex"]) == 0
    assert r"\begin{tabular}{lc}" in capsys.readouterr().out


def _row(method: str, kind: str, rate: float, acc: float, keep: str = "") -> dict:
    protocol = f"fixed {{{keep}}}" if kind == "fixed" else f"{kind} MR={rate:.2f}"
    return {
        "method": method,
        "kind": kind,
        "rate": rate,
        "protocol": protocol,
        "metrics": {"acc2_non0": acc, "f1_non0": acc - 0.01},
    }


def test_the_paper_layout_puts_methods_in_rows_and_rates_in_columns() -> None:
    rows = [
        _row("dicmor", "random", 0.5, 0.8),
        _row("dicmor", "random", 0.1, 0.9),
        _row("dicmor", "none", 0.0, 0.95),
        _row("mctn", "random", 0.1, 0.7),
    ]
    table = paper_table(rows, "regression", "markdown")
    lines = table.splitlines()
    assert lines[2] == "| random (MR) | 0.0 | 0.1 | 0.5 |"
    assert lines[4] == "| dicmor | 95.0 / 94.0 | 90.0 / 89.0 | 80.0 / 79.0 |"
    assert lines[5] == "| mctn | – | 70.0 / 69.0 | – |"
    with pytest.raises(ConfigError, match="two metrics"):
        paper_table(rows, "regression", metrics=["acc2_non0"])
    with pytest.raises(ConfigError, match="text, markdown or latex"):
        paper_table(rows, "regression", "csv")
