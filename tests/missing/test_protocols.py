import numpy as np
import pytest

from dicmor.missing import (
    MaskFileError,
    MissingProtocol,
    MissingProtocolError,
    fixed_mask,
    legacy_batch_mask,
    load_masks,
    make_masks,
    missing_rate,
    random_mask,
    save_masks,
)

NAMES = ("text", "audio", "vision")


def complete(n: int, m: int = 3) -> np.ndarray:
    return np.ones((n, m), dtype=bool)


# ---------------------------------------------------------------- random protocol


@pytest.mark.parametrize("n", [1, 7, 100, 1001])
@pytest.mark.parametrize("m", [2, 3, 5])
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.25, 0.3, 0.5])
def test_random_mask_drops_exactly_the_rounded_count(n: int, m: int, rate: float) -> None:
    available = random_mask(complete(n, m), rate, np.random.default_rng(0))
    assert available.shape == (n, m)
    assert available.dtype == bool
    assert np.count_nonzero(~available) == round(rate * n * m)
    assert missing_rate(available) == round(rate * n * m) / (n * m)
    assert available.any(axis=1).all()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_random_mask_at_the_maximum_rate_keeps_exactly_one_per_sample(m: int) -> None:
    available = random_mask(complete(500, m), (m - 1) / m, np.random.default_rng(1))
    assert (available.sum(axis=1) == 1).all()


def test_random_mask_is_exact_on_a_large_split() -> None:
    n = 20000
    available = random_mask(complete(n), 0.3, np.random.default_rng(2))
    assert np.count_nonzero(~available) == 18000
    assert available.any(axis=1).all()


def test_random_mask_drops_every_modality_about_equally() -> None:
    # Reserving a kept modality per sample must not favour one column: with 30000 samples at
    # MR 0.3 each column's missing fraction has a standard deviation near 0.003.
    available = random_mask(complete(30000), 0.3, np.random.default_rng(3))
    per_column = 1.0 - available.mean(axis=0)
    np.testing.assert_allclose(per_column, 0.3, atol=0.02)


def test_random_mask_counts_genuinely_absent_entries() -> None:
    rng = np.random.default_rng(4)
    present = complete(200)
    present[:40, 2] = False  # 40 of 600 entries absent from the dataset
    available = random_mask(present, 0.3, rng)
    assert not (available & ~present).any()
    assert np.count_nonzero(~available) == 180
    assert available.any(axis=1).all()


def test_random_mask_drops_nothing_when_the_dataset_already_lacks_enough() -> None:
    present = complete(10)
    present[:, 0] = False  # MR already 1/3
    available = random_mask(present, 0.2, np.random.default_rng(5))
    np.testing.assert_array_equal(available, present)
    assert missing_rate(available) == pytest.approx(1 / 3)


def test_random_mask_rejects_an_infeasible_rate() -> None:
    with pytest.raises(MissingProtocolError) as info:
        random_mask(complete(10), 0.7, np.random.default_rng(0))
    assert str(info.value) == (
        "missing rate 0.70 is infeasible with 3 modalities: at most 0.667 can be missing while "
        "every sample keeps one modality"
    )


def test_random_mask_rejects_samples_with_nothing_present() -> None:
    present = complete(5)
    present[[1, 3]] = False
    with pytest.raises(MissingProtocolError, match="2 samples have no modality present"):
        random_mask(present, 0.1, np.random.default_rng(0))


def test_random_mask_rejects_a_non_bool_mask() -> None:
    with pytest.raises(MissingProtocolError, match="2-D bool"):
        random_mask(np.ones((4, 3)), 0.1, np.random.default_rng(0))


# ---------------------------------------------------------------- fixed protocol


def test_fixed_mask_keeps_the_named_modalities() -> None:
    present = complete(6)
    present[0, 1] = False
    available = fixed_mask(present, NAMES, ("text", "audio"))
    expected = np.tile([True, True, False], (6, 1))
    expected[0, 1] = False
    np.testing.assert_array_equal(available, expected)


def test_fixed_mask_rejects_unknown_names() -> None:
    with pytest.raises(MissingProtocolError, match=r"unknown modalities \['video'\]"):
        fixed_mask(complete(3), NAMES, ("text", "video"))


def test_fixed_mask_rejects_samples_left_with_nothing() -> None:
    present = complete(5)
    present[[0, 2], 1] = False
    with pytest.raises(MissingProtocolError, match="2 samples have none of these modalities"):
        fixed_mask(present, NAMES, ("audio",))


# ---------------------------------------------------------------- legacy batch schedule

# Batches (out of 100) that keep one and two modalities for MR = 0.1 … 0.7: 100·two, 100·one.
LEGACY_KEEP_ONE = {0.1: 10, 0.2: 20, 0.3: 30, 0.4: 50, 0.5: 70, 0.6: 90, 0.7: 100}
LEGACY_KEEP_TWO = {0.1: 10, 0.2: 20, 0.3: 30, 0.4: 20, 0.5: 10, 0.6: 0, 0.7: 0}


@pytest.mark.parametrize("rate", sorted(LEGACY_KEEP_ONE))
def test_legacy_schedule_fractions(rate: float) -> None:
    batch_size, num_batches = 4, 100
    available = legacy_batch_mask(
        complete(batch_size * num_batches), rate, batch_size, np.random.default_rng(6)
    )
    batches = available.reshape(num_batches, batch_size, 3)
    # One draw per batch: every sample of a batch shares the batch's mask.
    assert (batches == batches[:, :1]).all()
    kept = batches[:, 0].sum(axis=1)
    assert (kept[: LEGACY_KEEP_ONE[rate]] == 1).all()
    assert (kept == 1).sum() == LEGACY_KEEP_ONE[rate]
    assert (kept == 2).sum() == LEGACY_KEEP_TWO[rate]
    assert (kept == 3).sum() == 100 - LEGACY_KEEP_ONE[rate] - LEGACY_KEEP_TWO[rate]
    # 2·two + one = 3·MR until the cap of 2/3 at MR = 0.7.
    assert missing_rate(available) == pytest.approx(min(rate, 2 / 3))


def test_legacy_schedule_counts_a_partial_last_batch() -> None:
    # 11 batches of 4 (the last holds one sample). MR 0.1: batches b < 0.1·11 = 1.1 (b = 0, 1)
    # keep one modality, b < 0.2·11 = 2.2 (b = 2) keep two, the rest are complete.
    available = legacy_batch_mask(complete(41), 0.1, 4, np.random.default_rng(7))
    kept = available.sum(axis=1)
    assert (kept[:8] == 1).all()
    assert (kept[8:12] == 2).all()
    assert (kept[12:] == 3).all()


def test_legacy_schedule_draws_modalities_uniformly_per_batch() -> None:
    # MR 0.7 keeps one modality in every batch; over 3000 batches each is kept about 1/3 of
    # the time (standard deviation near 0.009).
    available = legacy_batch_mask(complete(3000), 0.7, 1, np.random.default_rng(8))
    np.testing.assert_allclose(available.mean(axis=0), 1 / 3, atol=0.04)
    dropped = legacy_batch_mask(complete(3000), 0.4, 1, np.random.default_rng(9))[1500:2000]
    assert (dropped.sum(axis=1) == 2).all()
    np.testing.assert_allclose((~dropped).mean(axis=0), 1 / 3, atol=0.08)


def test_legacy_rate_zero_is_complete() -> None:
    available = legacy_batch_mask(complete(100), 0.0, 8, np.random.default_rng(10))
    assert available.all()


def test_legacy_schedule_keeps_absent_entries_absent_and_every_sample_fed() -> None:
    present = complete(60)
    present[::2, :2] = False  # even samples have only vision
    available = legacy_batch_mask(present, 0.7, 4, np.random.default_rng(11))
    assert not (available & ~present).any()
    assert (available.sum(axis=1) == 1).all()
    assert available[::2, 2].all()


def test_legacy_rejects_other_rates() -> None:
    with pytest.raises(MissingProtocolError, match="legacy-batch missing rate must be one of"):
        legacy_batch_mask(complete(8), 0.25, 4, np.random.default_rng(0))


# ---------------------------------------------------------------- protocol object


@pytest.mark.parametrize(
    ("text", "expected", "label"),
    [
        ("none", MissingProtocol(), "none"),
        ("random:0.3", MissingProtocol("random", 0.3), "random MR=0.30"),
        (
            "fixed:text+audio",
            MissingProtocol("fixed", keep=("text", "audio")),
            "fixed {text,audio}",
        ),
        ("legacy-batch:0.5", MissingProtocol("legacy-batch", 0.5), "legacy-batch MR=0.50"),
        (
            "legacy-batch:0.2:16",
            MissingProtocol("legacy-batch", 0.2, batch_size=16),
            "legacy-batch MR=0.20",
        ),
    ],
)
def test_from_string(text: str, expected: MissingProtocol, label: str) -> None:
    protocol = MissingProtocol.from_string(text)
    assert protocol == expected
    assert str(protocol) == label
    assert MissingProtocol.from_string(protocol.to_string()) == protocol


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("random", "expected random:RATE"),
        ("random:abc", "rate 'abc' is not a number"),
        ("random:1.0", r"rate must lie in \[0, 1\)"),
        ("random:-0.1", r"rate must lie in \[0, 1\)"),
        ("fixed:", "expected fixed:NAME"),
        ("fixed:text+", "expected fixed:NAME"),
        ("fixed:text+text", "lists \\['text'\\] more than once"),
        ("legacy-batch:0.25", "legacy-batch missing rate must be one of"),
        ("legacy-batch:0.5:x", "batch size 'x' is not an integer"),
        ("none:0.2", "takes no argument"),
        ("dropout:0.1", "unknown kind 'dropout'"),
    ],
)
def test_from_string_errors(text: str, message: str) -> None:
    with pytest.raises(MissingProtocolError, match=message):
        MissingProtocol.from_string(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "fixed"}, "needs keep"),
        ({"kind": "random", "rate": 0.1, "keep": ("text",)}, "keep is only used by kind 'fixed'"),
        ({"kind": "none", "rate": 0.2}, "rate is not used by kind 'none'"),
        ({"kind": "sometimes"}, "kind must be one of"),
        ({"kind": "legacy-batch", "rate": 0.3, "batch_size": 0}, "batch_size must lie in"),
        ({"kind": "legacy-batch", "rate": 0.3, "batch_size": 10**12}, "batch_size must lie in"),
        ({"kind": "random", "rate": "0.3"}, "rate must be a number"),
    ],
)
def test_protocol_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(MissingProtocolError, match=message):
        MissingProtocol(**kwargs)


def test_protocol_normalises_config_values() -> None:
    assert MissingProtocol("fixed", keep=["text"]).keep == ("text",)
    assert MissingProtocol("legacy-batch", 0.1 + 0.2).rate == 0.3


# ---------------------------------------------------------------- per-split masks


def presents() -> dict[str, np.ndarray]:
    return {"train": complete(300), "valid": complete(50), "test": complete(80)}


def test_make_masks_is_deterministic_per_seed_and_split() -> None:
    protocol = MissingProtocol("random", 0.3)
    first = make_masks(protocol, presents(), NAMES, seed=1111)
    again = make_masks(protocol, presents(), NAMES, seed=1111)
    other = make_masks(protocol, presents(), NAMES, seed=1112)
    for split in first:
        np.testing.assert_array_equal(first[split], again[split])
        assert not np.array_equal(first[split], other[split])
        assert np.count_nonzero(~first[split]) == round(0.3 * first[split].size)
    # Splits of equal size still get different masks: each has its own generator.
    same_size = make_masks(protocol, {"a": complete(300), "b": complete(300)}, NAMES, seed=0)
    assert not np.array_equal(same_size["a"], same_size["b"])


def test_make_masks_none_returns_the_presence_masks() -> None:
    given = presents()
    given["test"][:5, 1] = False
    masks = make_masks(MissingProtocol(), given, NAMES, seed=0)
    for split, present in given.items():
        np.testing.assert_array_equal(masks[split], present)
        assert masks[split] is not present


def test_make_masks_fixed_and_legacy() -> None:
    fixed = make_masks(MissingProtocol("fixed", keep=("vision",)), presents(), NAMES, seed=0)
    assert all((mask == [False, False, True]).all() for mask in fixed.values())
    legacy = make_masks(MissingProtocol("legacy-batch", 0.7, batch_size=10), presents(), NAMES, 0)
    assert all((mask.sum(axis=1) == 1).all() for mask in legacy.values())


def test_make_masks_names_the_split_in_errors() -> None:
    with pytest.raises(
        MissingProtocolError, match=r"split 'train': missing rate 0\.70 is infeasible"
    ):
        make_masks(MissingProtocol("random", 0.7), presents(), NAMES, seed=0)
    with pytest.raises(MissingProtocolError, match="3 columns but 2 modality names"):
        make_masks(MissingProtocol(), presents(), NAMES[:2], seed=0)


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path) -> None:
    protocol = MissingProtocol("random", 0.5)
    masks = make_masks(protocol, presents(), NAMES, seed=3)
    path = tmp_path / "masks"  # no suffix: the file must be written at exactly this path
    save_masks(path, masks, NAMES, protocol, seed=3)
    loaded, names = load_masks(path)
    assert names == NAMES
    assert loaded.keys() == masks.keys()
    for split in masks:
        np.testing.assert_array_equal(loaded[split], masks[split])
    with np.load(path) as archive:
        assert str(archive["protocol"]) == "random:0.5"
        assert int(archive["seed"]) == 3


def test_load_masks_errors(tmp_path) -> None:
    with pytest.raises(MaskFileError, match="mask file not found"):
        load_masks(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(MaskFileError, match=r"not a mask \.npz file"):
        load_masks(text)
    names = np.asarray(NAMES)
    wrong_dtype = tmp_path / "float.npz"
    np.savez(wrong_dtype, train=np.ones((4, 3)), modality_names=names, protocol="none", seed=0)
    with pytest.raises(MaskFileError, match=r"float\.npz: key 'train' must be a bool array"):
        load_masks(wrong_dtype)
    no_names = tmp_path / "nonames.npz"
    np.savez(no_names, train=complete(4), protocol="none", seed=0)
    with pytest.raises(MaskFileError, match=r"nonames\.npz: missing key 'modality_names'"):
        load_masks(no_names)
    columns = tmp_path / "columns.npz"
    np.savez(columns, train=complete(4, 2), modality_names=names, protocol="none", seed=0)
    with pytest.raises(MaskFileError, match=r"key 'train' must be a bool array \(N, 3\)"):
        load_masks(columns)


def test_save_masks_rejects_a_clashing_split_name(tmp_path) -> None:
    with pytest.raises(MaskFileError, match="clashes with a metadata key"):
        save_masks(tmp_path / "m.npz", {"seed": complete(3)}, NAMES, MissingProtocol(), seed=0)
