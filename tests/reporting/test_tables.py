"""Tables: rounding only when printing, mean ± std over seeds."""

from __future__ import annotations

import pytest

from dicmor.reporting.tables import aggregate, format_value, metrics_table


def test_format_value_percentages_and_raw_values() -> None:
    assert format_value("acc", 0.87654) == "87.7"
    assert format_value("mae", 0.87654) == "0.877"
    assert format_value("acc", 0.8, 0.0123) == "80.0 ± 1.2"


def test_aggregate_mean_and_sample_std() -> None:
    runs = [
        {"method": "a", "metrics": {"acc": 0.5, "f1_macro": 0.4, "f1_weighted": 0.3}},
        {"method": "b", "metrics": {"acc": 0.9, "f1_macro": 0.9, "f1_weighted": 0.9}},
        {"method": "a", "metrics": {"acc": 0.7, "f1_macro": 0.6, "f1_weighted": 0.5}},
    ]
    rows = aggregate(runs, ["method"])
    assert [r["method"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["n"] == 2 and a["metrics"]["acc"] == pytest.approx(0.6)
    # sample standard deviation of (0.5, 0.7): sqrt(((-0.1)^2 + 0.1^2) / 1) = 0.1414...
    assert a["std"]["acc"] == pytest.approx(0.1414213562)
    assert b["n"] == 1 and "std" not in b
    table = metrics_table(rows, "classification", ["method", "n"])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["method", "n", "Acc"]
    assert "60.0 ± 14.1" in lines[2]
    assert lines[3].split()[2] == "90.0"  # a single run has no spread to print


ROWS = [
    {
        "protocol": "fixed {a_b}",
        "method": "zero_fill",
        "n": 2,
        "metrics": {"acc": 0.6, "f1_macro": 0.55, "f1_weighted": 0.5},
        "std": {"acc": 0.1414213562, "f1_macro": 0.01, "f1_weighted": 0.02},
    },
    {
        "protocol": "random MR=0.50",
        "method": "dicmor",
        "n": 1,
        "metrics": {"acc": 0.9, "f1_macro": 0.85, "f1_weighted": 0.8},
    },
]
LEADING = ["protocol", "method", "n"]


def test_markdown_table() -> None:
    table = metrics_table(ROWS, "classification", LEADING, "markdown", ["acc", "f1_macro"])
    assert table.splitlines() == [
        "| protocol | method | n | Acc | F1 (macro) |",
        "| --- | --- | --- | ---: | ---: |",
        "| fixed {a_b} | zero_fill | 2 | 60.0 ± 14.1 | 55.0 ± 1.0 |",
        "| random MR=0.50 | dicmor | 1 | 90.0 | 85.0 |",
    ]


def test_latex_table_escapes_and_uses_pm() -> None:
    lines = metrics_table(ROWS, "classification", LEADING, "latex", ["acc"]).splitlines()
    assert lines[0] == r"\begin{tabular}{lllr}"
    assert lines[2] == r"protocol & method & n & Acc \\"
    assert lines[4] == r"fixed \{a\_b\} & zero\_fill & 2 & 60.0 $\pm$ 14.1 \\"
    assert lines[-1] == r"\end{tabular}"
    assert [lines[1], lines[3], lines[-2]] == [r"\toprule", r"\midrule", r"\bottomrule"]


def test_csv_table_keeps_values_unrounded() -> None:
    lines = metrics_table(ROWS, "classification", LEADING, "csv", ["acc"]).splitlines()
    assert lines == [
        "protocol,method,n,acc,acc_std",
        "fixed {a_b},zero_fill,2,0.6,0.1414213562",
        "random MR=0.50,dicmor,1,0.9,",
    ]


def test_unknown_formats_and_metrics_are_named() -> None:
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        metrics_table(ROWS, "classification", LEADING, "html")
    with pytest.raises(ValueError, match="unknown metric 'acc7' for classification"):
        metrics_table(ROWS, "classification", LEADING, "text", ["acc7"])
