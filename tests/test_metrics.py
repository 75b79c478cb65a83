"""Metrics agree with scikit-learn and survive degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from deepfake_detector.metrics import calculate_accuracy, choose_threshold, compute_metrics, equal_error_rate


@pytest.mark.parametrize("seed", range(5))
def test_calculate_accuracy_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(50, 2))
    y = rng.integers(0, 2, size=50)
    expected = skm.accuracy_score(y, logits.argmax(1))
    assert calculate_accuracy(logits, y) == pytest.approx(expected)
    assert calculate_accuracy(torch.tensor(logits), torch.tensor(y)) == pytest.approx(expected)
    assert calculate_accuracy(logits.argmax(1), y) == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(5))
def test_compute_metrics_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, size=200), 0, 1)
    thr = 0.45
    m = compute_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert m["ap"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["n"] == 200 and m["n_fake"] == int(y.sum())


def test_eer_known_values():
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])[0] == 0.0
    assert equal_error_rate([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])[0] == 1.0
    eer, thr = equal_error_rate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert eer == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(3))
def test_eer_lies_where_fpr_meets_fnr(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=300)
    p = np.clip(0.25 * y + rng.uniform(0, 0.75, size=300), 0, 1)
    eer, thr = equal_error_rate(y, p)
    fpr, tpr, _ = skm.roc_curve(y, p)
    fnr = 1 - tpr
    # the EER is bracketed by the two ROC points around the crossing
    best = np.min(np.maximum(fpr, fnr))
    assert min(np.min(np.abs(fpr - fnr)), 0) <= eer <= best + 1e-9
    pred = p >= thr
    fpr_t = (pred & (y == 0)).sum() / (y == 0).sum()
    fnr_t = (~pred & (y == 1)).sum() / (y == 1).sum()
    assert abs(fpr_t - fnr_t) < 0.05


def test_choose_threshold_f1_is_the_best_f1():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=100)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, size=100), 0, 1)
    thr = choose_threshold(y, p, "f1")
    best = max(skm.f1_score(y, p >= t) for t in np.unique(p))
    assert skm.f1_score(y, p >= thr) == pytest.approx(best)
    assert 0 <= choose_threshold(y, p, "eer") <= 1
    assert choose_threshold(y, p, "fixed") == 0.5
    with pytest.raises(ValueError):
        choose_threshold(y, p, "magic")


def test_single_class_and_empty_inputs_give_nan_with_a_note():
    m = compute_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["eer"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert any("only FAKE" in n for n in m["notes"])
    e = compute_metrics([], [])
    assert e["n"] == 0 and math.isnan(e["accuracy"]) and e["notes"]
    assert choose_threshold([0, 0], [0.1, 0.2]) == 0.5
    nan = compute_metrics([0, 1], [float("nan"), 0.9])
    assert nan["notes"] and not math.isnan(nan["auc"])
    with pytest.raises(ValueError):
        compute_metrics([0, 2], [0.1, 0.2])


# --- what researchers compare detectors on -----------------------------------------------------------


def test_tpr_at_fixed_false_positive_rates():
    from deepfake_detector.metrics import tpr_at_fpr

    reals = np.linspace(0.0, 0.5, 100)  # one real above 0.495 ... a false positive rate of 0.01 per real
    fakes = np.array([0.2, 0.45, 0.49, 0.6, 0.9])
    y, p = np.r_[np.zeros(100), np.ones(5)], np.r_[reals, fakes]
    got = tpr_at_fpr(y, p)
    assert list(got) == ["0.1", "0.01", "0.001"]
    assert got["0.001"] == got["0.01"] == pytest.approx(0.4)  # above every real: 0.6, 0.9
    assert got["0.1"] == pytest.approx(0.8)  # 10 reals may be flagged: 0.45 and 0.49 join
    assert all(math.isnan(v) for v in tpr_at_fpr([1, 1], [0.3, 0.4]).values())


def test_threshold_at_fpr_is_the_lowest_that_keeps_the_rate():
    from deepfake_detector.metrics import threshold_at_fpr

    rng = np.random.default_rng(0)
    for target in (0.1, 0.01, 0.05):
        reals = rng.random(1000).astype(np.float32).astype(np.float64)
        thr = threshold_at_fpr(np.zeros(1000), reals, target)
        assert (reals >= thr).mean() <= target
        assert (reals >= np.nextafter(thr, 0)).mean() > target or thr == 0.0  # any lower lets more through
    assert threshold_at_fpr([0, 0, 1], [1.0, 0.2, 0.9], 0.1) == 1.0
    assert math.isnan(threshold_at_fpr([1, 1], [0.2, 0.3], 0.01))  # no REAL videos: undefined
    assert choose_threshold([0] * 100 + [1], list(np.linspace(0, 0.99, 100)) + [1.0], "fpr:0.01") > 0.98
    with pytest.raises(ValueError, match="fpr:X"):
        choose_threshold([0, 1], [0.1, 0.9], "fpr:2")


def test_ece_and_brier():
    from deepfake_detector.metrics import brier_score, expected_calibration_error

    rng = np.random.default_rng(0)
    p = rng.random(200000)
    y = (rng.random(200000) < p).astype(int)  # perfectly calibrated by construction
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error([0, 1], [0.9, 0.1]) == pytest.approx(0.9)
    assert brier_score([0, 1, 1], [0.5, 0.5, 1.0]) == pytest.approx((0.25 + 0.25 + 0) / 3)
    assert math.isnan(expected_calibration_error([], []))


def test_by_manipulation_scores_each_method_against_all_reals():
    from deepfake_detector.metrics import evaluation_metrics, metrics_by_manipulation

    y = [0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.7, 0.9, 0.8, 0.15, 0.3]
    methods = ["", "", "", "swap", "swap", "gan", ""]
    by = metrics_by_manipulation(y, p, methods)
    assert set(by) == {"swap", "gan", "(unknown)"}
    assert by["swap"] == {"auc": 1.0, "n_fake": 2, "n_real": 3, "tpr_at_fpr": by["swap"]["tpr_at_fpr"]}
    assert by["gan"]["auc"] == pytest.approx(1 / 3) and by["(unknown)"]["n_fake"] == 1
    assert metrics_by_manipulation(y, p, [""] * 7) == {}  # no method known: nothing to break down
    m = evaluation_metrics(y, p, 0.5, "eer on validation", methods=methods,
                           frames=([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9]))
    for key in ("frame_auc", "tpr_at_fpr", "ece", "brier", "by_manipulation", "threshold", "threshold_method",
                "n_frames"):
        assert key in m, key
    assert m["frame_auc"] == 1.0 and m["n_frames"] == 4 and m["threshold_method"] == "eer on validation"
    assert compute_metrics(y, p, 0.5)["threshold_method"] == "given"
