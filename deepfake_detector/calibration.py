"""Score calibration by temperature scaling: one number fitted on labelled videos, used everywhere.

A detector's P(FAKE) is a score, not a probability: a network trained with cross-entropy is usually
over- or under-confident. Temperature scaling (Guo et al., 2017) divides the logit by one number ``T``
fitted on held-out videos (the validation split at the end of training, or the user's own data with
``calibrate``) so that a score of 0.8 is FAKE about 80 % of the time there. It is monotonic: the ranking,
the ROC and every AUC are unchanged, and the stored decision threshold is mapped through the same
function, so no verdict changes by calibrating.

The checkpoint's ``calibration`` entry (``Calibration.to_dict``)::

    {"method": "temperature", "temperature": T, "raw_threshold": t, "threshold": t mapped,
     "fitted_on": {...}, "ece_before": .., "ece_after": .., "brier_before": .., "brier_after": ..}

``engine.evaluate`` (evaluate, the end of training) and ``inference.Detector`` (predict, serve) apply it
through :meth:`Calibration.apply`; numpy only, so it costs nothing to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

__all__ = ["Calibration", "fit_calibration", "fit_temperature", "MIN_VIDEOS", "TEMPERATURE_BOUNDS"]

METHOD = "temperature"
#: fewer labelled videos than this (or one class only) give no calibration: a temperature fitted on a
#: handful of videos says more about those videos than about the model
MIN_VIDEOS = 20
#: the search range of T; a perfectly separated set drives the fit to the lower bound
TEMPERATURE_BOUNDS = (0.05, 20.0)
_P_EPS = 1e-12  # scores are clipped to [eps, 1 - eps] before the logit (a float32 softmax can give 1.0)

Scores = Union[float, np.ndarray]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _P_EPS, 1.0 - _P_EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of labels ``y`` under scores ``sigmoid(z / T)`` (stable form)."""
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(y_true: Any, p_fake: Any) -> float:
    """The ``T`` that minimises the log-loss of ``sigmoid(logit(p) / T)`` on these labels.

    The log-loss is convex in ``1/T``, so a golden-section search on ``log T`` over
    :data:`TEMPERATURE_BOUNDS` finds its minimum (to ~1e-6 relative) without an optimiser dependency.
    """
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    z = _logit(np.where(np.isfinite(p_fake), p_fake, 0.5))
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(z, y, math.exp(a)), _nll(z, y, math.exp(b))
    for _ in range(80):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(z, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(z, y, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


@dataclass
class Calibration:
    """A fitted temperature and the decision threshold it maps (see the module docstring)."""

    temperature: float
    raw_threshold: Optional[float] = None  # the checkpoint's threshold on uncalibrated scores
    fitted_on: dict = field(default_factory=dict)  # where: split, n, n_real, n_fake, cache name
    ece_before: float = float("nan")
    ece_after: float = float("nan")
    brier_before: float = float("nan")
    brier_after: float = float("nan")

    @classmethod
    def from_dict(cls, obj: Any) -> Optional[Calibration]:
        """The calibration a checkpoint (or an exported model's metadata) holds; None when absent or not
        one this version understands (then scores stay raw)."""
        if not isinstance(obj, Mapping) or obj.get("method", METHOD) != METHOD:
            return None
        try:
            temperature = float(obj["temperature"])
        except (KeyError, TypeError, ValueError):
            return None
        if not math.isfinite(temperature) or temperature <= 0:
            return None
        raw = obj.get("raw_threshold")
        nums = {k: float(obj[k]) for k in ("ece_before", "ece_after", "brier_before", "brier_after")
                if isinstance(obj.get(k), (int, float))}
        fitted = obj.get("fitted_on") if isinstance(obj.get("fitted_on"), Mapping) else {}
        raw = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
        return cls(temperature=temperature, raw_threshold=raw, fitted_on=dict(fitted), **nums)

    def to_dict(self) -> dict:
        """Builtins for the checkpoint (``threshold`` is the mapped decision threshold, for readers)."""
        return {
            "method": METHOD, "temperature": float(self.temperature), "raw_threshold": self.raw_threshold,
            "threshold": self.threshold, "fitted_on": dict(self.fitted_on),
            "ece_before": self.ece_before, "ece_after": self.ece_after,
            "brier_before": self.brier_before, "brier_after": self.brier_after,
        }

    @property
    def threshold(self) -> Optional[float]:
        """The checkpoint's decision threshold on calibrated scores (None when it has none)."""
        return None if self.raw_threshold is None else float(self.map(self.raw_threshold))

    def map(self, p: Scores) -> Scores:
        """``sigmoid(logit(p) / T)``: monotonic, so rankings and AUCs do not change."""
        out = _sigmoid(_logit(p) / self.temperature)
        return float(out) if np.ndim(out) == 0 else out

    def apply(self, p: Scores) -> Scores:
        """Calibrated scores whose verdicts at :attr:`threshold` are exactly the raw scores' verdicts at
        ``raw_threshold``: the map is monotonic, and the one place floating point could still tie (a raw
        score just below the threshold mapped onto it when both saturate near 1) is moved one step down."""
        raw = np.asarray(p, dtype=np.float64)
        out = np.asarray(self.map(raw), dtype=np.float64)
        if self.raw_threshold is not None:
            t = float(self.map(self.raw_threshold))
            below = raw < self.raw_threshold
            out = np.where(below & (out >= t), np.nextafter(t, 0.0), out)
            out = np.where(~below & (out < t), t, out)
        return float(out) if np.ndim(out) == 0 else out


def fit_calibration(y_true: Any, p_fake: Any, raw_threshold: Optional[float], fitted_on: Mapping,
                    min_videos: int = MIN_VIDEOS) -> tuple[Optional[Calibration], str]:
    """``(Calibration, note)`` fitted on these labelled raw scores, or ``(None, why not)``: too few
    videos or one class only. The note says when the fit sits on a bound (a perfectly separated set)."""
    from .metrics import brier_score, expected_calibration_error

    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    n_real, n_fake = int((y == 0).sum()), int((y == 1).sum())
    if y.size < min_videos or not n_real or not n_fake:
        return None, (f"not calibrated: {y.size} labelled videos ({n_real} REAL, {n_fake} FAKE); temperature "
                      f"scaling needs at least {min_videos} with both classes")
    temperature = fit_temperature(y, p)
    cal = Calibration(temperature=temperature, raw_threshold=raw_threshold,
                      fitted_on={**dict(fitted_on), "n": int(y.size), "n_real": n_real, "n_fake": n_fake})
    after = np.asarray(cal.map(p), dtype=np.float64)
    cal.ece_before, cal.ece_after = expected_calibration_error(y, p), expected_calibration_error(y, after)
    cal.brier_before, cal.brier_after = brier_score(y, p), brier_score(y, after)
    note = f"temperature {temperature:.4g}"
    if not TEMPERATURE_BOUNDS[0] * 1.001 < temperature < TEMPERATURE_BOUNDS[1] / 1.001:
        note += " (at its bound: these videos are perfectly separated or nearly constant; the fit is weak)"
    return cal, note
