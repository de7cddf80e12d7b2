"""MMSA feature pickles: layout, -inf, unaligned resampling, errors, restricted unpickling."""

from __future__ import annotations

import builtins
import copy
import os
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest

from dicmor.data.dataset import DataError
from dicmor.data.mmsa import load_mmsa, resample_sequences
from dicmor.data.synthetic import make_mmsa_dict


def test_aligned_file_loads_with_its_layout(mmsa_content, write_pickle):
    path = write_pickle(mmsa_content, "aligned_50.pkl")
    dataset = load_mmsa(path)
    assert dataset.name == "aligned_50"
    assert dataset.task == "regression" and dataset.num_classes is None
    assert dataset.modality_names == ("text", "audio", "vision")
    assert dataset.feature_dims == {"text": 768, "audio": 5, "vision": 20}
    assert dataset.seq_lens == {"text": 20, "audio": 20, "vision": 20}
    for s, n in (("train", 12), ("valid", 5), ("test", 6)):
        split, raw = dataset.splits[s], mmsa_content[s]
        assert len(split) == n
        assert split.labels.dtype == np.float32
        np.testing.assert_array_equal(split.labels, raw["regression_labels"])
        assert split.ids.dtype.kind == "U"
        assert list(split.ids) == list(raw["id"])
        assert split.present.all() and split.present.shape == (n, 3)
        assert list(split.extras) == ["text_bert"]
        assert split.extras["text_bert"].dtype == np.float32
        np.testing.assert_array_equal(split.extras["text_bert"], raw["text_bert"])
        np.testing.assert_array_equal(split.modalities["vision"], raw["vision"])
    assert re.fullmatch(r"vid\d+\$_\$\d+", dataset.splits["train"].ids[0])


def test_minus_inf_in_audio_is_replaced_by_zero_and_counted(mmsa_content, write_pickle):
    dataset = load_mmsa(write_pickle(mmsa_content))
    for s in ("train", "valid", "test"):
        raw = mmsa_content[s]["audio"]
        bad = ~np.isfinite(raw)
        assert bad.sum() > 0
        audio = dataset.splits[s].modalities["audio"]
        assert np.isfinite(audio).all()
        assert (audio[bad] == 0).all()
        np.testing.assert_array_equal(audio[~bad], raw[~bad])
        assert f"{s}/audio: {bad.sum()} non-finite values replaced by 0" in dataset.notes
    assert not any("text" in note or "vision" in note for note in dataset.notes)


def test_zero_padding_after_each_length_is_kept(mmsa_content, write_pickle):
    dataset = load_mmsa(write_pickle(mmsa_content))
    lengths = mmsa_content["train"]["text_bert"][:, 1].sum(axis=1).astype(int)
    text = dataset.splits["train"].modalities["text"]
    short = int(np.argmin(lengths))
    assert lengths[short] < 20
    assert (text[short, lengths[short] :] == 0).all()
    assert (text[short, : lengths[short]] != 0).any(axis=1).all()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_loads(mmsa_content, write_pickle, protocol):
    dataset = load_mmsa(write_pickle(mmsa_content, protocol=protocol))
    np.testing.assert_array_equal(
        dataset.splits["test"].modalities["text"], mmsa_content["test"]["text"]
    )


def test_ordered_dicts_are_accepted(mmsa_content, write_pickle):
    content = OrderedDict((s, OrderedDict(part)) for s, part in mmsa_content.items())
    assert len(load_mmsa(write_pickle(content)).splits["valid"]) == 5


def test_resample_sequences_interpolates_the_valid_prefix():
    x = np.zeros((3, 4, 1), dtype=np.float32)
    x[0, :3, 0] = [0, 10, 20]  # length 3, then padding
    x[1, :, 0] = [7, 1, 1, 1]  # length 1
    x[2, :, 0] = [5, 5, 5, 5]  # length 0: nothing valid
    out = resample_sequences(x, np.array([3, 1, 0]), 5)
    assert out.shape == (3, 5, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], [0, 5, 10, 15, 20])
    np.testing.assert_allclose(out[1, :, 0], [7] * 5)
    np.testing.assert_array_equal(out[2], 0)


def test_unaligned_file_is_resampled_to_the_text_length(write_pickle):
    content = make_mmsa_dict(8, 4, 4, seq_len=10, aligned=False, seed=1)
    train = content["train"]
    assert train["audio"].shape[1] == 20 and train["vision"].shape[1] == 15
    dataset = load_mmsa(write_pickle(content, "unaligned_50.pkl"))
    assert dataset.seq_lens == {"text": 10, "audio": 10, "vision": 10}
    assert any("resampled to T=10 (valid prefixes" in note for note in dataset.notes)
    split = dataset.splits["train"]
    for m in ("audio", "vision"):
        raw = np.nan_to_num(train[m], neginf=0.0)
        for i, length in enumerate(train[f"{m}_lengths"]):
            np.testing.assert_allclose(split.modalities[m][i, 0], raw[i, 0], rtol=1e-6)
            np.testing.assert_allclose(split.modalities[m][i, -1], raw[i, length - 1], rtol=1e-6)
    # Text stretches its attention-mask prefix over the common length as well.
    text_lengths = train["text_bert"][:, 1].sum(axis=1).astype(int)
    i = int(np.argmin(text_lengths))
    assert text_lengths[i] < 10
    np.testing.assert_allclose(
        split.modalities["text"][i, -1], train["text"][i, text_lengths[i] - 1]
    )
    assert split.extras["text_bert"].shape == (8, 3, 10)


def test_seq_len_resamples_unaligned_files_to_that_length(write_pickle):
    content = make_mmsa_dict(8, 4, 4, seq_len=10, aligned=False, seed=1)
    dataset = load_mmsa(write_pickle(content), seq_len=7)
    assert set(dataset.seq_lens.values()) == {7}


def test_seq_len_on_an_aligned_file_resamples_full_sequences(mmsa_content, write_pickle):
    dataset = load_mmsa(write_pickle(mmsa_content), seq_len=39)
    assert set(dataset.seq_lens.values()) == {39}
    raw = mmsa_content["train"]["vision"]
    out = dataset.splits["train"].modalities["vision"]
    # Full sequences: the last output step is the last stored (padding) step, for every sample.
    np.testing.assert_array_equal(out[:, -1], raw[:, -1])
    np.testing.assert_allclose(out[:, 0], raw[:, 0])
    assert (
        "all modalities resampled to T=39 (full sequences, linear interpolation)" in dataset.notes
    )


def test_labels_of_ch_sims_range_load_and_label_range_is_enforced(mmsa_content, write_pickle):
    for part in mmsa_content.values():
        part["regression_labels"] = np.clip(part["regression_labels"], -1.0, 1.0)
    path = write_pickle(mmsa_content)
    assert load_mmsa(path).splits["train"].labels.max() <= 1.0
    mmsa_content["valid"]["regression_labels"][0] = 1.4
    with pytest.raises(
        DataError, match=r"valid/regression_labels has values outside \[-1.0, 1.0\]"
    ):
        load_mmsa(write_pickle(mmsa_content), label_range=(-1.0, 1.0))


def _drop_audio(c):
    del c["train"]["audio"]


def _flat_audio(c):
    c["valid"]["audio"] = c["valid"]["audio"][:, :, 0]


def _short_vision(c):
    c["test"]["vision"] = c["test"]["vision"][:3]


def _nan_label(c):
    c["train"]["regression_labels"][2] = np.nan


def _empty_test(c):
    c["test"] = {k: v[:0] for k, v in c["test"].items()}


def _out_of_range(c):
    c["test"]["regression_labels"][0] = 3.5


def _drop_valid(c):
    del c["valid"]


def _longer_test_audio(c):
    c["test"]["audio"] = np.concatenate([c["test"]["audio"]] * 2, axis=1)


def _bad_text_bert(c):
    c["train"]["text_bert"] = c["train"]["text_bert"][:, :2]


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_drop_audio, r"split 'train' has no key 'audio'"),
        (_flat_audio, r"valid/audio must have shape \(N, T, D\), got \(5, 20\)"),
        (_short_vision, r"test/vision has 3 samples, but test/regression_labels has 6"),
        (_nan_label, r"train/regression_labels contains NaN or infinite values"),
        (_empty_test, r"split 'test' is empty"),
        (_out_of_range, r"test/regression_labels has values outside \[-3.0, 3.0\]"),
        (_drop_valid, r"missing splits \['valid'\]"),
        (_longer_test_audio, r"test/audio has \(T, D\) = \(40, 5\), but train/audio has \(20, 5\)"),
        (_bad_text_bert, r"train/text_bert must have shape \(12, 3, 20\)"),
    ],
)
def test_each_malformed_file_gives_its_own_error(mmsa_content, write_pickle, corrupt, message):
    content = copy.deepcopy(mmsa_content)
    corrupt(content)
    path = write_pickle(content)
    with pytest.raises(DataError, match=message) as caught:
        load_mmsa(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_a_dict_of_splits_is_refused(write_pickle):
    with pytest.raises(DataError, match="expected a dict of splits, got list"):
        load_mmsa(write_pickle([1, 2, 3]))


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_file_names_the_file(mmsa_content, write_pickle, keep):
    path = write_pickle(mmsa_content)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataError, match=re.escape(f"{path}: truncated or corrupt pickle")):
        load_mmsa(path)


def test_garbage_file_names_the_file(tmp_path):
    path = tmp_path / "noise.pkl"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_mmsa(path)


class _Payload:
    """Runs ``function(*arguments)`` when unpickled."""

    def __init__(self, function, arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def test_the_malicious_payload_runs_under_plain_pickle(tmp_path):
    marker = tmp_path / "plain_pickle_ran"
    pickle.loads(pickle.dumps(_Payload(os.system, (f"touch {marker}",))))
    assert marker.exists()


@pytest.mark.parametrize(
    ("function", "name"),
    [(os.system, "system"), (builtins.eval, "eval"), (builtins.exec, "exec")],
)
def test_malicious_pickle_is_refused_and_nothing_runs(
    mmsa_content, write_pickle, tmp_path, function, name
):
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    if function is not os.system:
        command = f"__import__('os').system('touch {marker}')"
    mmsa_content["train"]["annotations"] = _Payload(function, (command,))
    path = write_pickle(mmsa_content)
    with pytest.raises(DataError) as caught:
        load_mmsa(path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: refused to unpickle '\w+\.{name}' "
        r"\(only containers and numpy arrays are allowed\)",
        str(caught.value),
    )
    assert not marker.exists()


def test_getattr_gadget_is_refused(write_pickle):
    path = write_pickle({"train": {"x": _Payload(builtins.getattr, (1, "real"))}})
    with pytest.raises(DataError, match=r"refused to unpickle 'builtins.getattr'"):
        load_mmsa(path)
