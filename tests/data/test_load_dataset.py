"""load_dataset(): one entry point that dispatches on the source."""

from __future__ import annotations

import pytest

from dicmor.data import DataError, MultimodalDataset, load_dataset, save_npz
from dicmor.data.synthetic import make_regression_dataset, write_mmsa_pickle


@pytest.mark.parametrize("source", ["mfeat", "embedded"])
def test_embedded_names_load_the_shipped_digits(source):
    dataset = load_dataset(source, views=("fourier", "pixel"), seed=2)
    assert dataset.name == "mfeat" and dataset.modality_names == ("fourier", "pixel")


def test_pickles_go_to_the_mmsa_loader_with_options(tmp_path):
    path = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=4, n_valid=2, n_test=2, seq_len=6)
    dataset = load_dataset(str(path), seq_len=3)
    assert isinstance(dataset, MultimodalDataset)
    assert dataset.source == str(path) and dataset.seq_lens["audio"] == 3


def test_npz_files_go_to_the_npz_loader(tmp_path):
    path = save_npz(make_regression_dataset(20), tmp_path / "own.npz")
    assert load_dataset(path).name == "synthetic-regression"


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"^nowhere/x\.pkl: no such file$"):
        load_dataset("nowhere/x.pkl")
    table = tmp_path / "table.csv"
    table.write_text("a,b\n")
    with pytest.raises(DataError, match=r"table\.csv: unknown format '\.csv'"):
        load_dataset(table)
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)
