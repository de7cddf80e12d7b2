import math

import numpy as np
import pytest

from dicmor.evaluation.metrics import (
    METRIC_NAMES,
    PERCENT_METRICS,
    PRIMARY_METRIC,
    MetricError,
    classification_metrics,
    compute_metrics,
    metric_labels,
    pearson,
    regression_metrics,
)

# Ten samples, worked by hand below.
#   idx  truth  pred   truth>0 pred>0 | truth>=0 pred>=0
#    0    1.0    2.2      T      T    |    T       T
#    1    2.0    0.3      T      T    |    T       T
#    2    0.4    1.6      T      T    |    T       T
#    3    3.0    0.5      T      T    |    T       T
#    4   -1.2    0.6      F      T    |    F       T
#    5   -2.8    3.5      F      T    |    F       T
#    6    0.0   -0.5    (dropped)     |    T       F    <- wrong under has-0
#    7    0.0    0.2    (dropped)     |    T       T
#    8   -0.6   -1.4      F      F    |    F       F
#    9    2.4    3.6      T      T    |    T       T
TRUTH = np.array([1.0, 2.0, 0.4, 3.0, -1.2, -2.8, 0.0, 0.0, -0.6, 2.4])
PRED = np.array([2.2, 0.3, 1.6, 0.5, 0.6, 3.5, -0.5, 0.2, -1.4, 3.6])


def test_regression_metrics_on_a_hand_worked_example() -> None:
    metrics = regression_metrics(PRED, TRUTH)
    assert list(metrics) == list(METRIC_NAMES["regression"])
    # non-0: 8 samples (6 and 7 dropped), wrong: 4, 5 -> 6/8.
    assert metrics["acc2_non0"] == pytest.approx(6 / 8)
    # non-0 F1 = 2·TP / (|truth c| + |pred c|) per class c, weighted by |truth c|:
    #   positive: truth {0,1,2,3,9} (5), pred {0,1,2,3,4,5,9} (7), TP 5 -> 10/12 = 5/6
    #   negative: truth {4,5,8} (3), pred {8} (1), TP 1 -> 2/4 = 1/2
    #   weighted: (5·5/6 + 3·1/2) / 8 = 17/24
    assert metrics["f1_non0"] == pytest.approx(17 / 24)
    # has-0: all 10, wrong: 4, 5, 6 -> 7/10.
    assert metrics["acc2_has0"] == pytest.approx(7 / 10)
    #   >=0: truth {0,1,2,3,6,7,9} (7), pred {0,1,2,3,4,5,7,9} (8), TP 6 -> 12/15 = 4/5
    #   <0:  truth {4,5,8} (3), pred {6,8} (2), TP 1 -> 2/5
    #   weighted: (7·4/5 + 3·2/5) / 10 = 34/50
    assert metrics["f1_has0"] == pytest.approx(34 / 50)
    # Acc-7, round(clip(., -3, 3)) with numpy's half-to-even rounding:
    #   pred  -> [2, 0, 2, 0, 1, 3, 0, 0, -1, 3]   (0.5 -> 0, 3.5 -> clip 3, 3.6 -> clip 3)
    #   truth -> [1, 2, 0, 3, -1, -3, 0, 0, -1, 2]
    #   equal at 6, 7, 8 -> 3/10.
    assert metrics["acc7"] == pytest.approx(3 / 10)
    # Acc-5, clip ±2: pred -> [2, 0, 2, 0, 1, 2, 0, 0, -1, 2],
    #   truth -> [1, 2, 0, 2, -1, -2, 0, 0, -1, 2]; equal at 6, 7, 8, 9 -> 4/10.
    assert metrics["acc5"] == pytest.approx(4 / 10)
    # |pred - truth| = 1.2 1.7 1.2 2.5 1.8 6.3 0.5 0.2 0.8 1.2, sum 17.4.
    assert metrics["mae"] == pytest.approx(1.74)
    assert metrics["corr"] == pytest.approx(np.corrcoef(PRED, TRUTH)[0, 1])
    assert all(isinstance(value, float) for value in metrics.values())


def test_zero_truth_counts_under_has0_and_is_dropped_under_non0() -> None:
    # Sample 0 (truth 0, pred -0.5) is wrong under has-0 and ignored under non-0.
    metrics = regression_metrics(np.array([-0.5, 1.0, -2.0]), np.array([0.0, 2.0, -1.0]))
    assert metrics["acc2_non0"] == 1.0
    assert metrics["f1_non0"] == 1.0
    assert metrics["acc2_has0"] == pytest.approx(2 / 3)


def test_non0_metrics_are_nan_when_every_truth_is_zero() -> None:
    metrics = regression_metrics(np.array([0.3, -0.2]), np.zeros(2))
    assert math.isnan(metrics["acc2_non0"])
    assert math.isnan(metrics["f1_non0"])
    # has-0: truth >= 0 for both; only pred 0.3 agrees.
    assert metrics["acc2_has0"] == 0.5


def test_acc7_clips_before_rounding_and_rounds_half_to_even() -> None:
    # 4.2 and -3.7 only match 2.8 and -3.0 after clipping to ±3; 0.5 and 2.5 round to 0 and 2.
    pred = np.array([4.2, -3.7, 0.5, 2.5])
    truth = np.array([2.8, -3.0, 0.0, 2.0])
    assert regression_metrics(pred, truth)["acc7"] == 1.0
    # Acc-5 clips to ±2: 2.6 -> 2 equals 1.8 -> 2, while Acc-7 sees 3 vs 2.
    metrics = regression_metrics(np.array([2.6]), np.array([1.8]))
    assert metrics["acc5"] == 1.0
    assert metrics["acc7"] == 0.0


def test_pearson() -> None:
    # deviations (-1, 0, 1) and (-1, 1, 0): dot 1, norms √2·√2 -> 0.5.
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([6.0, 4.0, 2.0])) == -1.0
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])


def test_pearson_is_nan_for_a_constant_vector() -> None:
    assert math.isnan(pearson(np.full(4, 0.7), np.array([1.0, -1.0, 2.0, 0.0])))
    assert math.isnan(regression_metrics(np.array([1.0]), np.array([2.0]))["corr"])


def test_regression_metrics_accept_a_one_output_column() -> None:
    column = regression_metrics(PRED[:, None], TRUTH)
    assert column == pytest.approx(regression_metrics(PRED, TRUTH))


@pytest.mark.parametrize(
    ("pred", "truth", "message"),
    [
        (np.zeros(3), np.zeros(4), "pred has 3 values but truth has 4"),
        (np.zeros((3, 2)), np.zeros(3), r"pred must have shape \(N,\) or \(N, 1\)"),
        (np.array([0.0, np.nan]), np.zeros(2), "pred contains NaN or infinite"),
        (np.zeros(2), np.array([np.inf, 0.0]), "truth contains NaN or infinite"),
        (np.zeros(0), np.zeros(0), "pred is empty"),
        (np.array(["a"]), np.zeros(1), "pred must be real numbers"),
    ],
)
def test_regression_metrics_validation(pred, truth, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        regression_metrics(pred, truth)


def test_classification_metrics_on_a_hand_worked_example() -> None:
    truth = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    metrics = classification_metrics(pred, truth)
    assert list(metrics) == list(METRIC_NAMES["classification"])
    # correct at 0, 1, 3, 5 -> 4/6.
    assert metrics["acc"] == pytest.approx(4 / 6)
    # per class 2·TP / (|truth c| + |pred c|):
    #   0: TP 2, 3 + 2 -> 4/5;  1: TP 1, 2 + 2 -> 1/2;  2: TP 1, 1 + 2 -> 2/3
    #   macro (4/5 + 1/2 + 2/3) / 3 = 59/90; weighted (3·4/5 + 2·1/2 + 1·2/3) / 6 = 61/90
    assert metrics["f1_macro"] == pytest.approx(59 / 90)
    assert metrics["f1_weighted"] == pytest.approx(61 / 90)


def test_classification_metrics_reject_fractional_labels() -> None:
    with pytest.raises(MetricError, match="pred_labels must hold integer class labels"):
        classification_metrics(np.array([0.5, 1.0]), np.array([0, 1]))


def test_compute_metrics_dispatches_by_task() -> None:
    assert compute_metrics("regression", PRED, TRUTH) == regression_metrics(PRED, TRUTH)
    labels = np.array([0, 1, 1])
    assert compute_metrics("classification", labels, labels)["acc"] == 1.0
    with pytest.raises(MetricError, match="task must be"):
        compute_metrics("ranking", labels, labels)


def test_metric_tables_are_consistent() -> None:
    for task, names in METRIC_NAMES.items():
        assert PRIMARY_METRIC[task] in names
        assert all(name in metric_labels for name in names)
    assert metric_labels["acc2_non0"] == "Acc-2 (non-0)"
    assert set(metric_labels) - {"mae", "corr"} == PERCENT_METRICS
