"""Classification metrics for REAL/FAKE verdicts, computed from P(FAKE) with scikit-learn.

Threshold-free metrics (ROC-AUC, AP, EER, log-loss) use the probabilities; accuracy, precision,
recall, F1 and the confusion matrix use a threshold on P(FAKE), always reported with the threshold and
the rule that chose it (``threshold_method``). Degenerate inputs (an empty set, a single class) never
crash a run: the undefined metrics are NaN and ``notes`` says why, because a validation split of a tiny
or skewed dataset is a normal situation, not a bug.

:func:`evaluation_metrics` adds what detectors are compared on in papers and benchmarks: the TPR at
fixed low false-positive rates (``tpr_at_fpr``), calibration (``ece``, ``brier``), per-manipulation
results (``by_manipulation``: each method's fakes against all the split's reals) and the frame-level
AUC (``frame_auc``: every frame scored alone).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

__all__ = ["calculate_accuracy", "compute_metrics", "choose_threshold", "equal_error_rate", "tpr_at_fpr",
           "threshold_at_fpr", "expected_calibration_error", "brier_score", "metrics_by_manipulation",
           "evaluation_metrics", "parse_threshold_method", "fpr_key", "format_metrics_table", "FPR_TARGETS",
           "THRESHOLD_METHODS"]

_EPS = 1e-7
#: false-positive rates at which ``tpr_at_fpr`` reports the true-positive rate (keys "0.1", "0.01", "0.001")
FPR_TARGETS = (0.1, 0.01, 0.001)
#: bins of ``expected_calibration_error`` (equal width over [0, 1])
ECE_BINS = 15
#: how ``choose_threshold`` picks a threshold on validation; ``fpr:X`` = the lowest threshold whose
#: false-positive rate on the REAL videos is at most X
THRESHOLD_METHODS = ("eer", "f1", "fixed", "fpr:X")
UNKNOWN_METHOD = "(unknown)"  # fakes without a method, when other fakes have one


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


def parse_threshold_method(method: str) -> tuple[str, float]:
    """``("eer"|"f1"|"fixed", nan)`` or ``("fpr", X)`` for ``fpr:X`` (0 < X < 1); ValueError otherwise."""
    text = str(method).strip().lower()
    if text in ("eer", "f1", "fixed"):
        return text, float("nan")
    if text.startswith("fpr:"):
        try:
            target = float(text[4:])
        except ValueError:
            target = float("nan")
        if 0.0 < target < 1.0:
            return "fpr", target
    raise ValueError(f"unknown threshold method {method!r}: eer, f1, fixed or fpr:X with 0 < X < 1 "
                     "(e.g. fpr:0.01)")


def threshold_at_fpr(y_true: Any, p_fake: Any, target: float) -> float:
    """The lowest threshold whose false-positive rate on the REAL videos is at most ``target``.

    Only the REAL videos' scores matter, so a user can set it on their own real footage. With ``k =
    floor(target * n_real)`` reals allowed at or above it, it sits just above the (k+1)-th highest real
    score (NaN without REAL videos; 1.0 when that score is already 1.0).
    """
    y, p = _as_arrays(y_true, p_fake)
    reals = np.sort(np.where(np.isfinite(p[y == 0]), p[y == 0], 0.5))[::-1]
    if reals.size == 0:
        return float("nan")
    k = int(math.floor(target * reals.size + 1e-9))
    if k >= reals.size:
        return 0.0
    return float(min(np.nextafter(float(reals[k]), np.inf), 1.0))


def choose_threshold(y_true: Any, p_fake: Any, method: str = "eer") -> float:
    """Decision threshold on P(FAKE) chosen on validation data: ``eer``, best ``f1``, ``fixed`` (0.5) or
    ``fpr:X`` (see :func:`threshold_at_fpr`); 0.5 when the rule is undefined on this data."""
    from sklearn.metrics import precision_recall_curve

    y, p = _as_arrays(y_true, p_fake)
    kind, target = parse_threshold_method(method)
    if kind == "fixed":
        return 0.5
    if kind == "fpr":
        thr = threshold_at_fpr(y, p, target)
        return 0.5 if math.isnan(thr) else thr
    method = kind
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
    raise AssertionError(method)  # pragma: no cover - parse_threshold_method admits only the above


def compute_metrics(y_true: Any, p_fake: Any, threshold: float = 0.5, threshold_method: str = "") -> dict:
    """All metrics as plain Python values (JSON- and checkpoint-safe).

    Keys: n, n_real, n_fake, threshold, threshold_method (the rule that chose the threshold, so an
    accuracy never stands without it; "given" when the caller does not say), accuracy, precision,
    recall, f1, auc, ap, eer, log_loss, confusion_matrix ([[TN, FP], [FN, TP]], rows = true REAL/FAKE),
    notes (list of strings). A video is called FAKE when ``p_fake >= threshold``.
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
        "threshold_method": threshold_method or "given",
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


def _finite_scores(p: np.ndarray) -> np.ndarray:
    return np.clip(np.where(np.isfinite(p), p, 0.5), 0.0, 1.0)


def fpr_key(target: float) -> str:
    """``0.01`` -> ``"0.01"``: the JSON key of a false-positive rate."""
    return format(float(target), "g")


def tpr_at_fpr(y_true: Any, p_fake: Any, targets: Sequence[float] = FPR_TARGETS) -> dict[str, float]:
    """``{"0.1": TPR, ...}``: the highest true-positive rate (FAKE caught) of any threshold whose false-
    positive rate (REAL flagged) is at most each target; NaN without both classes. With fewer than
    1/target REAL videos the only such rate is 0: the value is then the TPR at FPR 0."""
    from sklearn.metrics import roc_curve

    y, p = _as_arrays(y_true, p_fake)
    if y.size == 0 or len(np.unique(y)) < 2:
        return {fpr_key(t): float("nan") for t in targets}
    fpr, tpr, _ = roc_curve(y, _finite_scores(p), drop_intermediate=False)
    return {fpr_key(t): float(tpr[fpr <= t + 1e-12].max()) for t in targets}


def expected_calibration_error(y_true: Any, p_fake: Any, bins: int = ECE_BINS) -> float:
    """ECE of P(FAKE): the videos are put in ``bins`` equal-width bins of their score, and the gap between
    each bin's mean score and its share of FAKE videos is averaged, weighted by the bin's size. 0 means
    "a score of 0.8 is FAKE 80 % of the time"; NaN for an empty set."""
    y, p = _as_arrays(y_true, p_fake)
    if y.size == 0:
        return float("nan")
    p = _finite_scores(p)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / y.size)


def brier_score(y_true: Any, p_fake: Any) -> float:
    """Mean squared difference between P(FAKE) and the label (0 perfect, 0.25 a constant 0.5)."""
    y, p = _as_arrays(y_true, p_fake)
    return float(np.mean((_finite_scores(p) - y) ** 2)) if y.size else float("nan")


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.size == 0 or len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, _finite_scores(p)))


def metrics_by_manipulation(y_true: Any, p_fake: Any, methods: Sequence[str]) -> dict[str, dict]:
    """``{method: {"auc", "n_fake", "n_real", "tpr_at_fpr"}}``: each manipulation method's FAKE videos
    scored against ALL the REAL videos of the set (the FF++ / DeepfakeBench protocol). Fakes without a
    method count under ``(unknown)`` when others have one; {} when no fake has a method."""
    y, p = _as_arrays(y_true, p_fake)
    m = np.asarray([str(x or "") for x in methods], dtype=object)
    if m.shape != y.shape:
        raise ValueError(f"methods and y_true differ in length: {m.shape[0]} vs {y.shape[0]}")
    fake_methods = set(m[y == 1].tolist())
    if not fake_methods - {""}:
        return {}
    m = np.where((y == 1) & (m == ""), UNKNOWN_METHOD, m)
    out = {}
    for name in sorted(set(m[y == 1].tolist())):
        keep = (y == 0) | (m == name)
        ys, ps = y[keep], p[keep]
        out[name] = {"auc": _auc(ys, ps), "n_fake": int((ys == 1).sum()), "n_real": int((ys == 0).sum()),
                     "tpr_at_fpr": tpr_at_fpr(ys, ps)}
    return out


def evaluation_metrics(y_true: Any, p_fake: Any, threshold: float, threshold_method: str = "",
                       methods: Optional[Sequence[str]] = None,
                       frames: Optional[tuple[Any, Any]] = None) -> dict:
    """:func:`compute_metrics` plus ``tpr_at_fpr``, ``ece``, ``brier``, ``by_manipulation`` (with
    ``methods``, one per video) and ``frame_auc`` / ``n_frames`` (with ``frames = (labels, scores)``,
    one per frame: each frame scored alone against its video's label)."""
    out = compute_metrics(y_true, p_fake, threshold, threshold_method)
    out["tpr_at_fpr"] = tpr_at_fpr(y_true, p_fake)
    out["ece"] = expected_calibration_error(y_true, p_fake)
    out["brier"] = brier_score(y_true, p_fake)
    if out["n_real"] and out["n_real"] * min(FPR_TARGETS) < 1:
        out["notes"].append(f"only {out['n_real']} REAL videos: the smallest false-positive rate above 0 is "
                            f"1/{out['n_real']}, so a TPR at a lower FPR is the TPR at FPR 0")
    out["by_manipulation"] = metrics_by_manipulation(y_true, p_fake, methods) if methods is not None else {}
    if frames is not None:
        fy, fp = _as_arrays(*frames)
        out["frame_auc"] = _auc(fy, fp)
        out["n_frames"] = int(fy.size)
    return out


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)


def format_metrics_table(metrics: dict, title: str = "") -> str:
    """A small human-readable table for the CLI: every accuracy-like number with its threshold and rule."""
    keys = ["n", "n_real", "n_fake", "threshold", "accuracy", "precision", "recall", "f1", "auc", "frame_auc",
            "ap", "eer", "log_loss", "ece", "brier"]
    lines = [title] if title else []
    for k in keys:
        if k not in metrics:
            continue
        text = _num(metrics[k])
        if k == "threshold" and metrics.get("threshold_method"):
            text += f" ({metrics['threshold_method']})"
        lines.append(f"  {k:<10} {text}")
    if metrics.get("tpr_at_fpr"):
        pairs = metrics["tpr_at_fpr"].items()
        lines.append("  tpr@fpr    " + ", ".join(f"{_num(v)} at FPR {k}" for k, v in pairs))
    cm = metrics.get("confusion_matrix")
    if cm:
        lines.append("  confusion (rows true, cols predicted; REAL, FAKE)")
        lines.append(f"    REAL {cm[0][0]:>6} {cm[0][1]:>6}")
        lines.append(f"    FAKE {cm[1][0]:>6} {cm[1][1]:>6}")
    by = metrics.get("by_manipulation") or {}
    if by:
        lines.append("  per manipulation (its FAKEs vs all REALs): method, AUC, FAKE, REAL, TPR at FPR 0.01")
        for name, m in by.items():
            tpr = (m.get("tpr_at_fpr") or {}).get("0.01", float("nan"))
            lines.append(f"    {name:<20} {_num(m['auc']):>7} {m['n_fake']:>6} {m['n_real']:>6} "
                         f"{_num(tpr):>7}")
    for note in metrics.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)
