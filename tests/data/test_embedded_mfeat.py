"""The embedded UCI Multiple Features dataset: sizes, stratified seeded splits, views, scaling."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from dicmor.data.dataset import DataError
from dicmor.data.embedded import DEFAULT_VIEWS, EMBEDDED_VIEWS, load_embedded

DIMS = {
    "fourier": 76,
    "profile": 216,
    "karhunen": 64,
    "pixel": 240,
    "zernike": 47,
    "morphological": 6,
}


@pytest.fixture(scope="module")
def mfeat():
    return load_embedded()


def test_default_dataset_has_2000_digits_in_three_splits(mfeat):
    assert mfeat.task == "classification" and mfeat.num_classes == 10
    assert mfeat.modality_names == DEFAULT_VIEWS and len(DEFAULT_VIEWS) == 3
    assert {s: len(x) for s, x in mfeat.splits.items()} == {
        "train": 1300,
        "valid": 300,
        "test": 400,
    }
    ids = np.concatenate([x.ids for x in mfeat.splits.values()])
    assert sorted(ids) == sorted(f"mfeat-{row}" for row in range(2000))
    for view in DEFAULT_VIEWS:
        assert mfeat.splits["test"].modalities[view].shape == (400, 1, DIMS[view])
    assert all(x.present.all() for x in mfeat.splits.values())


def test_splits_are_stratified(mfeat):
    for split in mfeat.splits.values():
        counts = np.bincount(split.labels, minlength=10)
        assert (counts == len(split) // 10).all()


def test_the_split_is_seeded(mfeat):
    again = load_embedded(seed=0)
    other = load_embedded(seed=1)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(again.splits[s].ids, mfeat.splits[s].ids)
        np.testing.assert_array_equal(
            again.splits[s].modalities["fourier"], mfeat.splits[s].modalities["fourier"]
        )
    assert set(other.splits["test"].ids) != set(mfeat.splits["test"].ids)


def test_a_subset_of_views_keeps_the_given_order():
    dataset = load_embedded(views=["pixel", "fourier"], valid_fraction=0.1, test_fraction=0.1)
    assert dataset.modality_names == ("pixel", "fourier")
    assert dataset.feature_dims == {"pixel": 240, "fourier": 76}
    assert len(dataset.splits["test"]) == 200
    assert set(EMBEDDED_VIEWS) == set(DIMS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"views": ("fourier", "colour")}, r"unknown views \['colour'\]"),
        ({"views": ("fourier",)}, "choose at least two views"),
        ({"views": ("fourier", "fourier")}, "views repeat"),
        ({"test_fraction": 0.9}, "must be positive with a sum below 1"),
        ({"name": "iris"}, "unknown embedded dataset"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(DataError, match=message):
        load_embedded(**options)


def test_standardisation_uses_the_train_split_only(mfeat):
    raw = load_embedded(standardize=False)
    assert raw.notes == [] and mfeat.notes
    for view in DEFAULT_VIEWS:
        train = raw.splits["train"].modalities[view].astype(np.float64)
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1
        for s in ("train", "test"):
            expected = (raw.splits[s].modalities[view] - mean) / std
            np.testing.assert_allclose(mfeat.splits[s].modalities[view], expected, atol=1e-4)
    train = mfeat.splits["train"].modalities["morphological"]
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-4)
    assert np.abs(mfeat.splits["test"].modalities["fourier"].mean(axis=0)).max() > 1e-3


def test_every_default_view_alone_is_clearly_worse_than_all_together(mfeat):
    train, test = mfeat.splits["train"], mfeat.splits["test"]

    def accuracy(views):
        def features(split):
            return np.concatenate([split.modalities[v][:, 0] for v in views], axis=1)

        # One BLAS thread: these small fits slow down tenfold when threads oversubscribe the CPU.
        with threadpool_limits(limits=1):
            model = LogisticRegression(max_iter=5000).fit(features(train), train.labels)
        return model.score(features(test), test.labels)

    joint = accuracy(DEFAULT_VIEWS)
    assert joint == pytest.approx(0.8775)
    for view in DEFAULT_VIEWS:
        assert accuracy([view]) < joint - 0.05
