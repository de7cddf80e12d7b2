"""The generic npz format: loading, presence masks, vector modalities, round trip, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dicmor.data.dataset import DataError, MultimodalDataset, Split
from dicmor.data.npz import load_npz, save_npz
from dicmor.data.synthetic import make_classification_dataset, make_regression_dataset


def _assert_same(a: MultimodalDataset, b: MultimodalDataset) -> None:
    assert (a.name, a.task, a.num_classes, a.modality_names) == (
        b.name,
        b.task,
        b.num_classes,
        b.modality_names,
    )
    for s in ("train", "valid", "test"):
        x, y = a.splits[s], b.splits[s]
        for m in a.modality_names:
            np.testing.assert_array_equal(x.modalities[m], y.modalities[m])
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.labels.dtype == y.labels.dtype
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.present, y.present)
        assert list(x.extras) == list(y.extras)
        for key in x.extras:
            np.testing.assert_array_equal(x.extras[key], y.extras[key])


def test_round_trip_keeps_classification_data_with_missing_entries(tmp_path):
    dataset = make_classification_dataset(60, num_classes=4, missing_rate=0.3, seed=3)
    assert not dataset.splits["train"].present.all()
    path = save_npz(dataset, tmp_path / "cls.npz")
    _assert_same(load_npz(path), dataset)


def test_round_trip_keeps_regression_data_and_extras(tmp_path):
    dataset = make_regression_dataset(40, seed=1)
    for split in dataset.splits.values():
        split.extras["tokens"] = np.arange(len(split) * 3).reshape(len(split), 3)
    path = save_npz(dataset, tmp_path / "reg", compress=False)
    assert path == tmp_path / "reg.npz" and path.exists()
    _assert_same(load_npz(path), dataset)


def test_num_classes_round_trips_when_the_largest_class_is_absent(tmp_path):
    dataset = make_classification_dataset(30, num_classes=3)
    splits = {}
    for s, split in dataset.splits.items():
        splits[s] = split.subset(np.flatnonzero(split.labels < 2))
    reduced = MultimodalDataset("r", "classification", 3, dataset.modality_names, splits)
    assert load_npz(save_npz(reduced, tmp_path / "r.npz")).num_classes == 3


def test_vector_modalities_become_one_step_sequences(npz_arrays, write_npz):
    dataset = load_npz(write_npz(npz_arrays))
    assert dataset.modality_names == ("seq", "vec")
    assert dataset.seq_lens == {"seq": 4, "vec": 1}
    assert dataset.feature_dims == {"seq": 3, "vec": 5}
    vec = dataset.splits["valid"].modalities["vec"]
    assert vec.dtype == np.float32
    np.testing.assert_allclose(vec[:, 0], npz_arrays["valid/vec"], rtol=1e-6)


def test_integer_labels_give_classification_with_classes_from_every_split(npz_arrays, write_npz):
    npz_arrays["test/label"] = np.array([0, 4, 1])
    dataset = load_npz(write_npz(npz_arrays, "mine.npz"))
    assert dataset.task == "classification" and dataset.num_classes == 5
    assert dataset.name == "mine"
    assert list(dataset.splits["train"].ids) == [f"train-{i}" for i in range(6)]
    npz_arrays["num_classes"] = np.array(7)
    assert load_npz(write_npz(npz_arrays)).num_classes == 7


def test_float_labels_give_regression(npz_arrays, write_npz):
    for s in ("train", "valid", "test"):
        npz_arrays[f"{s}/label"] = np.linspace(-1, 1, len(npz_arrays[f"{s}/label"]))
        npz_arrays[f"{s}/id"] = np.array([f"{s}{i}" for i in range(len(npz_arrays[f"{s}/label"]))])
    dataset = load_npz(write_npz(npz_arrays), name="given")
    assert dataset.task == "regression" and dataset.num_classes is None
    assert dataset.splits["test"].labels.dtype == np.float32
    assert dataset.name == "given"
    assert list(dataset.splits["test"].ids) == ["test0", "test1", "test2"]


def test_absent_entries_are_marked_and_zeroed(npz_arrays, write_npz):
    npz_arrays["train/present/seq"] = np.array([True, False, True, True, False, True])
    npz_arrays["train/seq"][1, 0, 0] = np.nan  # absent entries may hold anything
    dataset = load_npz(write_npz(npz_arrays))
    split = dataset.splits["train"]
    np.testing.assert_array_equal(split.present[:, 0], npz_arrays["train/present/seq"])
    assert split.present[:, 1].all() and dataset.splits["valid"].present.all()
    assert (split.modalities["seq"][[1, 4]] == 0).all()
    np.testing.assert_array_equal(split.modalities["seq"][0], npz_arrays["train/seq"][0])
    assert dataset.notes == []


def test_non_finite_features_are_replaced_and_counted(npz_arrays, write_npz):
    npz_arrays["valid/vec"][0, :2] = [np.inf, np.nan]
    dataset = load_npz(write_npz(npz_arrays))
    assert (dataset.splits["valid"].modalities["vec"][0, 0, :2] == 0).all()
    assert dataset.notes == ["valid/vec: 2 non-finite values replaced by 0"]


def _set(key, value):
    def corrupt(arrays):
        arrays[key] = value(arrays) if callable(value) else value

    return corrupt


def _drop(*keys):
    def corrupt(arrays):
        for key in [k for k in arrays if k.startswith(keys)]:
            del arrays[key]

    return corrupt


def _both(*corruptions):
    def corrupt(arrays):
        for c in corruptions:
            c(arrays)

    return corrupt


_NO_PRESENT = _both(
    _set("test/present/seq", np.array([True, False, True])),
    _set("test/present/vec", np.array([True, False, False])),
)
_EMPTY_VALID = _both(
    _set("valid/seq", np.zeros((0, 4, 3))),
    _set("valid/vec", np.zeros((0, 5))),
    _set("valid/label", np.zeros(0, dtype=np.int64)),
)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_drop("valid/"), r"missing split 'valid'"),
        (_drop("train/label"), r"missing key 'train/label'"),
        (
            _set("train/seq", np.zeros((6, 4, 3, 1))),
            r"train/seq must have shape \(N, T, D\) or \(N, D\)",
        ),
        (_set("valid/vec", np.zeros((2, 5))), r"valid/vec has 2 samples, but valid/label has 3"),
        (_set("test/label", np.array([0.5, np.nan, 1.0])), r"test/label contains NaN or infinite"),
        (_set("test/label", np.array([0.5, np.inf, 1.0])), r"test/label contains NaN or infinite"),
        (
            _set("train/label", np.array([0, 1, -1, 0, 1, 2])),
            r"train/label has negative class labels",
        ),
        (_EMPTY_VALID, r"split 'valid' is empty"),
        (_NO_PRESENT, r"test sample 1 \(id 'test-1'\) has no present modality"),
        (_set("train/present/seq", np.ones(6)), r"train/present/seq must be bool of shape \(6,\)"),
        (_set("train/present/depth", np.ones(6, bool)), r"train/present names unknown modalities"),
        (_drop("test/vec"), r"test has modalities \['seq'\], but train has \['seq', 'vec'\]"),
        (_set("train/present/seq/x", np.zeros(6)), r"unknown key 'train/present/seq/x'"),
        (_set("extra", np.zeros(6)), r"unknown key 'extra'"),
        (_set("num_classes", np.array(2)), r"num_classes is 2, but a label is 2"),
        (_set("valid/label", np.array([0.0, 1.0, 2.0])), r"all splits need labels of one kind"),
        (_set("valid/id", np.array(["a", "b"])), r"valid/id has shape \(2,\), expected \(3,\)"),
        (
            _set("train/seq", lambda a: np.zeros((6, 4, 3), dtype="U1")),
            r"train/seq must be numeric",
        ),
    ],
)
def test_each_malformed_npz_gives_its_own_error(npz_arrays, write_npz, corrupt, message):
    corrupt(npz_arrays)
    path = write_npz(npz_arrays)
    with pytest.raises(DataError, match=message) as caught:
        load_npz(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_object_arrays_are_refused_without_unpickling(npz_arrays, tmp_path):
    npz_arrays["train/id"] = np.array([f"s{i}" for i in range(6)], dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **npz_arrays)
    with pytest.raises(DataError, match="holds pickled objects"):
        load_npz(path)


@pytest.mark.parametrize("keep", [0.6, 0.05])
def test_truncated_npz_names_the_file(npz_arrays, write_npz, keep):
    path = write_npz(npz_arrays)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=re.escape(f"{path}: truncated or corrupt npz file")):
        load_npz(path)


def test_reserved_modality_names_cannot_be_saved(tmp_path):
    dataset = make_classification_dataset(20)
    splits = {
        s: Split(
            {"label": x.modalities["text"], "b": x.modalities["audio"]},
            x.labels,
            x.ids,
            x.present[:, :2],
        )
        for s, x in dataset.splits.items()
    }
    renamed = MultimodalDataset("x", "classification", 3, ("label", "b"), splits)
    with pytest.raises(DataError, match=r"modality names \['label'\] cannot be stored"):
        save_npz(renamed, tmp_path / "x.npz")
