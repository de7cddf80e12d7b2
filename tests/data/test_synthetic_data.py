"""Synthetic generators: the exact MMSA layout and learnable, seeded datasets."""

from __future__ import annotations

import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits

from dicmor.data.synthetic import (
    make_classification_dataset,
    make_mmsa_dict,
    make_regression_dataset,
)


def test_mmsa_dict_has_the_layout_of_the_real_files():
    content = make_mmsa_dict(7, 3, 4, seed=2)
    assert list(content) == ["train", "valid", "test"]
    train = content["train"]
    assert train["text"].shape == (7, 50, 768)
    assert train["audio"].shape == (7, 50, 5) and train["vision"].shape == (7, 50, 20)
    assert train["text_bert"].shape == (7, 3, 50)
    assert train["regression_labels"].shape == (7,)
    assert {"classification_labels", "id", "raw_text", "annotations"} <= set(train)
    assert "audio_lengths" not in train
    assert all(re.fullmatch(r"vid\d+\$_\$\d+", i) for i in train["id"])
    assert all(isinstance(t, str) and t for t in train["raw_text"])
    assert np.isneginf(train["audio"]).any()
    tokens, mask, segments = train["text_bert"].transpose(1, 0, 2)
    lengths = mask.sum(axis=1).astype(int)
    assert (tokens[:, 0] == 101).all() and (tokens[np.arange(7), lengths - 1] == 102).all()
    assert (segments == 0).all()
    for m in ("text", "audio", "vision"):
        for i, length in enumerate(lengths):
            assert (train[m][i, length:] == 0).all()
            assert (train[m][i, :length] != 0).any(axis=-1).all()
    labels = np.concatenate([p["regression_labels"] for p in content.values()])
    assert labels.min() >= -3 and labels.max() <= 3 and (labels == 0).any()


def test_unaligned_mmsa_dict_has_lengths_and_distinct_sequence_lengths():
    train = make_mmsa_dict(6, 2, 2, seq_len=8, aligned=False)["train"]
    assert [train[m].shape[1] for m in ("text", "audio", "vision")] == [8, 16, 12]
    for m in ("audio", "vision"):
        lengths = train[f"{m}_lengths"]
        assert len(lengths) == 6
        for i, length in enumerate(lengths):
            assert (train[m][i, length:] == 0).all() and (train[m][i, length - 1] != 0).any()


def test_generators_are_seeded():
    a, b = make_mmsa_dict(3, 2, 2, seq_len=5, seed=4), make_mmsa_dict(3, 2, 2, seq_len=5, seed=4)
    np.testing.assert_array_equal(a["valid"]["text"], b["valid"]["text"])
    c = make_mmsa_dict(3, 2, 2, seq_len=5, seed=5)
    assert not np.array_equal(a["valid"]["text"], c["valid"]["text"])
    x, y = make_classification_dataset(seed=1), make_classification_dataset(seed=1)
    np.testing.assert_array_equal(
        x.splits["test"].modalities["audio"], y.splits["test"].modalities["audio"]
    )


def _time_mean(split, modalities):
    return np.concatenate([split.modalities[m].mean(axis=1) for m in modalities], axis=1)


def _accuracy(dataset, modalities):
    train, test = dataset.splits["train"], dataset.splits["test"]
    # One BLAS thread: small fits slow down tenfold when threads oversubscribe the CPU.
    with threadpool_limits(limits=1):
        model = LogisticRegression(max_iter=1000).fit(_time_mean(train, modalities), train.labels)
    return model.score(_time_mean(test, modalities), test.labels)


def test_each_modality_carries_the_class_and_together_they_carry_more():
    dataset = make_classification_dataset(900, num_classes=3, seed=0)
    assert dataset.task == "classification" and dataset.num_classes == 3
    assert [len(x) for x in dataset.splits.values()] == [540, 180, 180]
    joint = _accuracy(dataset, dataset.modality_names)
    for m in dataset.modality_names:
        single = _accuracy(dataset, [m])
        assert 0.45 < single < joint - 0.05
    noise = make_classification_dataset(900, num_classes=3, seed=0, signal=0.0)
    assert _accuracy(noise, noise.modality_names) < 0.45


def test_regression_modalities_each_predict_the_label():
    dataset = make_regression_dataset(900, modalities={"a": (4, 6), "b": (4, 3)}, seed=0)
    labels = dataset.splits["train"].labels
    assert labels.dtype == np.float32 and labels.min() >= -3 and labels.max() <= 3
    assert 0.03 < np.mean(labels == 0) < 0.2
    train, test = dataset.splits["train"], dataset.splits["test"]

    def r2(modalities):
        model = Ridge().fit(_time_mean(train, modalities), train.labels)
        return model.score(_time_mean(test, modalities), test.labels)

    joint = r2(["a", "b"])
    assert r2(["a"]) > 0.15 and r2(["b"]) > 0.15 and joint > max(r2(["a"]), r2(["b"])) + 0.05


@pytest.mark.parametrize("maker", [make_classification_dataset, make_regression_dataset])
def test_genuinely_missing_entries_are_marked_zeroed_and_never_total(maker):
    dataset = maker(300, missing_rate=0.4, seed=2)
    present = np.concatenate([x.present for x in dataset.splits.values()])
    assert present.any(axis=1).all()
    assert 0.25 < 1 - present.mean() < 0.45
    for split in dataset.splits.values():
        for column, m in enumerate(dataset.modality_names):
            assert (split.modalities[m][~split.present[:, column]] == 0).all()
