"""describe(): the summary names the facts a user checks before training."""

from __future__ import annotations

import numpy as np

from dicmor.data.inspect import describe
from dicmor.data.mmsa import load_mmsa
from dicmor.data.synthetic import make_classification_dataset


def test_regression_summary(mmsa_content, write_pickle):
    path = write_pickle(mmsa_content, "mosi.pkl")
    dataset = load_mmsa(path)
    text = describe(dataset)
    labels = dataset.splits["train"].labels
    assert "dataset: mosi" in text and f"source: {path}" in text
    assert "task: regression" in text
    assert "modalities: text (T=20, D=768), audio (T=20, D=5), vision (T=20, D=20)" in text
    assert "samples: train 12, valid 5, test 6" in text
    assert f"train: mean {labels.mean():.3f}, std {labels.std():.3f}" in text
    assert f"zero {(labels == 0).mean():.1%}" in text
    assert "genuinely missing entries:\n  none" in text
    bad = int((~np.isfinite(mmsa_content["valid"]["audio"])).sum())
    assert f"  valid/audio: {bad} non-finite values replaced by 0" in text


def test_classification_summary_counts_classes_and_missing_entries():
    dataset = make_classification_dataset(50, num_classes=3, missing_rate=0.3, seed=1)
    text = describe(dataset)
    assert "task: classification, 3 classes" in text
    counts = [int((dataset.splits["test"].labels == c).sum()) for c in range(3)]
    assert f"  test: 0: {counts[0]}, 1: {counts[1]}, 2: {counts[2]}" in text
    absent = int((~dataset.splits["train"].present[:, 1]).sum())
    assert absent > 0
    assert f"audio {absent} ({absent / 30:.1%})" in text
