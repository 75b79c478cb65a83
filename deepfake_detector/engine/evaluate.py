"""Evaluating a trained checkpoint on the videos of a cache, in one place.

``deepfake-detector evaluate``, ``calibrate``, the demo and the end of training all go through
:func:`prepare_evaluation` (load the checkpoint, rebuild the network on its device, choose the videos)
and :meth:`PreparedEvaluation.run` (predict them with the test transform, score them at the
threshold); :func:`evaluate_checkpoint` is the two in one call. The result, :class:`EvalResult`,
writes ``metrics.json``, ``predictions.csv`` and the plots.

Why two steps: every mistake (no checkpoint, a bad config, no videos in the split, an output folder
that cannot take files) is reported before minutes of computing, and the caller gets to check its
output folder once the split (``auto``) is known.

Which videos: ``--split val`` / ``test`` take the training run's membership from ``splits.csv`` in
the checkpoint's run folder when it applies to this cache, else re-derive it like training did
(``split_rows`` with the run's seed and fraction); ``all`` is every labelled video.

Every video counts: a benchmark that lets hard videos vanish flatters the detector, so the videos of
the split that have no face clip are scored too. A ``no_face`` video is scored on its centre crops
(or gets 0.5 with ``no_face_score="0.5"``, the DFDC convention), a video that could not be read gets
0.5, and ``metrics.json`` counts them (``n_total``, ``n_scored``, ``by_status``). ``scored_only=True``
is the explicit way to leave them out. In a validation split carved out by training, such a video
belongs to the split when its group does.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..calibration import Calibration
from ..checkpoint import Checkpoint, read_checkpoint, to_builtin
from ..config import TrainConfig
from ..constants import NO_FACE, OK
from ..data.cache import Cache, ManifestRow
from ..data.dataset import ClipDataset, fit_length_indices, usable_rows, video_tracks
from ..data.records import label_to_index, normalize_label
from ..device import amp_dtype as autocast_dtype
from ..device import resolve_device, use_channels_last
from ..errors import UserError
from ..metrics import brier_score, evaluation_metrics, expected_calibration_error, threshold_at_fpr
from ..utils import atomic_write_json
from .distributed import DistInfo, ShardSampler
from .loop import evaluate
from .run import SPLITS, RunFolder, run_splits, write_predictions_csv

log = logging.getLogger(__name__)

__all__ = [
    "EvalResult",
    "NoClipsError",
    "PreparedEvaluation",
    "evaluate_checkpoint",
    "evaluate_rows",
    "cross_dataset_of",
    "every_video",
    "prepare_evaluation",
    "select_rows",
    "NO_FACE_SCORES",
    "UNSCORED_SCORE",
]

SPLIT_CHOICES = ("auto", "val", "test", "all")
#: how a ``no_face`` video is scored: the model on its centre crops, or 0.5 (DFDC's convention)
NO_FACE_SCORES = ("centre", "0.5")
#: the score of a video the model could not see (unreadable, missing, too short, no clip)
UNSCORED_SCORE = 0.5
GIVEN_THRESHOLD = "given (--threshold)"  # threshold_method of a threshold set by hand


class NoClipsError(UserError):
    """The chosen split holds no labelled video."""


@dataclass
class EvalResult:
    """Scores of one split at one threshold, and the metrics they give (one entry per video)."""

    split: str
    threshold: float
    seq_len: int
    paths: list[str]
    y_true: np.ndarray
    p_fake: np.ndarray  # the scores reported: calibrated when a calibration was applied, 0.5 when unscored
    loss: float  # cross-entropy of the model on the videos it scored (uncalibrated)
    metrics: dict  # ``metrics.evaluation_metrics`` at ``threshold`` and the counts
    threshold_method: str = ""
    statuses: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    p_raw: Optional[np.ndarray] = None  # the model's own scores (NaN for videos it did not score)
    calibration: Optional[Calibration] = None  # the one applied to ``p_fake``

    def report(self, **extra: Any) -> dict:
        """The metrics with ``extra`` entries (where they came from), as ``metrics.json`` holds them."""
        return {**self.metrics, **extra}

    def write_metrics_json(self, path: str | os.PathLike, metrics: Optional[dict] = None) -> None:
        atomic_write_json(path, to_builtin(self.metrics if metrics is None else metrics))

    def write_predictions(self, path: str | os.PathLike) -> None:
        """``path,label,p_fake,predicted,status,method`` per video, in the order evaluated."""
        extra = {"status": list(self.statuses), "method": list(self.methods)} if self.statuses else None
        write_predictions_csv(path, self.paths, self.y_true, self.p_fake, self.threshold, extra)

    def write_plots(self, out_dir: str | os.PathLike, cm_title: str, roc_title: str) -> list[str]:
        """``confusion_matrix.png``, ``roc.png`` (operating point marked), ``pr.png``, ``scores.png``
        (REAL vs FAKE histograms), ``calibration.png`` (reliability, before and after calibration) and,
        with manipulation methods, ``roc_by_manipulation.png``; returns the file names."""
        from .. import plots

        out_dir, thr, y, p = Path(out_dir), self.threshold, self.y_true, self.p_fake
        plots.plot_confusion_matrix(self.metrics["confusion_matrix"], out_dir / "confusion_matrix.png",
                                    title=cm_title)
        plots.plot_roc(y, p, out_dir / "roc.png", title=roc_title, threshold=thr)
        plots.plot_pr(y, p, out_dir / "pr.png", title=f"Precision-recall ({self.split})", threshold=thr)
        kind = "calibrated P(FAKE)" if self.calibration else "score (uncalibrated P(FAKE))"
        plots.plot_score_histogram(y, p, out_dir / "scores.png", threshold=thr, xlabel=kind,
                                   title=f"Scores of REAL and FAKE ({self.split})")
        written = ["confusion_matrix.png", "roc.png", "pr.png", "scores.png", "calibration.png"]
        curves = [("as scored" if self.calibration is None else "before calibration", self._uncalibrated())]
        if self.calibration is not None:
            curves.append((f"after (T = {self.calibration.temperature:.3g})", p))
        plots.plot_reliability(y, curves, out_dir / "calibration.png", title=f"Reliability ({self.split})")
        if self.metrics.get("by_manipulation"):
            plots.plot_roc_by_manipulation(y, p, self.methods, out_dir / "roc_by_manipulation.png",
                                           title=f"ROC per manipulation ({self.split})")
            written.append("roc_by_manipulation.png")
        return written

    def _uncalibrated(self) -> np.ndarray:
        if self.p_raw is None:
            return self.p_fake
        return np.where(np.isnan(self.p_raw), self.p_fake, self.p_raw)

    def write(self, out_dir: str | os.PathLike, metrics: Optional[dict] = None, *,
              cm_title: Optional[str] = None, roc_title: Optional[str] = None) -> list[str]:
        """What ``evaluate`` writes: metrics.json (``metrics``, default the plain metrics), predictions.csv
        and the plots of :meth:`write_plots`; returns the file names."""
        out_dir = Path(out_dir)
        self.write_metrics_json(out_dir / "metrics.json", metrics)
        self.write_predictions(out_dir / "predictions.csv")
        plots = self.write_plots(out_dir, cm_title or f"{self.split}: threshold {self.threshold:.3f}",
                                 roc_title or f"ROC ({self.split})")
        return ["metrics.json", "predictions.csv", *plots]


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
    frames: bool = False,
) -> dict:
    """Predict manifest ``rows`` (eval transform); ``{loss, y_true, p_fake, paths, ...}`` in row order,
    and with ``frames`` each frame scored alone (``p_frames`` ``[N, seq_len]``).

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
    out = evaluate(model, loader, device, amp_dtype=amp_dtype, dist_info=info, progress=progress, desc=desc,
                   frames=frames)
    out["paths"] = [ds.paths[i] for i in out["index"]]
    return out


# --------------------------------------------------------------------------------------------------
# Which videos
# --------------------------------------------------------------------------------------------------


def _labelled(rows: list[ManifestRow]) -> list[ManifestRow]:
    """Labelled videos (their main face's row; the other faces join in :meth:`PreparedEvaluation.predict`)."""
    return [r for r in rows if normalize_label(r.label) is not None and not r.track]


def max_per_video(p_tracks: np.ndarray, owner: list[int], n: int) -> np.ndarray:
    """Each video's highest track score: a video is as fake as its most suspicious face."""
    out = np.full(n, -np.inf)
    np.maximum.at(out, np.asarray(owner, dtype=np.int64), np.asarray(p_tracks, dtype=np.float64))
    return out


def every_video(rows: list[ManifestRow], splits: dict[str, list[ManifestRow]], split: str
                ) -> list[ManifestRow]:
    """The run's ``split`` plus the labelled videos it could not train or validate on (no clip, no face)
    that belong to it: the dataset puts them there, or (a validation split carved out by training)
    their group is in it."""
    base = splits[split]
    taken = {r.path for name in SPLITS for r in splits.get(name, [])}
    carved = split == "val" and not any(r.split == "val" for r in base)
    groups = {r.group or r.path for r in base}
    extra = [r for r in _labelled(rows) if r.path not in taken and (
        r.split == split
        or (carved and r.split not in ("test", "val") and (r.group or r.path) in groups))]
    return list(base) + extra


def select_rows(
    cache: Cache, split: str, train_cfg: TrainConfig, include_no_face: bool = False,
    run: Optional[RunFolder] = None, scored_only: bool = False,
) -> tuple[str, list[ManifestRow]]:
    """``(split, rows)`` to evaluate: ``auto`` is test when the cache has a test split, else val.

    By default every labelled video of the split (see the module docstring). ``scored_only`` keeps only
    the clips the model can score (status ok; ``no_face`` clips too with ``include_no_face``), the
    behaviour before every video counted. val / test are the training run's (``run``'s splits.csv,
    else re-derived from the same rows with its seed and fraction).
    """
    rows = cache.rows()
    if split == "auto":
        pool = usable_rows(rows, include_no_face) if scored_only else _labelled(rows)
        split = "test" if any(r.split == "test" for r in pool) else "val"
    if split == "all":
        selected = usable_rows(rows, include_no_face=include_no_face) if scored_only else _labelled(rows)
    elif scored_only:
        own_rows = not include_no_face or train_cfg.include_no_face  # the rows the run split
        selected = run_splits(
            run if own_rows else None, rows, train_cfg.val_fraction, train_cfg.seed,
            # the split must be made from the same rows as in training to re-create its validation set
            include_no_face=include_no_face or train_cfg.include_no_face,
        )[split]
    else:
        splits = run_splits(run, rows, train_cfg.val_fraction, train_cfg.seed, train_cfg.include_no_face)
        selected = every_video(rows, splits, split)
    if not selected:
        raise NoClipsError(f"{cache}: no labelled videos in split {split!r}")
    return split, selected


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


@dataclass
class PreparedEvaluation:
    """A checkpoint's network on its device and the videos to score, checked; nothing computed yet.

    ``threshold`` is on the reported scores (calibrated when ``calibration`` is applied); with
    ``threshold_at_fpr`` it is chosen after scoring, on the split's own REAL videos.
    """

    model: nn.Module
    cache: Cache
    split: str
    rows: list[ManifestRow]
    threshold: float
    seq_len: int
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    checkpoint: Checkpoint = field(repr=False, default=None)  # type: ignore[assignment]
    threshold_method: str = ""
    threshold_at_fpr: Optional[float] = None
    calibration: Optional[Calibration] = None
    calibration_note: str = ""  # why none is applied
    no_face_score: str = "centre"
    cross_dataset: Optional[dict] = None

    def scored(self, row: ManifestRow) -> bool:
        """Whether the model scores this video (else it gets :data:`UNSCORED_SCORE`)."""
        if not row.clip or row.status not in (OK, NO_FACE):
            return False
        return row.status == OK or self.no_face_score == "centre"

    def run(self, batch_size: int = 8, workers: int = 0, info: Optional[DistInfo] = None,
            progress: bool = True, desc: Optional[str] = None) -> EvalResult:
        """Predict every video the model can see, give the others their documented score, and compute the
        metrics at the threshold (:meth:`predict` then :meth:`score`)."""
        return self.score(self.predict(batch_size, workers, info, progress, desc))

    def predict(self, batch_size: int = 8, workers: int = 0, info: Optional[DistInfo] = None,
                progress: bool = True, desc: Optional[str] = None) -> dict:
        """The model's raw scores: ``{mask, p_raw, loss, frames}`` (NaN where it did not score)."""
        mask = np.array([self.scored(r) for r in self.rows], dtype=bool)
        scored_rows = [r for r, m in zip(self.rows, mask) if m]
        p_raw = np.full(len(self.rows), np.nan)
        out: dict = {"mask": mask, "p_raw": p_raw, "loss": float("nan"), "frames": None}
        if scored_rows:
            tracks, owner = video_tracks(scored_rows, self.cache.rows())  # every face of each video
            ev = evaluate_rows(self.model, self.cache, tracks, self.seq_len, batch_size, self.device,
                               self.amp_dtype, workers, info, progress, desc=desc or f"evaluate {self.split}",
                               frames=True)
            single = len(tracks) == len(scored_rows)
            p_raw[mask] = ev["p_fake"] if single else max_per_video(ev["p_fake"], owner, len(scored_rows))
            out["loss"] = ev["loss"]
            if "p_frames" in ev:  # frame scores of the main faces
                main = np.flatnonzero(np.diff(np.r_[-1, owner]))  # each video's first (main) track
                p_frames = ev["p_frames"] if single else np.asarray(ev["p_frames"])[main]
                out["frames"] = _frame_scores(scored_rows, p_frames, self.seq_len)
        return out

    def set_calibration(self, calibration: Optional[Calibration]) -> None:
        """Apply ``calibration`` from now on; the checkpoint's threshold is mapped through it."""
        self.checkpoint.calibration = calibration.to_dict() if calibration is not None else None
        cal, note, thr, method = _scoring(self.checkpoint, self.checkpoint.train_config(), None, True)
        self.calibration, self.calibration_note = cal, note
        if self.threshold_method != GIVEN_THRESHOLD:
            self.threshold, self.threshold_method = thr, method

    def score(self, raw: dict) -> EvalResult:
        """The metrics of :meth:`predict`'s raw scores, calibrated when a calibration is applied."""
        mask, p_raw = raw["mask"], raw["p_raw"]
        y = np.array([label_to_index(normalize_label(r.label) or "") for r in self.rows], dtype=np.int64)
        p = np.asarray(self.calibration.apply(p_raw), dtype=np.float64) if self.calibration else p_raw.copy()
        p[~mask] = UNSCORED_SCORE
        threshold, method = self._threshold(y, p)
        methods = [r.method or "" for r in self.rows]
        metrics = evaluation_metrics(y, p, threshold, method, methods=methods, frames=raw["frames"])
        metrics.update(self._accounting(mask, y, p_raw, p, metrics))
        return EvalResult(split=self.split, threshold=threshold, seq_len=self.seq_len,
                          paths=[r.path for r in self.rows], y_true=y, p_fake=p, loss=raw["loss"],
                          metrics=metrics, threshold_method=method, statuses=[r.status for r in self.rows],
                          methods=methods, p_raw=p_raw, calibration=self.calibration)

    def _threshold(self, y: np.ndarray, p: np.ndarray) -> tuple[float, str]:
        if self.threshold_at_fpr is None:
            return self.threshold, self.threshold_method
        thr = threshold_at_fpr(y, p, self.threshold_at_fpr)
        if np.isnan(thr):
            raise UserError(f"--threshold-at-fpr needs REAL videos in the {self.split} split; it has none")
        return thr, f"fpr:{self.threshold_at_fpr:g} on this split's {int((y == 0).sum())} REAL videos"

    def _accounting(self, mask: np.ndarray, y: np.ndarray, p_raw: np.ndarray, p: np.ndarray,
                    metrics: dict) -> dict:
        """Counts of every video, the calibration applied and the notes that say what was done to whom."""
        statuses = Counter(r.status for r in self.rows)
        no_face = statuses.get(NO_FACE, 0)
        unreadable = len(self.rows) - statuses.get(OK, 0) - no_face
        notes = metrics["notes"]
        if no_face:
            centre = self.no_face_score == "centre"
            how = "on centre crops" if centre else f"{UNSCORED_SCORE} (--no-face-score)"
            no_clip = sum(1 for r in self.rows if r.status == NO_FACE and not r.clip)
            extra = f"; {no_clip} of them have no clip and got {UNSCORED_SCORE}" if no_clip and centre else ""
            notes.append(f"{no_face} of {len(self.rows)} videos had no face found: scored {how}{extra}")
        if unreadable:
            notes.append(f"{unreadable} of {len(self.rows)} videos could not be read (no clip): scored "
                         f"{UNSCORED_SCORE}")
        if self.cross_dataset:
            notes.append(f"cross-dataset: trained on {self.cross_dataset['trained_on']}, evaluated on "
                         f"{self.cross_dataset['evaluated_on']}")
        raw = np.where(mask, p_raw, UNSCORED_SCORE)
        out = {
            "n_total": len(self.rows), "n_scored": int(mask.sum()), "n_no_face": no_face,
            "n_unreadable": unreadable, "by_status": dict(sorted(statuses.items())),
            "no_face_score": "centre-crop" if self.no_face_score == "centre" else UNSCORED_SCORE,
            "unscored_score": UNSCORED_SCORE,
            "score": "calibrated probability" if self.calibration else "uncalibrated score",
            "calibration": self._calibration_report(y, raw, p),
            "cross_dataset": self.cross_dataset,
        }
        return out

    def _calibration_report(self, y: np.ndarray, raw: np.ndarray, p: np.ndarray) -> dict:
        if self.calibration is None:
            return {"applied": False, "why": self.calibration_note or "the checkpoint has no calibration",
                    "ece": expected_calibration_error(y, raw)}
        c = self.calibration
        return {"applied": True, "method": "temperature", "temperature": c.temperature,
                "fitted_on": dict(c.fitted_on), "raw_threshold": c.raw_threshold,
                "ece_before": expected_calibration_error(y, raw),
                "ece_after": expected_calibration_error(y, p),
                "brier_before": brier_score(y, raw), "brier_after": brier_score(y, p)}


def _frame_scores(rows: list[ManifestRow], p_frames: np.ndarray, seq_len: int
                  ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(labels, scores)`` of every distinct frame the clip scores were made from: a clip shorter than
    ``seq_len`` repeats frames to fill it, and each is counted once."""
    if p_frames.size == 0 or p_frames.shape[0] != len(rows):
        return None
    labels, scores = [], []
    for row, frame_p in zip(rows, p_frames):
        t = row.frames if row.frames > 0 else seq_len
        first = np.unique(fit_length_indices(t, seq_len), return_index=True)[1]
        scores.append(frame_p[np.sort(first)])
        labels.append(np.full(len(first), label_to_index(normalize_label(row.label) or "")))
    return np.concatenate(labels), np.concatenate(scores)


# --------------------------------------------------------------------------------------------------
# Preparing
# --------------------------------------------------------------------------------------------------


def prepare_evaluation(
    checkpoint: str | os.PathLike | Checkpoint,
    cache: Cache | str | os.PathLike,
    split: str = "auto",
    *,
    threshold: Optional[float] = None,
    threshold_at_fpr: Optional[float] = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    include_no_face: bool = False,
    scored_only: bool = False,
    no_face_score: str = "centre",
    calibration: bool = True,
    model: Optional[nn.Module] = None,
    rows: Optional[list[ManifestRow]] = None,
) -> PreparedEvaluation:
    """Load ``checkpoint`` (a path or a :class:`Checkpoint`), rebuild its network on ``device`` and choose
    the videos of ``split`` (see :func:`select_rows`); every problem is a ``UserError`` here.

    ``threshold`` defaults to the checkpoint's (chosen on validation; mapped through its calibration);
    ``threshold_at_fpr`` sets it instead at that false-positive rate on the split's own REAL videos.
    ``calibration=False`` reports the model's raw scores. ``model`` (the network already holding these
    weights, as it trained) and ``rows`` (the videos) skip the rebuild and the choice.
    """
    where = "checkpoint" if isinstance(checkpoint, Checkpoint) else checkpoint
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    try:
        ckpt.model_config()
        train_cfg = ckpt.train_config()
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: unusable config in checkpoint ({exc})") from exc
    if no_face_score not in NO_FACE_SCORES:
        raise UserError(f"no-face score must be one of {', '.join(NO_FACE_SCORES)}, got {no_face_score!r}")
    if threshold is not None and threshold_at_fpr is not None:
        raise UserError("give --threshold or --threshold-at-fpr, not both")
    if threshold_at_fpr is not None and not 0.0 < threshold_at_fpr < 1.0:
        raise UserError("--threshold-at-fpr must be between 0 and 1 (e.g. 0.01)")
    dev = resolve_device(device) if isinstance(device, str) else device
    if model is None:
        model = _rebuild(ckpt, where, dev)
    cache = Cache.open(cache)
    run = None if isinstance(checkpoint, Checkpoint) else RunFolder.next_to(checkpoint)
    cross = cross_dataset_of(train_cfg, cache, run)
    if rows is None:
        split, rows = select_rows(cache, "all" if split == "auto" and cross else split, train_cfg,
                                  include_no_face, run, scored_only)
    _warn_if_preprocessing_differs(ckpt.section("preprocess"), cache, where)
    cal, note, thr, method = _scoring(ckpt, train_cfg, threshold, calibration)
    return PreparedEvaluation(
        model=model, cache=cache, split=split, rows=rows, seq_len=int(train_cfg.seq_len), device=dev,
        threshold=thr, amp_dtype=autocast_dtype(dev, amp), checkpoint=ckpt, threshold_method=method,
        threshold_at_fpr=threshold_at_fpr, calibration=cal, calibration_note=note,
        no_face_score=no_face_score, cross_dataset=cross,
    )


def _scoring(ckpt: Checkpoint, train_cfg: TrainConfig, threshold: Optional[float], calibration: bool
             ) -> tuple[Optional[Calibration], str, float, str]:
    """``(calibration applied, why none, threshold on the reported scores, the rule that chose it)``."""
    cal = Calibration.from_dict(ckpt.calibration) if calibration else None
    note = "" if calibration else "--no-calibration"
    raw = float(ckpt.threshold) if ckpt.threshold is not None else None
    if cal is not None and cal.raw_threshold is None:
        cal.raw_threshold = raw
    if threshold is not None:
        return cal, note, float(threshold), GIVEN_THRESHOLD
    if raw is None:
        return cal, note, 0.5, "fixed 0.5 (the checkpoint records no threshold)"
    method = f"{train_cfg.threshold_method} on validation"
    if cal is not None:
        return cal, note, float(cal.threshold), method + f", mapped by the calibration (raw {raw:.4g})"
    return cal, note, raw, method


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


def _same_folder(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return os.fspath(a) == os.fspath(b)


def _dataset_name(cache: Cache) -> str:
    """A short, path-free name of the dataset a cache was made from (its folder name and format)."""
    try:
        info, root = cache.dataset_info(), cache.dataset_root
    except UserError:
        info, root = {}, ""
    name = Path(root).name if root else Path(os.fspath(cache)).resolve().name
    return f"{name} ({info['format']})" if info.get("format") else name


def cross_dataset_of(train_cfg: TrainConfig, cache: Cache, run: Optional[RunFolder]) -> Optional[dict]:
    """``{"trained_on", "evaluated_on"}`` when ``cache`` holds another dataset than the training cache's
    (the cross-dataset protocol: train on one dataset, test on another), else None. The same dataset
    preprocessed again, or a training cache that has moved, is not another dataset."""
    if not train_cfg.cache or _same_folder(train_cfg.cache, os.fspath(cache)):
        return None
    trained = Cache(train_cfg.cache)
    try:
        trained_root = trained.dataset_root if trained.has_meta() else ""
        here_root = cache.dataset_root
    except UserError:
        trained_root = here_root = ""
    if trained_root and here_root:
        if _same_folder(trained_root, here_root):
            return None
    else:
        recorded = run.read_splits() if run is not None else None
        mine = {r.path for r in cache.rows()}
        if recorded is not None and any(p in mine for name in SPLITS for p in recorded[name]):
            return None  # the run's own videos: the training cache moved
        if recorded is None and not trained.has_manifest():
            return None  # nothing to compare with: do not claim another dataset
    trained_name = _dataset_name(trained) if trained.has_meta() else Path(train_cfg.cache).name
    return {"trained_on": trained_name, "evaluated_on": _dataset_name(cache)}


def _warn_if_preprocessing_differs(trained: dict, cache: Cache, checkpoint: Any) -> None:
    """One warning line when the cache's clips were made differently (frames, size, margin, detector...)
    from the clips the checkpoint was trained on: its metrics then say little about the model."""
    from ..data.preprocess import CLIP_KEYS, clip_settings

    if not trained or not cache.has_meta():
        return
    try:
        data = clip_settings(cache.preprocess)  # older records: what they meant (e.g. sampling even)
    except UserError:
        return
    trained = clip_settings(trained)
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
