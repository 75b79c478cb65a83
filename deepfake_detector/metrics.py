"""Classification metrics for REAL/FAKE verdicts, computed from P(FAKE) with scikit-learn.

Threshold-free metrics (ROC-AUC, AP, EER, log-loss) use the probabilities; accuracy, precision,
recall, F1 and the confusion matrix use a threshold on P(FAKE). Degenerate inputs (an empty set, a
single class) never crash a run: the undefined metrics are NaN and ``notes`` says why, because a
validation split of a tiny or skewed dataset is a normal situation, not a bug.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["calculate_accuracy", "compute_metrics", "choose_threshold", "equal_error_rate"]

_EPS = 1e-7


def calculate_accuracy(outputs: Any, targets: Any) -> float:
    """Fraction of correct predictions (0..1).

    ``outputs`` are logits/probabilities ``[N, C]`` (argmax is the prediction) or predicted class
    indices ``[N]``; ``targets`` are class indices. Kept under the reference's name, but it returns a
    fraction, not a percentage, like ``sklearn.metrics.accuracy_score``.
    """
    out = np.asarray(outputs.detach().cpu() if hasattr(outputs, "detach") else outputs)
    tgt = np.asarray(targets.detach().cpu() if hasattr(targets, "detach") else targets).reshape(-1)
    pred = out.argmax(axis=-1) if out.ndim == 2 else out.reshape(-1)
    if pred.shape[0] != tgt.shape[0]:
        raise ValueError(f"outputs and targets differ in length: {pred.shape[0]} vs {tgt.shape[0]}")
    if tgt.size == 0:
        return float("nan")
    return float((pred.astype(np.int64) == tgt.astype(np.int64)).mean())


def _as_arrays(y_true: Any, p_fake: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(p_fake, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true and p_fake differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold class indices 0 (REAL) and 1 (FAKE)")
    return y, p


def equal_error_rate(y_true: Any, p_fake: Any) -> tuple[float, float]:
    """(EER, threshold): the operating point where false-positive and false-negative rates are equal.

    Linearly interpolated between the two ROC points that bracket the crossing, so it is exact for
    separable data (EER 0) and does not depend on the ROC's sampling.
    """
    from sklearn.metrics import roc_curve

    y, p = _as_arrays(y_true, p_fake)
    if y.size == 0 or len(np.unique(y)) < 2:
        return float("nan"), 0.5
    fpr, tpr, thr = roc_curve(y, p)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # decreasing from 1 to -1 along the curve
    idx = int(np.argmax(diff <= 0))
    if idx == 0:
        return float(fpr[0]), float(min(thr[0], 1.0))
    d0, d1 = diff[idx - 1], diff[idx]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    eer = fpr[idx - 1] + w * (fpr[idx] - fpr[idx - 1])
    # The threshold of the point that reaches the crossing (scores >= thr are called FAKE).
    threshold = float(np.clip(thr[idx], 0.0, 1.0))
    return float(eer), threshold


def choose_threshold(y_true: Any, p_fake: Any, method: str = "eer") -> float:
    """Decision threshold on P(FAKE) chosen on validation data: ``eer`` or best ``f1`` (0.5 if undefined)."""
    from sklearn.metrics import precision_recall_curve

    y, p = _as_arrays(y_true, p_fake)
    if method == "fixed":
        return 0.5
    if y.size == 0 or len(np.unique(y)) < 2:
        return 0.5
    if method == "eer":
        return equal_error_rate(y, p)[1]
    if method == "f1":
        precision, recall, thr = precision_recall_curve(y, p)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        best = int(np.argmax(f1[:-1])) if thr.size else 0
        return float(np.clip(thr[best], 0.0, 1.0)) if thr.size else 0.5
    raise ValueError(f"unknown threshold method {method!r} (eer, f1 or fixed)")


def compute_metrics(y_true: Any, p_fake: Any, threshold: float = 0.5) -> dict:
    """All metrics as plain Python values (JSON- and checkpoint-safe).

    Keys: n, n_real, n_fake, threshold, accuracy, precision, recall, f1, auc, ap, eer, log_loss,
    confusion_matrix ([[TN, FP], [FN, TP]], rows = true REAL/FAKE), notes (list of strings).
    A video is called FAKE when ``p_fake >= threshold``.
    """
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y, p = _as_arrays(y_true, p_fake)
    nan = float("nan")
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
        "threshold": float(threshold),
        "notes": [],
    }
    if y.size == 0:
        out.update(
            accuracy=nan,
            precision=nan,
            recall=nan,
            f1=nan,
            auc=nan,
            ap=nan,
            eer=nan,
            log_loss=nan,
            confusion_matrix=[[0, 0], [0, 0]],
        )
        out["notes"].append("no samples: every metric is undefined")
        return out
    finite = np.isfinite(p)
    if not finite.all():
        out["notes"].append(f"{int((~finite).sum())} non-finite probabilities treated as 0.5")
        p = np.where(finite, p, 0.5)
    p = np.clip(p, 0.0, 1.0)
    pred = (p >= threshold).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["accuracy"] = float(accuracy_score(y, pred))
        out["precision"] = float(precision_score(y, pred, zero_division=0))
        out["recall"] = float(recall_score(y, pred, zero_division=0))
        out["f1"] = float(f1_score(y, pred, zero_division=0))
        out["confusion_matrix"] = confusion_matrix(y, pred, labels=[0, 1]).astype(int).tolist()
        out["log_loss"] = float(log_loss(y, np.clip(p, _EPS, 1 - _EPS), labels=[0, 1]))
        if len(np.unique(y)) < 2:
            only = "FAKE" if y[0] == 1 else "REAL"
            out["notes"].append(f"only {only} samples: ROC-AUC, AP and EER are undefined (NaN)")
            out["auc"] = out["ap"] = out["eer"] = nan
        else:
            out["auc"] = float(roc_auc_score(y, p))
            out["ap"] = float(average_precision_score(y, p))
            out["eer"] = equal_error_rate(y, p)[0]
    return out


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """A small human-readable table for the CLI."""
    keys = [
        "n",
        "n_real",
        "n_fake",
        "threshold",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "auc",
        "ap",
        "eer",
        "log_loss",
    ]
    lines = [title] if title else []
    for k in keys:
        if k not in metrics:
            continue
        v = metrics[k]
        text = f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)
        lines.append(f"  {k:<10} {text}")
    cm = metrics.get("confusion_matrix")
    if cm:
        lines.append("  confusion (rows true, cols predicted; REAL, FAKE)")
        lines.append(f"    REAL {cm[0][0]:>6} {cm[0][1]:>6}")
        lines.append(f"    FAKE {cm[1][0]:>6} {cm[1][1]:>6}")
    for note in metrics.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
