"""Prediction on new files: no labels, absent values never read, same numbers as evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dicmor import inference
from dicmor.cli import main
from dicmor.data.batches import Batches
from dicmor.data.dataset import DataError
from dicmor.evaluation.evaluate import evaluate
from dicmor.experiments.run import run_experiment
from dicmor.inference import _traced, predict, read_inputs
from dicmor.missing.protocols import random_mask
from dicmor.registry import model_names
from dicmor.traced import ATOL, RTOL, traceable
from dicmor.training.checkpoints import load_checkpoint
from tests.conftest import small_config, tiny_dataset


@pytest.fixture(scope="module", params=model_names())
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp(request.param)
    config = small_config(request.param, **{"train.max_epochs": 1, "output_dir": str(out)})
    data = tiny_dataset("regression")
    result = run_experiment(config, dataset=data, log=lambda _: None)
    return result, data


def has_features(model, data) -> bool:
    """Whether ``model``'s output carries the fused ``features`` (the MulT family does)."""
    split = data.splits["test"]
    batch = next(
        iter(Batches(split, data.modality_names, split.present, 8, batching=model.batching()))
    )
    model.eval()
    with torch.no_grad():
        return "features" in model(batch)


def test_predict_matches_evaluation_and_ignores_absent_values(trained) -> None:
    result, data = trained
    split = data.splits["test"]
    mask = random_mask(split.present, 0.4, np.random.default_rng(3))
    _, expected = evaluate(result.model, split, data.modality_names, mask)
    inputs, present = {}, {}
    for j, m in enumerate(data.modality_names):
        x = split.modalities[m].copy()
        x[~mask[:, j]] = np.nan  # absent values are never read, so NaN is harmless
        inputs[m] = x
        present[m] = mask[:, j]
    gives_features = has_features(result.model, data)
    if not gives_features:
        with pytest.raises(DataError, match="gives no features"):
            predict(result.model, inputs, present, return_features=True)
    out = predict(result.model, inputs, present, ids=split.ids, return_features=gives_features)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)
    assert out.labels is None and (out.available == mask).all()
    if not gives_features:
        assert out.features is None
        return
    assert set(out.features) == set(data.modality_names)
    for j, m in enumerate(data.modality_names):
        missing = out.features[m][~mask[:, j]]
        if result.model.name.startswith("zero_fill"):
            assert not missing.any()
        else:
            assert np.abs(missing).sum() > 0  # recovered or mean-filled, not zero-filled


def test_a_modality_left_out_of_the_file_is_absent_everywhere(trained) -> None:
    result, data = trained
    split = data.splits["test"]
    inputs = {m: split.modalities[m] for m in data.modality_names[:2]}
    present = {m: split.present[:, j] for j, m in enumerate(data.modality_names[:2])}
    # With the ids, as a method that groups samples by id (gcnet) sees them in evaluation.
    out = predict(result.model, inputs, present, ids=split.ids)
    mask = split.present.copy()
    mask[:, 2] = False
    assert (out.available == mask).all()
    _, expected = evaluate(result.model, split, data.modality_names, mask)
    np.testing.assert_allclose(out.scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(smell=d["text"]), "unknown modalities"),
        (lambda d: d.update(text=d["text"][:, :3]), "text has shape"),
        (lambda d: d.clear(), "no modality given"),
    ],
)
def test_bad_inputs_are_named(trained, change, message: str) -> None:
    result, data = trained
    inputs = {m: x.copy() for m, x in data.splits["test"].modalities.items()}
    change(inputs)
    with pytest.raises(DataError, match=message):
        predict(result.model, inputs, source="new.npz")


def test_sample_without_any_modality_is_an_error(trained) -> None:
    result, data = trained
    inputs = dict(data.splits["test"].modalities)
    present = {m: np.arange(len(inputs[m])) != 0 for m in inputs}
    with pytest.raises(DataError, match="1 samples have no present modality"):
        predict(result.model, inputs, present)


def test_predict_command_writes_csv_and_recovered_features(trained, tmp_path: Path) -> None:
    result, data = trained
    split = data.splits["test"]
    path = tmp_path / "new.npz"
    present = {
        f"present/{m}": split.present[:, j] & (np.arange(len(split)) % 3 != j)
        for j, m in enumerate(data.modality_names)
    }
    np.savez(path, id=split.ids, **split.modalities, **present)
    out, rec = tmp_path / "p.csv", tmp_path / "rec.npz"
    command = ["predict", str(result.run_dir), str(path), "--out", str(out)]
    gives_features = has_features(result.model, data)
    if not gives_features:
        assert main([*command, "--recovered", str(rec)]) == 2
        assert not out.exists() and not rec.exists()
    code = main(command + (["--recovered", str(rec)] if gives_features else []))
    assert code == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,score,has_text,has_audio,has_vision"
    assert len(lines) == len(split) + 1 and lines[1].startswith(f"{split.ids[0]},")
    model, _ = load_checkpoint(result.run_dir)
    expected = predict(model, **read_inputs(path))
    first = float(lines[1].split(",")[1])
    assert first == pytest.approx(float(expected.scores[0]), abs=1e-5)
    if not gives_features:
        return
    with np.load(rec) as features:
        assert features["text"].shape[0] == len(split)


def test_fast_predict_gives_the_plain_forwards_predictions(trained, caplog) -> None:
    """Traced graphs, one per missing pattern and batch size, for every method they apply to;
    the same predictions and features within the stated tolerance, in the input order."""
    result, data = trained
    model = result.model
    split = data.splits["test"]
    mask = random_mask(split.present, 0.4, np.random.default_rng(5))
    inputs = {m: split.modalities[m] for m in data.modality_names}
    present = {m: mask[:, j] for j, m in enumerate(data.modality_names)}
    features = has_features(model, data)
    plain = predict(model, inputs, present, ids=split.ids, batch_size=8, return_features=features)
    with caplog.at_level("WARNING", logger="dicmor.traced"):
        fast = predict(
            model, inputs, present, ids=split.ids, batch_size=8, return_features=features, fast=True
        )
    np.testing.assert_allclose(fast.scores, plain.scores, rtol=RTOL, atol=ATOL)
    assert (fast.ids == plain.ids).all() and (fast.available == mask).all()
    for m in data.modality_names if features else ():
        np.testing.assert_allclose(fast.features[m], plain.features[m], rtol=RTOL, atol=ATOL)
    traced = _traced(model)
    if not traceable(model):
        assert traced.builds == 0  # batches by context (GCNet's videos): the plain forward
        return
    # Every kind of batch traced and kept: none fell back to the plain forward.
    assert traced.builds == len(traced._graphs) > 0 and not traced.fallbacks, traced.fallbacks
    assert not caplog.records
    # Built once and reused: a second call of known kinds of batch builds nothing.
    builds = traced.builds
    again = predict(model, inputs, present, ids=split.ids, batch_size=8, fast=True)
    np.testing.assert_array_equal(again.scores, fast.scores)
    assert traced.builds == builds


def test_fast_predict_answers_one_clip_at_a_time(trained) -> None:
    """The deployment case: clips arrive one by one with audio missing; one graph serves them
    all, and its predictions follow each clip's values (nothing taken for a constant)."""
    result, data = trained
    model = result.model
    if not traceable(model):
        return  # covered above: such methods run the plain forward
    split = data.splits["test"]
    names = data.modality_names
    present = {m: np.array([m != "audio"]) for m in names}
    before = _traced(model).builds
    for i in range(4):
        clip = {m: split.modalities[m][i : i + 1] for m in names if m != "audio"}
        fast = predict(model, clip, present, batch_size=1, fast=True)
        plain = predict(model, clip, present, batch_size=1)
        np.testing.assert_allclose(fast.scores, plain.scores, rtol=RTOL, atol=ATOL)
    assert _traced(model).builds == before + 1


def test_predict_command_with_fast_writes_the_same_csv(
    trained, tmp_path: Path, monkeypatch
) -> None:
    result, data = trained
    # The command's model is its own, loaded from the run: seen through the traced forwards
    # that predict asks for.
    asked = []
    monkeypatch.setattr(inference, "_traced", lambda m: asked.append(m) or _traced(m))
    split = data.splits["test"]
    path = tmp_path / "new.npz"
    present = {
        f"present/{m}": np.arange(len(split)) % 3 != j for j, m in enumerate(data.modality_names)
    }
    np.savez(path, id=split.ids, **split.modalities, **present)
    plain, fast = tmp_path / "plain.csv", tmp_path / "fast.csv"
    command = ["predict", str(result.run_dir), str(path)]
    assert main([*command, "--out", str(plain)]) == 0
    assert not asked
    assert main([*command, "--out", str(fast), "--fast"]) == 0
    assert len(asked) == int(traceable(result.model))
    rows = [line.split(",") for line in plain.read_text().splitlines()]
    fast_rows = [line.split(",") for line in fast.read_text().splitlines()]
    assert [r[:1] + r[2:] for r in fast_rows] == [r[:1] + r[2:] for r in rows]  # ids, flags
    np.testing.assert_allclose(
        [float(r[1]) for r in fast_rows[1:]], [float(r[1]) for r in rows[1:]], atol=2e-5
    )
