import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import build_model_for

from dicmor.data.batches import Batches
from dicmor.reporting.gaps import (
    GAP_KEYS,
    classifier_two_sample,
    cosine_similarity,
    gaps_of,
    load_recovered,
    mmd_rbf,
    mse,
    recovered_entries,
    save_recovered,
)


def samples(n: int, shift: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)) + shift


def test_mmd_of_one_point_each_matches_the_formula() -> None:
    # k(a, a) = 1 and k(0, 1) = exp(-1/2) with s = 1: MMD² = 1 + 1 - 2·exp(-1/2).
    value = mmd_rbf(np.array([[0.0]]), np.array([[1.0]]), bandwidths=[1.0])
    assert value == pytest.approx(2 - 2 * math.exp(-0.5), rel=1e-12)


def test_mmd_averages_the_kernels_of_a_mixture() -> None:
    # Points 0 and 2 (squared distance 4), bandwidths 1 and 2: k = (e^-2 + e^-0.5) / 2.
    x = torch.tensor([[0.0, 0.0]])
    y = torch.tensor([[2.0, 0.0]])
    expected = 2 - (math.exp(-2.0) + math.exp(-0.5))
    assert mmd_rbf(x, y, bandwidths=[1.0, 2.0]) == pytest.approx(expected, rel=1e-12)


def test_mmd_of_unequal_sample_sizes_by_hand() -> None:
    # x = {0, 0}, y = {1}: every k(x_i, x_j) = 1, so MMD² = 2 - 2e with e = k(0, 1) = exp(-1/2).
    e = math.exp(-0.5)
    assert mmd_rbf(np.zeros((2, 1)), np.ones((1, 1)), bandwidths=[1.0]) == pytest.approx(2 - 2 * e)
    # x = {0, 1}, y = {1}: mean k(x, x) = (2 + 2e) / 4, k(y, y) = 1, mean k(x, y) = (e + 1) / 2,
    # so MMD² = (1 - e) / 2.
    x = np.array([[0.0], [1.0]])
    assert mmd_rbf(x, np.ones((1, 1)), bandwidths=[1.0]) == pytest.approx((1 - e) / 2, rel=1e-12)


def test_mmd_is_small_for_one_distribution_and_large_for_shifted_ones() -> None:
    same = mmd_rbf(samples(200, 0.0, 1), samples(200, 0.0, 2))
    shifted = mmd_rbf(samples(200, 0.0, 1), samples(200, 1.0, 3))
    assert 0 <= same < 0.01
    assert shifted > 20 * same
    # A larger shift gives a larger gap.
    assert mmd_rbf(samples(200, 0.0, 1), samples(200, 3.0, 3)) > shifted


def test_mmd_is_symmetric_and_zero_for_identical_samples() -> None:
    x, y = samples(30, 0.0, 4), samples(50, 0.5, 5)
    assert mmd_rbf(x, y) == pytest.approx(mmd_rbf(y, x), rel=1e-12)
    assert mmd_rbf(x, x) == pytest.approx(0.0, abs=1e-12)


def test_mmd_sees_a_collapsed_distribution_that_mse_rewards() -> None:
    # Predicting the mean everywhere halves the MSE of a random draw but is far in distribution.
    rng = np.random.default_rng(6)
    real = rng.standard_normal((300, 4))
    draw = rng.standard_normal((300, 4))
    collapsed = np.zeros((300, 4))
    assert mse(collapsed, real) < mse(draw, real)
    assert mmd_rbf(real, collapsed) > 10 * mmd_rbf(real, draw)


def test_mse_by_hand_and_for_tensors() -> None:
    assert mse(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == pytest.approx(2.5)
    assert mse(torch.ones(2, 3, 4), torch.zeros(2, 3, 4)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mse(np.zeros(3), np.zeros(4)), "shapes differ"),
        (lambda: mmd_rbf(np.zeros(3), np.zeros((3, 1))), r"\(N, F\)"),
        (lambda: mmd_rbf(np.zeros((3, 2)), np.zeros((3, 1))), "feature sizes differ"),
        (lambda: mmd_rbf(np.zeros((0, 2)), np.zeros((3, 2))), "at least one sample"),
        (lambda: mmd_rbf(np.zeros((2, 2)), np.zeros((3, 2)), bandwidths=[0.0]), "positive"),
        (lambda: mmd_rbf(np.full((2, 2), np.nan), np.zeros((3, 2))), "non-finite"),
    ],
)
def test_bad_inputs_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_recovery_gaps_measure_recoveries_and_zeros_on_the_missing_entries() -> None:
    import numpy as np
    from tests.conftest import build_model_for

    from dicmor.data.batches import Batches
    from dicmor.reporting.gaps import recovery_gaps

    model, data = build_model_for("cross_regression")
    split = data.splits["test"]
    split.present[:] = True  # no genuinely absent entry: only what the mask drops is missing
    mask = np.ones(split.present.shape, dtype=bool)
    mask[::3, 0] = False  # text missing from every third sample, nothing else
    gaps = recovery_gaps(model, split, data.modality_names, mask)
    assert list(gaps) == ["text"]
    batch = next(iter(Batches(split, data.modality_names, mask, len(split), with_targets=True)))
    with torch.no_grad():
        index, recovered = model(batch)["recovered"]["text"]
        real = model.target_features("text", batch, index)
    assert index.tolist() == list(range(0, len(split), 3))
    mse_recovered, mse_zeros, mmd_recovered, mmd_zeros = gaps["text"]
    assert mse_zeros == pytest.approx(float(real.double().square().mean()))
    assert mse_recovered == pytest.approx(float((recovered - real).double().square().mean()))
    assert mmd_recovered > 0 and mmd_zeros > 0 and mmd_recovered != mmd_zeros


def test_frechet_distance_of_gaussian_samples_matches_the_closed_form() -> None:
    from dicmor.reporting.gaps import frechet_distance

    # Same covariance: the distance is the squared distance of the means; the sample estimates
    # of a large sample are close to it.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 3))
    y = rng.standard_normal((20000, 3)) + np.array([1.0, 2.0, 0.0])
    assert frechet_distance(x, y) == pytest.approx(5.0, abs=0.1)
    # Isotropic variances 1 and 4 at one mean: Tr(I + 4I - 2·2I) = 3 · 1.
    assert frechet_distance(x, 2 * rng.standard_normal((20000, 3))) == pytest.approx(3.0, abs=0.1)
    # A collapse to the mean: Tr(S) = 3, although the means agree.
    assert frechet_distance(x, np.zeros((10, 3))) == pytest.approx(3.0, abs=0.1)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_cosine_similarity_of_known_entries() -> None:
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([[2.0, 0.0], [-1.0, -1.0], [3.0, 1.0]])
    assert cosine_similarity(x, y) == pytest.approx((1.0 - 1.0 + 0.0) / 3)


def test_the_classifier_two_sample_test_is_chance_for_one_distribution_and_one_for_two() -> None:
    rng = np.random.default_rng(0)
    same = classifier_two_sample(rng.normal(size=(400, 4)), rng.normal(size=(400, 4)))
    apart = classifier_two_sample(rng.normal(size=(400, 4)), rng.normal(3.0, 1.0, (400, 4)))
    assert abs(same - 0.5) < 0.07
    assert apart > 0.97
    assert np.isnan(classifier_two_sample(np.ones((3, 2)), np.zeros((3, 2))))


def test_recovered_entries_round_trip_and_their_gaps(tmp_path: Path) -> None:
    model, data = build_model_for("dicmor", "classification")
    split = data.splits["test"]
    mask = split.present.copy()
    mask[:6, 0] = False
    model.train()
    model(next(iter(Batches(split, data.modality_names, mask, 24))))  # data-dependent init
    entries = recovered_entries(model, split, data.modality_names, mask, task="classification")
    assert list(entries) == ["text"]
    np.testing.assert_array_equal(entries["text"]["index"], np.arange(6))
    np.testing.assert_array_equal(entries["text"]["classes"], split.labels[:6])
    save_recovered(tmp_path / "recovered.npz", entries, mask)
    loaded = load_recovered(tmp_path / "recovered.npz")
    for key, value in entries["text"].items():
        np.testing.assert_array_equal(loaded["text"][key], value)
    gaps = gaps_of(loaded)["text"]
    assert set(GAP_KEYS) <= set(gaps)
    assert gaps["c2st_zero"] > 0.5 and gaps["cosine_zero"] == 0.0
    assert gaps["mse_mean"] <= gaps["mse_zero"] + 1e-9  # the mean is the best constant
    # Each class's own values, whose sample-weighted mean is the per-class figure.
    per_class = {k: v for k, v in gaps.items() if k.startswith("mmd@") and "_" not in k}
    counts = {f"mmd@{c}": (entries["text"]["classes"] == c).sum() for c in range(3)}
    weights = np.array([counts[k] for k in per_class], dtype=float)
    assert gaps["class_mmd"] == pytest.approx(
        np.dot(weights / weights.sum(), list(per_class.values()))
    )
