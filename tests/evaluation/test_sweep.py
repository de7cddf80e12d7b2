"""A sweep trains every method × protocol × seed on shared masks and aggregates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tests.conftest import small_config

from dicmor.evaluation.sweep import run_sweep
from dicmor.missing.protocols import MissingProtocol, load_masks


def test_sweep_shares_masks_between_methods_and_aggregates(tmp_path: Path) -> None:
    base = small_config(
        "zero_fill",
        **{
            "train.max_epochs": 1,
            "model.kernel_size": 1,
            "output_dir": str(tmp_path),
            "data.modalities": ["fourier", "morphological"],
        },
    )
    protocols = [MissingProtocol(kind="random", rate=0.3)]
    runs, rows, table = run_sweep(
        base, ["zero_fill", "zero_fill"], protocols, [1, 2], log=lambda _: None
    )
    assert len(runs) == 4 and len(rows) == 1 and rows[0]["n"] == 4
    by_seed: dict[int, list] = {}
    for run in runs:
        masks, _ = load_masks(Path(run["run_dir"]) / "masks.npz")
        by_seed.setdefault(run["seed"], []).append(masks["test"])
    assert np.array_equal(*by_seed[1])
    assert not np.array_equal(by_seed[1][0], by_seed[2][0])
    accs = [run["metrics"]["acc"] for run in runs]
    assert rows[0]["metrics"]["acc"] == np.mean(accs)
    assert "random MR=0.30" in table and "±" in table
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["n"] == 4
