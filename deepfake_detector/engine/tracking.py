"""Experiment tracking: TensorBoard event files in the run folder (``RUN/tensorboard/``).

Why TensorBoard: it is what researchers already open (``tensorboard --logdir runs``), it reads plain
files (no server, no account), and comparing runs is pointing it at the folder of runs. Each epoch's
metrics.csv row becomes scalars at ``step = epoch``; at the end of training the validation metrics
become scalars and the ROC and confusion-matrix plots become images. Tracking never stops a run: without
the ``tensorboard`` package, or when the writer fails, one warning says so and training goes on.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

__all__ = ["open_tensorboard", "log_epoch", "log_final"]

#: metrics.csv columns and the TensorBoard tag each becomes (grouped by what they are)
_EPOCH_TAGS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val@0.5", "val_precision": "val@0.5/precision", "val_recall": "val@0.5/recall",
    "val_f1": "val@0.5/f1", "val_auc": "val/auc", "val_ap": "val/ap", "val_eer": "val/eer", "lr": "lr",
    "seconds": "time/epoch_seconds",
}
_FINAL_KEYS = ("auc", "frame_auc", "ap", "eer", "accuracy", "f1", "ece", "brier", "log_loss")


def open_tensorboard(log_dir: str | os.PathLike, purge_step: Optional[int] = None) -> Any:
    """A ``SummaryWriter`` on ``log_dir``, or None (with one warning) when TensorBoard is unavailable.

    ``purge_step``: a resumed run starts at this epoch, so events a killed run wrote for it and later are
    hidden instead of shown twice.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        log.warning("no TensorBoard event files: %s (pip install tensorboard, or pass --no-tensorboard)", exc)
        return None
    try:
        return SummaryWriter(log_dir=os.fspath(log_dir), purge_step=purge_step)
    except OSError as exc:
        log.warning("no TensorBoard event files: cannot write %s (%s)", log_dir, exc.strerror or exc)
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def log_epoch(writer: Any, row: Mapping[str, Any]) -> None:
    """One epoch's metrics.csv row as scalars (validation accuracy, precision, recall, F1 at 0.5)."""
    step = int(row["epoch"])
    for key, tag in _EPOCH_TAGS.items():
        if _finite(row.get(key)):
            writer.add_scalar(tag, float(row[key]), step)
    writer.flush()


def log_final(writer: Any, metrics: Mapping[str, Any], images: Mapping[str, str | os.PathLike],
              step: int, prefix: str = "final_val") -> None:
    """The best epoch's metrics at the chosen threshold as scalars, and PNG plots as images, at ``step``."""
    for key in _FINAL_KEYS:
        if _finite(metrics.get(key)):
            writer.add_scalar(f"{prefix}/{key}", float(metrics[key]), step)
    for key, value in (metrics.get("tpr_at_fpr") or {}).items():
        if _finite(value):
            writer.add_scalar(f"{prefix}/tpr_at_fpr_{key}", float(value), step)
    for name, path in images.items():
        image = _read_png(path)
        if image is not None:
            writer.add_image(f"{prefix}/{name}", image, step, dataformats="HWC")
    writer.flush()


def _read_png(path: str | os.PathLike) -> Any:
    """An RGB ``[H, W, 3]`` uint8 array of a PNG, or None when it is not there."""
    import numpy as np
    from PIL import Image

    if not Path(path).is_file():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))
