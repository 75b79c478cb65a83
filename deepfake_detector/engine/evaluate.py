"""Evaluating a trained checkpoint on the clips of a cache, in one place.

``deepfake-detector evaluate``, the demo and the end of training all go through
:func:`prepare_evaluation` (load the checkpoint, rebuild the network on its device, choose the clips)
and :meth:`PreparedEvaluation.run` (predict them with the test transform, score them at the
threshold); :func:`evaluate_checkpoint` is the two in one call. The result, :class:`EvalResult`,
writes ``metrics.json``, ``predictions.csv`` and the plots.

Why two steps: every mistake (no checkpoint, a bad config, no clips in the split, an output folder
that cannot take files) is reported before minutes of computing, and the caller gets to check its
output folder once the split (``auto``) is known.

Which clips: ``--split val`` / ``test`` take the training run's membership from ``splits.csv`` in
the checkpoint's run folder when it applies to this cache, else re-derive it like training did
(``split_rows`` with the run's seed and fraction); ``all`` is every usable clip.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import Checkpoint, read_checkpoint, to_builtin
from ..config import TrainConfig
from ..data.cache import Cache, ManifestRow
from ..data.dataset import ClipDataset, usable_rows
from ..device import amp_dtype as autocast_dtype
from ..device import resolve_device, use_channels_last
from ..errors import UserError
from ..metrics import compute_metrics
from ..utils import atomic_write_json
from .distributed import DistInfo, ShardSampler
from .loop import evaluate
from .run import RunFolder, run_splits, write_predictions_csv

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "NoClipsError",
    "PreparedEvaluation",
    "evaluate_checkpoint",
    "evaluate_rows",
    "prepare_evaluation",
    "select_rows",
]

SPLIT_CHOICES = ("auto", "val", "test", "all")


class NoClipsError(UserError):
    """The chosen split holds no usable labelled clip."""


@dataclass
class EvalResult:
    """Predictions of one split at one threshold, and the metrics they give."""

    split: str
    threshold: float
    seq_len: int
    paths: list[str]
    y_true: np.ndarray
    p_fake: np.ndarray
    loss: float
    metrics: dict  # ``metrics.compute_metrics`` at ``threshold``

    def report(self, **extra: Any) -> dict:
        """The metrics with ``extra`` entries (where they came from), as ``metrics.json`` holds them."""
        return {**self.metrics, **extra}

    def write_metrics_json(self, path: str | os.PathLike, metrics: Optional[dict] = None) -> None:
        atomic_write_json(path, to_builtin(self.metrics if metrics is None else metrics))

    def write_predictions(self, path: str | os.PathLike) -> None:
        """``path,label,p_fake,predicted`` per video, in the order evaluated."""
        write_predictions_csv(path, self.paths, self.y_true, self.p_fake, self.threshold)

    def write_plots(self, out_dir: str | os.PathLike, cm_title: str, roc_title: str) -> None:
        """``confusion_matrix.png`` and ``roc.png``."""
        from ..plots import plot_confusion_matrix, plot_roc

        out_dir = Path(out_dir)
        plot_confusion_matrix(self.metrics["confusion_matrix"], out_dir / "confusion_matrix.png",
                              title=cm_title)
        plot_roc(self.y_true, self.p_fake, out_dir / "roc.png", title=roc_title)

    def write(self, out_dir: str | os.PathLike, metrics: Optional[dict] = None, *,
              cm_title: Optional[str] = None, roc_title: Optional[str] = None) -> None:
        """What ``evaluate`` writes: metrics.json (``metrics``, default the plain metrics), predictions.csv,
        confusion_matrix.png and roc.png."""
        out_dir = Path(out_dir)
        self.write_metrics_json(out_dir / "metrics.json", metrics)
        self.write_predictions(out_dir / "predictions.csv")
        self.write_plots(out_dir, cm_title or f"{self.split}: threshold {self.threshold:.3f}",
                         roc_title or f"ROC ({self.split})")


def evaluate_rows(
    model: nn.Module,
    cache: Cache | str,
    rows: list[ManifestRow],
    seq_len: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    workers: int = 0,
    info: Optional[DistInfo] = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Predict manifest ``rows`` (eval transform); ``{loss, y_true, p_fake, paths, ...}`` in row order.

    Under DDP each rank predicts its shard and every rank gets all the predictions.
    """
    info = info or DistInfo()
    ds = ClipDataset(cache, rows, seq_len, train=False, return_index=True, raw=True)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=ShardSampler(len(ds), info.world_size, info.rank),
        generator=torch.Generator().manual_seed(0),  # never draw the global RNG
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = evaluate(model, loader, device, amp_dtype=amp_dtype, dist_info=info, progress=progress, desc=desc)
    out["paths"] = [ds.paths[i] for i in out["index"]]
    return out


def select_rows(
    cache: Cache, split: str, train_cfg: TrainConfig, include_no_face: bool = False,
    run: Optional[RunFolder] = None,
) -> tuple[str, list[ManifestRow]]:
    """``(split, rows)`` to evaluate: ``auto`` is test when the cache has a test split, else val.

    val / test are the training run's (``run``'s splits.csv, else re-derived from the same rows with
    its seed and fraction); ``include_no_face`` beyond what the run trained on re-derives them from
    the larger set of rows.
    """
    rows = cache.rows()
    if split == "auto":
        split = "test" if any(r.split == "test" for r in usable_rows(rows, include_no_face)) else "val"
    if split == "all":
        selected = usable_rows(rows, include_no_face=include_no_face)
    else:
        own_rows = not include_no_face or train_cfg.include_no_face  # the rows the run split
        selected = run_splits(
            run if own_rows else None, rows, train_cfg.val_fraction, train_cfg.seed,
            # the split must be made from the same rows as in training to re-create its validation set
            include_no_face=include_no_face or train_cfg.include_no_face,
        )[split]
    if not selected:
        raise NoClipsError(f"{cache}: no usable labelled clips in split {split!r}")
    return split, selected


@dataclass
class PreparedEvaluation:
    """A checkpoint's network on its device and the clips to score, checked; nothing computed yet."""

    model: nn.Module
    cache: Cache
    split: str
    rows: list[ManifestRow]
    threshold: float
    seq_len: int
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    checkpoint: Checkpoint = field(repr=False, default=None)  # type: ignore[assignment]

    def run(self, batch_size: int = 8, workers: int = 0, info: Optional[DistInfo] = None,
            progress: bool = True, desc: Optional[str] = None) -> EvalResult:
        """Predict every clip and score the predictions at the threshold."""
        ev = evaluate_rows(self.model, self.cache, self.rows, self.seq_len, batch_size, self.device,
                           self.amp_dtype, workers, info, progress, desc=desc or f"evaluate {self.split}")
        metrics = compute_metrics(ev["y_true"], ev["p_fake"], self.threshold)
        return EvalResult(split=self.split, threshold=self.threshold, seq_len=self.seq_len, paths=ev["paths"],
                          y_true=ev["y_true"], p_fake=ev["p_fake"], loss=ev["loss"], metrics=metrics)


def prepare_evaluation(
    checkpoint: str | os.PathLike | Checkpoint,
    cache: Cache | str | os.PathLike,
    split: str = "auto",
    *,
    threshold: Optional[float] = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    include_no_face: bool = False,
    model: Optional[nn.Module] = None,
    rows: Optional[list[ManifestRow]] = None,
) -> PreparedEvaluation:
    """Load ``checkpoint`` (a path or a :class:`Checkpoint`), rebuild its network on ``device`` and choose
    the clips of ``split`` (see :func:`select_rows`); every problem is a ``UserError`` here.

    ``threshold`` defaults to the checkpoint's (chosen on validation). ``model`` (the network already
    holding these weights, as it trained) and ``rows`` (the clips) skip the rebuild and the choice: the
    end of training scores its own test split with them.
    """
    where = "checkpoint" if isinstance(checkpoint, Checkpoint) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    try:
        ckpt.model_config()
        train_cfg = ckpt.train_config()
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: unusable config in checkpoint ({exc})") from exc
    dev = resolve_device(device) if isinstance(device, str) else device
    if model is None:
        model = _rebuild(ckpt, where, dev)
    cache = Cache.open(cache)
    if rows is None:
        run = None if isinstance(checkpoint, Checkpoint) else RunFolder.next_to(checkpoint)
        split, rows = select_rows(cache, split, train_cfg, include_no_face, run)
    _warn_if_preprocessing_differs(ckpt.section("preprocess"), cache, where)
    return PreparedEvaluation(
        model=model, cache=cache, split=split, rows=rows, seq_len=int(train_cfg.seq_len), device=dev,
        threshold=threshold if threshold is not None else float(ckpt.threshold or 0.5),
        amp_dtype=autocast_dtype(dev, amp), checkpoint=ckpt,
    )


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | Checkpoint,
    cache: Cache | str | os.PathLike,
    split: str = "auto",
    *,
    batch_size: int = 8,
    workers: int = 0,
    info: Optional[DistInfo] = None,
    progress: bool = True,
    desc: Optional[str] = None,
    **prepare: Any,
) -> EvalResult:
    """:func:`prepare_evaluation` then :meth:`PreparedEvaluation.run`: a checkpoint's metrics on a split."""
    prepared = prepare_evaluation(checkpoint, cache, split, **prepare)
    return prepared.run(batch_size, workers, info, progress, desc)


def _rebuild(ckpt: Checkpoint, where: Any, device: torch.device) -> nn.Module:
    """The checkpoint's network in eval mode on ``device`` (channels_last where the device rule says so)."""
    from ..models import model_from_checkpoint

    model = model_from_checkpoint(ckpt, where)
    model.to(device).eval()
    if use_channels_last(device):
        model.set_channels_last(True)
    return model


def _warn_if_preprocessing_differs(trained: dict, cache: Cache, checkpoint: Any) -> None:
    """One warning line when the cache's clips were made differently (frames, size, margin, detector...)
    from the clips the checkpoint was trained on: its metrics then say little about the model."""
    from ..data.preprocess import CLIP_KEYS

    if not trained or not cache.has_meta():
        return
    try:
        data = cache.preprocess
    except UserError:
        return
    diff = [
        f"{k} {data[k]!r} (trained on {trained[k]!r})"
        for k in CLIP_KEYS
        if k in data and k in trained and data[k] != trained[k]
    ]
    if diff:
        log.warning(
            "%s was preprocessed differently from the clips %s was trained on: %s; these metrics may not "
            "reflect the model (re-run 'preprocess' with the checkpoint's settings)",
            cache,
            checkpoint,
            ", ".join(diff),
        )
