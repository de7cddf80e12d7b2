"""Methods can train and test on exactly the masks of another run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.conftest import small_config, tiny_dataset

from dicmor.cli import main
from dicmor.data.dataset import DataError
from dicmor.experiments.run import run_experiment
from dicmor.missing.protocols import load_masks


def test_given_masks_are_used_and_saved(tmp_path: Path) -> None:
    data = tiny_dataset("classification")
    rng = np.random.default_rng(0)
    masks = {}
    for name, split in data.splits.items():
        mask = rng.random(split.present.shape) < 0.7
        mask[:, 0] = True
        masks[name] = mask
    config = small_config("zero_fill", **{"train.max_epochs": 1, "output_dir": str(tmp_path)})
    result = run_experiment(config, dataset=data, masks=masks, log=lambda _: None)
    saved, names = load_masks(result.run_dir / "masks.npz")
    assert tuple(names) == data.modality_names
    for name, split in data.splits.items():
        expected = masks[name] & split.present  # genuinely absent entries stay absent
        assert np.array_equal(result.masks[name], expected)
        assert np.array_equal(saved[name], expected)


def test_masks_of_the_wrong_shape_are_refused(tmp_path: Path) -> None:
    data = tiny_dataset("classification")
    masks = {name: np.ones((5, 3), dtype=bool) for name in data.splits}
    config = small_config("zero_fill", **{"output_dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"split 'train' needs a bool mask of shape \(24, 3\)"):
        run_experiment(config, dataset=data, masks=masks, log=lambda _: None)


def test_train_command_reuses_another_runs_masks(tmp_path: Path) -> None:
    common = [
        "--set",
        "train.max_epochs=1",
        "--set",
        "train.progress=false",
        "--set",
        "model.dicmor.flow_steps=2",
        "--set",
        "model.recovery.refine_blocks=1",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(["train", "demo", "--missing", "random:0.3", "--name", "a", *common]) == 0
    assert (
        main(
            [
                "train",
                "demo",
                "--method",
                "dicmor",
                "--seed",
                "7",
                "--masks",
                str(tmp_path / "a" / "masks.npz"),
                "--name",
                "b",
                *common,
            ]
        )
        == 0
    )
    first, _ = load_masks(tmp_path / "a" / "masks.npz")
    second, _ = load_masks(tmp_path / "b" / "masks.npz")
    assert all(np.array_equal(first[s], second[s]) for s in ("train", "valid", "test"))
    assert "random" in (tmp_path / "b" / "config.yaml").read_text()


def test_legacy_schedule_follows_the_training_batch_size(tmp_path: Path) -> None:
    args = [
        "train",
        "demo",
        "--missing",
        "legacy-batch:0.5",
        "--name",
        "legacy",
        "--set",
        "train.max_epochs=1",
        "--set",
        "train.batch_size=16",
        "--set",
        "train.progress=false",
        "--output-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    config = (tmp_path / "legacy" / "config.yaml").read_text()
    assert "kind: legacy-batch" in config and "batch_size: 16" in config.split("missing:")[1]
