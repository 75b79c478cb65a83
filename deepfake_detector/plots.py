"""Training and evaluation plots (PNG), drawn with Matplotlib's Agg canvas only.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot global state, no GUI, safe in worker
threads and servers) and written atomically, so a killed run never leaves a truncated PNG.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .utils import atomic_write_bytes

__all__ = ["plot_loss", "plot_accuracy", "plot_confusion_matrix", "plot_roc", "save_figure"]


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _curves(
    history: Sequence[dict], keys: Sequence[tuple[str, str]], ylabel: str, title: str, path: str | os.PathLike
) -> None:
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    epochs = [int(r["epoch"]) for r in history]
    for key, label in keys:
        ys = [float(r.get(key, "nan")) for r in history]
        ax.plot(epochs, ys, marker="o", label=label)
    ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_loss(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Training and validation loss per epoch (rows of metrics.csv)."""
    _curves(history, [("train_loss", "train"), ("val_loss", "validation")], "loss", "Loss", path)


def plot_accuracy(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Training and validation accuracy per epoch (rows of metrics.csv)."""
    _curves(
        history, [("train_accuracy", "train"), ("val_accuracy", "validation")], "accuracy", "Accuracy", path
    )


def plot_confusion_matrix(
    cm: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] = ("REAL", "FAKE"),
    title: str = "Confusion matrix",
) -> None:
    """Seaborn heat map of a 2x2 confusion matrix (rows true, columns predicted)."""
    import seaborn as sns

    cm = np.asarray(cm, dtype=np.int64)
    fig = _figure(4.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    sns.heatmap(
        cm,
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=False,
        ax=ax,
        xticklabels=list(class_names),
        yticklabels=list(class_names),
    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)


def plot_roc(y_true: Any, p_fake: Any, path: str | os.PathLike, title: str = "ROC curve") -> None:
    """ROC curve with its AUC; a single-class set gets an explanatory note instead of a curve."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.nan_to_num(np.asarray(p_fake, dtype=np.float64).reshape(-1), nan=0.5)
    fig = _figure(4.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    if y.size and len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y, p):.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "ROC undefined:\nneeds REAL and FAKE samples", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (REAL called FAKE)")
    ax.set_ylabel("true positive rate (FAKE caught)")
    ax.set_title(title)
    save_figure(fig, path)
