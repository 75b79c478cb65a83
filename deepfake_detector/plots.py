"""Training and evaluation plots (PNG), drawn with Matplotlib's Agg canvas only.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state, no GUI, safe in worker
threads and servers) and written atomically, so a killed run never leaves a truncated PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from .utils import atomic_write_bytes

__all__ = ["plot_loss", "plot_accuracy", "plot_confusion_matrix", "plot_roc", "plot_roc_by_manipulation",
           "plot_pr", "plot_score_histogram", "plot_reliability", "save_figure", "figure_png"]

_MARK = {"marker": "o", "markersize": 8, "markerfacecolor": "none", "markeredgewidth": 2, "color": "black"}


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (files, TensorBoard images)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    atomic_write_bytes(path, figure_png(fig))


def _arrays(y_true: Any, p_fake: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.clip(np.nan_to_num(np.asarray(p_fake, dtype=np.float64).reshape(-1), nan=0.5), 0.0, 1.0)
    return y, p


def _curves(history: Sequence[dict], keys: Sequence[tuple[str, str]], ylabel: str, title: str,
            path: str | os.PathLike, best_epoch: Optional[int] = None) -> None:
    from matplotlib.ticker import MaxNLocator

    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    epochs = [int(r["epoch"]) for r in history]
    for key, label in keys:
        ys = [float(r.get(key, "nan")) for r in history]
        ax.plot(epochs, ys, marker="o", label=label)
    if best_epoch is not None and best_epoch in epochs:
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1.5, label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_loss(history: Sequence[dict], path: str | os.PathLike, best_epoch: Optional[int] = None) -> None:
    """Training and validation loss per epoch (rows of metrics.csv), the best epoch marked."""
    _curves(history, [("train_loss", "train"), ("val_loss", "validation")], "loss", "Loss", path, best_epoch)


def plot_accuracy(history: Sequence[dict], path: str | os.PathLike, best_epoch: Optional[int] = None) -> None:
    """Training and validation accuracy per epoch (validation at threshold 0.5), the best epoch marked."""
    _curves(history, [("train_accuracy", "train"), ("val_accuracy", "validation (threshold 0.5)")],
            "accuracy", "Accuracy", path, best_epoch)


def plot_confusion_matrix(
    cm: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] = ("REAL", "FAKE"),
    title: str = "Confusion matrix",
) -> None:
    """2x2 confusion matrix (rows true, columns predicted): counts and the share of each true class."""
    import seaborn as sns

    cm = np.asarray(cm, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    text = np.array([[f"{cm[i, j]}\n{100 * share[i, j]:.1f} %" for j in range(cm.shape[1])]
                     for i in range(cm.shape[0])])
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    sns.heatmap(share, annot=text, fmt="", cmap="Blues", vmin=0.0, vmax=1.0, cbar=False, ax=ax,
                xticklabels=list(class_names), yticklabels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row % of that class)")
    ax.set_title(title)
    save_figure(fig, path)


def _roc_axes(ax: Any, title: str) -> None:
    """The frame every ROC plot shares, so overall and per-manipulation curves read alike."""
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (REAL called FAKE)")
    ax.set_ylabel("true positive rate (FAKE caught)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def _roc_line(ax: Any, y: np.ndarray, p: np.ndarray, label: str) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    ax.plot(fpr, tpr, label=f"{label}AUC = {roc_auc_score(y, p):.3f}")


def plot_roc(y_true: Any, p_fake: Any, path: str | os.PathLike, title: str = "ROC curve",
             threshold: Optional[float] = None) -> None:
    """ROC curve with its AUC and, with ``threshold``, the operating point it gives; a single-class set
    gets an explanatory note instead of a curve."""
    y, p = _arrays(y_true, p_fake)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    _roc_axes(ax, title)
    if y.size and len(np.unique(y)) == 2:
        _roc_line(ax, y, p, "")
        if threshold is not None:
            pred = p >= threshold
            fpr, tpr = float(pred[y == 0].mean()), float(pred[y == 1].mean())
            ax.plot([fpr], [tpr], linestyle="none", label=f"threshold {threshold:.3f} (FPR {fpr:.3f}, "
                    f"TPR {tpr:.3f})", **_MARK)
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nneeds REAL and FAKE samples", ha="center", va="center")
    save_figure(fig, path)


def plot_roc_by_manipulation(y_true: Any, p_fake: Any, methods: Sequence[str], path: str | os.PathLike,
                             title: str = "ROC per manipulation") -> None:
    """One ROC curve per manipulation method (all REAL videos against that method's FAKEs), in the frame
    and style of :func:`plot_roc`, plus the overall curve for reference."""
    y, p = _arrays(y_true, p_fake)
    m = np.asarray([str(x or "(unknown)") for x in methods], dtype=object)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    _roc_axes(ax, title)
    if (y == 0).any() and (y == 1).any():
        _roc_line(ax, y, p, "all, ")
        for name in sorted(set(m[y == 1].tolist())):
            keep = (y == 0) | (m == name)
            _roc_line(ax, y[keep], p[keep], f"{name}, ")
        ax.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nneeds REAL and FAKE samples", ha="center", va="center")
    save_figure(fig, path)


def plot_pr(y_true: Any, p_fake: Any, path: str | os.PathLike, title: str = "Precision-recall curve",
            threshold: Optional[float] = None) -> None:
    """Precision (of FAKE verdicts) against recall (FAKE caught), with its AP and the operating point."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y, p = _arrays(y_true, p_fake)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    if y.size and len(np.unique(y)) == 2:
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"AP = {average_precision_score(y, p):.3f}")
        ax.axhline(float(y.mean()), linestyle="--", color="grey", linewidth=1, label="share of FAKE")
        if threshold is not None and (p >= threshold).any():
            pred = p >= threshold
            ax.plot([float(pred[y == 1].mean())], [float(y[pred].mean())], linestyle="none",
                    label=f"threshold {threshold:.3f}", **_MARK)
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "PR curve undefined:\nneeds REAL and FAKE samples", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("recall (FAKE caught)")
    ax.set_ylabel("precision (FAKE verdicts that are FAKE)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    save_figure(fig, path)


def plot_score_histogram(y_true: Any, p_fake: Any, path: str | os.PathLike, title: str = "Scores",
                         threshold: Optional[float] = None, xlabel: str = "P(FAKE)") -> None:
    """Histograms of the scores of REAL and of FAKE videos, and the threshold between them."""
    y, p = _arrays(y_true, p_fake)
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    for cls, name, colour in ((0, "REAL", "tab:blue"), (1, "FAKE", "tab:red")):
        if (y == cls).any():
            n = int((y == cls).sum())
            ax.hist(p[y == cls], bins=bins, alpha=0.55, color=colour, label=f"{name} ({n})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2,
                   label=f"threshold {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("videos")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)


def plot_reliability(y_true: Any, curves: Sequence[tuple[str, Any]], path: str | os.PathLike,
                     title: str = "Reliability diagram", bins: int = 15) -> None:
    """Reliability diagram: per bin of the score, the share of FAKE videos against the mean score (the
    diagonal is perfect calibration), one line per ``(label, scores)`` (e.g. before and after scaling)."""
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for label, scores in curves:
        _, p = _arrays(y, scores)
        idx = np.minimum((p * bins).astype(np.int64), bins - 1)
        n = np.bincount(idx, minlength=bins)
        full = n > 0
        mean_p = np.bincount(idx, weights=p, minlength=bins)[full] / n[full]
        share = np.bincount(idx, weights=y, minlength=bins)[full] / n[full]
        ax.plot(mean_p, share, marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("mean score in bin")
    ax.set_ylabel("share of FAKE videos in bin")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    save_figure(fig, path)
