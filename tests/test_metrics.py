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
