"""One run end to end: learning, its directory, determinism, the stage cache, the protocols and
the rule that the test split is read once, at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tests.conftest import small_config, tiny_dataset

from dicmor import provenance
from dicmor.config import Config, from_dict
from dicmor.data.batches import Batches
from dicmor.data.dataset import MultimodalDataset
from dicmor.data.synthetic import make_classification_dataset
from dicmor.evaluation.evaluate import evaluate, score
from dicmor.evaluation.metrics import METRIC_NAMES
from dicmor.experiments.run import RunResult, run_experiment
from dicmor.missing.protocols import MissingProtocol, load_masks, missing_rate
from dicmor.provenance import code_version
from dicmor.registry import model_names
from dicmor.training import checkpoints, stages
from dicmor.training.checkpoints import load_checkpoint


def with_protocol(config: Config, protocol: MissingProtocol) -> Config:
    return Config(config.data, config.model, config.train, protocol, config.output_dir)


def quiet_run(config: Config, data: MultimodalDataset, **options) -> RunResult:
    return run_experiment(config, dataset=data, log=lambda _: None, **options)


def test_zero_fill_learns_and_suffers_from_missing_modalities(tmp_path: Path) -> None:
    # Four classes, each of three modalities a noisy hint: together they classify well, and a
    # model trained and tested with 60% of the entries missing does clearly worse.
    shapes = {"a": (4, 6), "b": (4, 6), "c": (4, 6)}
    data = make_classification_dataset(600, num_classes=4, modalities=shapes, seed=0)
    accuracy = {}
    for rate in (0.0, 0.6):
        protocol = MissingProtocol("random", rate) if rate else MissingProtocol()
        config = small_config(
            "zero_fill",
            **{
                "model.dim": 16,
                "train.batch_size": 32,
                "train.lr": 3e-3,
                "train.max_epochs": 5,
                "train.seed": 1,
                "output_dir": str(tmp_path),
            },
        )
        result = quiet_run(with_protocol(config, protocol), data)
        assert missing_rate(result.masks["test"]) == pytest.approx(rate, abs=0.01)
        accuracy[rate] = result.metrics["acc"]
    chance = 1 / 4
    assert accuracy[0.0] >= 2.4 * chance, accuracy
    assert accuracy[0.6] <= accuracy[0.0] - 0.07, accuracy


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_run_directory_holds_everything_to_reproduce_and_reuse_the_run(
    task: str, tmp_path: Path
) -> None:
    data = tiny_dataset(task)
    config = with_protocol(
        small_config("zero_fill", **{"output_dir": str(tmp_path)}),
        MissingProtocol("random", 0.3),
    )
    result = quiet_run(config, data, name="run")
    run_dir = result.run_dir
    assert run_dir == tmp_path / "run"

    reloaded = from_dict(Config, yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert reloaded == config

    masks, names = load_masks(run_dir / "masks.npz")
    assert names == data.modality_names
    assert sorted(masks) == sorted(result.masks) == ["test", "train", "valid"]
    for split, mask in result.masks.items():
        assert np.array_equal(masks[split], mask)
    assert 0.2 < missing_rate(masks["test"]) < 0.4

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert set(summary["metrics"]) == set(METRIC_NAMES[task])
    assert summary["metrics"] == pytest.approx(result.metrics)
    assert summary["version"] == code_version() != ""
    assert summary["method"] == "zero_fill"
    assert summary["seed"] == config.train.seed
    assert 0 < summary["seconds"] < 600  # the run's wall time

    history = json.loads((run_dir / "history.json").read_text())
    assert set(history) == set(result.stages) == {"main"}
    epochs = history["main"]["epochs"]
    assert len(epochs) == result.stages["main"].epochs_run
    assert history["main"]["best_epoch"] == result.stages["main"].best_epoch
    assert {"train_total", "valid_total", "lr"} <= set(epochs[0])

    predictions = np.load(run_dir / "test_predictions.npy")
    test = data.splits["test"]
    assert score(predictions, test.labels, task) == pytest.approx(result.metrics)
    model, saved_config = load_checkpoint(run_dir)
    assert saved_config == config
    _, again = evaluate(
        model, test, data.modality_names, masks["test"], batch_size=config.train.batch_size
    )
    np.testing.assert_array_equal(again, predictions)


@pytest.mark.parametrize("method", model_names())
def test_runs_are_deterministic_given_the_seed(method: str, tmp_path: Path) -> None:
    data = tiny_dataset("classification")
    outcomes = []
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        # Separate folders: a cached complete-data stage must not make the repeat trivial.
        config = small_config(method, **{"train.seed": seed, "output_dir": str(tmp_path / folder)})
        result = quiet_run(with_protocol(config, MissingProtocol("random", 0.3)), data)
        outcomes.append((result.metrics, np.load(result.run_dir / "test_predictions.npy")))
    (first, p1), (repeat, p2), (_, p3) = outcomes
    assert first == repeat
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)


def test_the_test_split_is_read_once_after_training(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tiny_dataset("classification")
    names = {id(split): name for name, split in data.splits.items()}
    events: list[str] = []
    original_init, original_iter = Batches.__init__, Batches.__iter__
    original_fit = stages.fit

    def init(self, split, *args, **kwargs) -> None:
        original_init(self, split, *args, **kwargs)
        self.recorded_split = names[id(split)]

    def iterate(self):
        events.append(f"read {self.recorded_split}")
        return original_iter(self)

    def fit(*args, **kwargs):
        events.append("fit start")
        result = original_fit(*args, **kwargs)
        events.append("fit end")
        return result

    monkeypatch.setattr(Batches, "__init__", init)
    monkeypatch.setattr(Batches, "__iter__", iterate)
    monkeypatch.setattr(stages, "fit", fit)
    # The kept recoveries read the test split again after the metrics; here only the metrics.
    config = small_config("dicmor", **{"output_dir": str(tmp_path), "train.save_recovered": False})
    quiet_run(with_protocol(config, MissingProtocol("random", 0.3)), data)
    assert events.count("fit start") == 2
    assert events.count("read test") == 1
    last_fit = len(events) - 1 - events[::-1].index("fit end")
    assert events.index("read test") > last_fit
    assert {"read train", "read valid"} == set(events[:last_fit]) - {"fit start", "fit end"}


@pytest.mark.parametrize("method", ["dicmor", "zero_fill_pretrained"])
def test_two_stage_methods_reuse_their_complete_data_stage_across_protocols(
    method: str, tmp_path: Path
) -> None:
    data = tiny_dataset("regression")
    config = small_config(method, **{"output_dir": str(tmp_path)})
    first = quiet_run(with_protocol(config, MissingProtocol("random", 0.3)), data)
    assert set(first.stages) == {"complete", "missing"}
    cached = list((tmp_path / "cache").glob(f"{method}-complete-*.pt"))
    assert len(cached) == 1

    messages: list[str] = []
    second = run_experiment(
        with_protocol(config, MissingProtocol("random", 0.5)),
        dataset=data,
        log=messages.append,
    )
    assert set(second.stages) == {"missing"}
    assert any("reusing cached weights" in m and str(cached[0]) in m for m in messages)
    # Stage 2 freezes the extractors, so they still hold the cached stage-1 weights, and it
    # trains the rest.
    state = torch.load(cached[0], weights_only=True)
    for key, value in second.model.state_dict().items():
        if key.startswith("extractors."):
            assert torch.equal(value, state[key]), key
    assert not torch.equal(
        second.model.state_dict()["fusion.head.weight"], state["fusion.head.weight"]
    )

    changed = config.replace(**{"model.kernel_size": 1})
    third = quiet_run(with_protocol(changed, MissingProtocol("random", 0.5)), data)
    assert set(third.stages) == {"complete", "missing"}
    assert len(list((tmp_path / "cache").glob(f"{method}-complete-*.pt"))) == 2


@pytest.mark.parametrize("method", model_names())
@pytest.mark.parametrize(
    "protocol",
    [
        MissingProtocol("legacy-batch", 0.3, batch_size=8),
        MissingProtocol("fixed", keep=("text", "vision")),
    ],
    ids=["legacy-batch", "fixed"],
)
def test_other_protocols_run_end_to_end(
    method: str, protocol: MissingProtocol, tmp_path: Path
) -> None:
    data = tiny_dataset("regression")
    config = small_config(method, **{"output_dir": str(tmp_path)})
    result = quiet_run(with_protocol(config, protocol), data)
    assert all(np.isfinite(v) for v in result.metrics.values())
    saved, _ = load_masks(result.run_dir / "masks.npz")
    for split, mask in result.masks.items():
        assert np.array_equal(saved[split], mask)
        if protocol.kind == "fixed":
            assert not mask[:, data.modality_names.index("audio")].any()
            assert np.array_equal(mask[:, [0, 2]], data.splits[split].present[:, [0, 2]])
        else:
            # MR 0.3 over three batches of 8: the first keeps one modality, the second drops
            # one, the third is complete.
            assert (mask[:8].sum(axis=1) == 1).all()
            assert (mask[8:16].sum(axis=1) == 2).all()
            assert mask[16:].all()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:100]), "unreadable"),
        (
            lambda path: torch.save(
                {f"old.{k}": v for k, v in torch.load(path, weights_only=True).items()}, path
            ),
            "not this model's",
        ),
    ],
    ids=["truncated", "other-layout"],
)
def test_a_cached_stage_that_does_not_fit_is_trained_again(
    damage, reason: str, tmp_path: Path
) -> None:
    data = tiny_dataset("regression")
    config = with_protocol(
        small_config("dicmor", **{"output_dir": str(tmp_path)}), MissingProtocol("random", 0.3)
    )
    quiet_run(config, data)
    (cached,) = (tmp_path / "cache").glob("dicmor-complete-*.pt")
    damage(cached)
    messages: list[str] = []
    again = run_experiment(config, dataset=data, log=messages.append)
    assert set(again.stages) == {"complete", "missing"}
    assert any(f"not reusing {cached}" in m and reason in m for m in messages), messages
    # The stage trained again and its weights replaced the bad entry.
    state = torch.load(cached, weights_only=True)
    assert set(state) == set(again.model.state_dict())
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_the_stage_cache_is_keyed_by_the_code_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = tiny_dataset("regression")
    config = small_config("dicmor", **{"output_dir": str(tmp_path)})
    first = checkpoints.stage_cache_path(config, data, "complete")
    monkeypatch.setattr(provenance, "code_version", lambda: "0.0.0+other")
    assert checkpoints.stage_cache_path(config, data, "complete") != first


@pytest.mark.parametrize(("method", "kept"), [("dicmor", True), ("zero_fill", False)])
def test_a_recovering_run_keeps_its_test_recoveries(
    tmp_path: Path, method: str, kept: bool
) -> None:
    data = tiny_dataset("classification")
    config = with_protocol(
        small_config(method, **{"output_dir": str(tmp_path)}), MissingProtocol("random", 0.3)
    )
    result = quiet_run(config, data)
    path = result.run_dir / "recovered.npz"
    assert path.exists() == kept
    if not kept:
        return
    from dicmor.reporting.gaps import load_recovered

    entries = load_recovered(path)
    mask, present = result.masks["test"], data.splits["test"].present
    for j, m in enumerate(data.modality_names):
        expected = np.flatnonzero(~mask[:, j] & present[:, j])
        np.testing.assert_array_equal(entries[m]["index"], expected)
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["mask"], mask)
