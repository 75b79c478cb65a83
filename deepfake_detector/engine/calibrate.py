"""Fitting a checkpoint's calibration on labelled videos after training (``deepfake-detector calibrate``).

Training fits a temperature on its validation split; this fits one on any labelled cache, typically the
user's own videos, without retraining: the weights and the raw decision threshold stay as they are, the
checkpoint's ``calibration`` entry is replaced (``calibration.Calibration``) and, the map being monotonic,
every verdict stays the same. On the training cache the default split is ``val`` (never the test
split: calibrating on it would flatter the test numbers); on another dataset's cache it is ``all``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..calibration import MIN_VIDEOS, Calibration, fit_calibration
from ..checkpoint import read_checkpoint, resolve_checkpoint_path, save_checkpoint
from ..data.cache import Cache
from ..errors import UserError
from ..model_card import MODEL_CARD_NAME, record_calibration
from .evaluate import cross_dataset_of, prepare_evaluation
from .run import RunFolder

log = logging.getLogger(__name__)

__all__ = ["CalibrationOutcome", "calibrate_checkpoint"]


@dataclass
class CalibrationOutcome:
    """What ``calibrate_checkpoint`` fitted and wrote."""

    calibration: Calibration
    note: str
    split: str
    checkpoint: Path  # the file written
    plot: Optional[Path]  # the reliability diagram
    replaced: Optional[dict]  # the calibration the checkpoint held before (None when it had none)


def calibrate_checkpoint(checkpoint: str | os.PathLike, cache: str | os.PathLike, split: str = "auto", *,
                         out: Optional[str | os.PathLike] = None, device: str = "auto", batch_size: int = 8,
                         workers: int = 0, progress: bool = True,
                         min_videos: int = MIN_VIDEOS) -> CalibrationOutcome:
    """Fit a temperature on the videos of ``split`` the model can score and store it in ``out`` (default:
    the checkpoint itself, rewritten atomically); write ``calibration.png`` beside it."""
    path = resolve_checkpoint_path(checkpoint)
    ckpt = read_checkpoint(path)
    cache = Cache.open(cache)
    if split == "auto":
        cross = cross_dataset_of(ckpt.train_config(), cache, RunFolder.next_to(path))
        split = "all" if cross else "val"
    prepared = prepare_evaluation(path, cache, split, device=device, calibration=False)
    raw = prepared.predict(batch_size, workers, progress=progress, desc=f"calibrate {prepared.split}")
    mask, y = raw["mask"], prepared.score(raw).y_true
    fitted_on = {"split": prepared.split, "cache": Path(os.fspath(cache)).resolve().name, "when": "calibrate"}
    cal, note = fit_calibration(y[mask], raw["p_raw"][mask], ckpt.threshold, fitted_on, min_videos)
    if cal is None:
        raise UserError(f"{cache}, split {prepared.split}: {note}; give more labelled videos (--split all)")
    replaced = ckpt.calibration
    ckpt.calibration = cal.to_dict()
    target = Path(out) if out is not None else path
    save_checkpoint(ckpt, target)
    plot = target.parent / "calibration.png"
    try:
        from ..plots import plot_reliability

        p_raw = raw["p_raw"][mask]
        plot_reliability(y[mask], [("before calibration", p_raw), (f"after (T = {cal.temperature:.3g})",
                                                                    np.asarray(cal.map(p_raw)))],
                         plot, title=f"Reliability ({prepared.split} of {fitted_on['cache']})")
    except OSError as exc:  # the calibration is saved; the picture is a bonus
        log.warning("could not write %s: %s", plot, exc)
        plot = None
    card = target.parent / MODEL_CARD_NAME
    if target.name == "best.pt" and card.is_file() and record_calibration(card, cal.to_dict()):
        log.info("%s: calibration section updated", card)
    return CalibrationOutcome(calibration=cal, note=note, split=prepared.split, checkpoint=target, plot=plot,
                              replaced=replaced)
