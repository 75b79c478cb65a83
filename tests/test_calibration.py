"""Temperature scaling: the fit finds the right temperature, and calibrating never changes a verdict."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepfake_detector.calibration import (
    MIN_VIDEOS,
    TEMPERATURE_BOUNDS,
    Calibration,
    fit_calibration,
    fit_temperature,
)
from deepfake_detector.metrics import expected_calibration_error


def _overconfident(n: int, true_temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) while the model reports sigmoid(z * T): T > 1 overconfident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    return y, 1.0 / (1.0 + np.exp(-z * true_temperature))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 3.0])
def test_the_fit_recovers_the_temperature_and_lowers_ece(true_t):
    y, p = _overconfident(20000, true_t)
    assert fit_temperature(y, p) == pytest.approx(true_t, rel=0.06)
    cal, note = fit_calibration(y, p, 0.5, {"split": "val"})
    assert cal is not None and "temperature" in note
    if true_t != 1.0:
        assert cal.ece_after < cal.ece_before / 2
    n_fake = int(y.sum())
    assert cal.fitted_on == {"split": "val", "n": 20000, "n_real": 20000 - n_fake, "n_fake": n_fake}
    assert cal.ece_after == pytest.approx(expected_calibration_error(y, cal.map(p)))


def test_too_few_or_one_class_gives_no_calibration_and_says_why():
    cal, why = fit_calibration([0, 1] * 5, [0.2, 0.8] * 5, 0.5, {})
    assert cal is None and f"at least {MIN_VIDEOS}" in why and "10 labelled videos (5 REAL, 5 FAKE)" in why
    cal, why = fit_calibration([1] * 40, np.linspace(0.1, 0.9, 40), 0.5, {})
    assert cal is None and "(0 REAL, 40 FAKE)" in why
    cal, note = fit_calibration([0] * 20 + [1] * 20, [0.4] * 20 + [0.6] * 20, 0.5, {})  # separated
    assert cal.temperature == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3) and "bound" in note


def test_calibrating_never_changes_a_verdict_even_where_scores_saturate():
    rng = np.random.default_rng(1)
    # float32 softmax outputs, many of them just around the threshold and near 1
    raw_threshold = float(np.float32(0.9991))
    just_below = np.nextafter(np.float32(raw_threshold), np.float32(0))
    p = np.concatenate([rng.random(5000), 1 - rng.random(5000) * 1e-3, just_below * np.ones(3),
                        [raw_threshold, 1.0]])
    p = p.astype(np.float32).astype(np.float64)
    for temperature in (TEMPERATURE_BOUNDS[0], 0.3, 1.0, 4.0, TEMPERATURE_BOUNDS[1]):
        cal = Calibration(temperature=temperature, raw_threshold=raw_threshold)
        q = cal.apply(p)
        assert np.array_equal(q >= cal.threshold, p >= raw_threshold), temperature
        assert np.all(np.diff(q[np.argsort(p, kind="stable")]) >= 0)  # the ranking (and every AUC) holds
        assert isinstance(cal.apply(0.25), float) and 0.0 < cal.apply(0.25) < 1.0


def test_the_checkpoint_entry_round_trips_and_foreign_entries_are_ignored():
    cal = Calibration(temperature=1.7, raw_threshold=0.42, fitted_on={"split": "val", "n": 30},
                      ece_before=0.1, ece_after=0.02, brier_before=0.2, brier_after=0.18)
    d = cal.to_dict()
    assert d["method"] == "temperature" and d["threshold"] == pytest.approx(cal.map(0.42))
    assert Calibration.from_dict(d) == cal
    for bad in (None, {}, {"method": "isotonic", "temperature": 1.0}, {"temperature": -1},
                {"temperature": "x"}, {"temperature": math.inf}):
        assert Calibration.from_dict(bad) is None
    assert Calibration.from_dict({"temperature": 2.0}).threshold is None  # no threshold known: none mapped
