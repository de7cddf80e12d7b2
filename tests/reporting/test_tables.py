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
