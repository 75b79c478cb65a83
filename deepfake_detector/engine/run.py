"""The run folder ``RUNS/NAME/``: creating it, refusing to clobber it, resuming it and its files.

Layout::

    config.yaml            the resolved config (``config.write_run_config``; versioned, round-trips)
    splits.csv             path,split of every clip the run uses (train / val / test), in the run's order
    metrics.csv            one row per epoch (METRICS_COLUMNS)
    last.pt                everything needed to resume (model, optimizer, scheduler, scaler, RNG states...)
    best.pt                the best epoch, with the validation-chosen threshold
    val_predictions.csv    the best epoch's validation predictions (path,label,p_fake,predicted)
    val_metrics.json       the best weights on the validation split (every metric of ``evaluate``)
    loss.png, accuracy.png (best epoch marked), confusion_matrix.png, roc.png, pr.png, scores.png,
    calibration.png, roc_by_manipulation.png; test_metrics.json, test_predictions.csv
    tensorboard/           TensorBoard event files (scalars per epoch, plots at the end)
    MODEL_CARD.md

Why ``splits.csv``: the split membership is a fact of the run. ``evaluate --split val`` and ``--resume``
read it here instead of re-deriving it from the cache (which gives another split once the cache has
changed); folders written before it existed fall back to re-deriving it with ``split_rows``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..config import ModelConfig, TrainConfig, from_dict, write_run_config
from ..data.cache import Cache, ManifestRow
from ..data.dataset import split_rows, usable_rows
from ..data.records import index_to_label
from ..errors import UserError
from ..utils import atomic_write_text, path_from_text, path_to_text
from .distributed import DistInfo, broadcast_object
from .early_stopping import TIE_BREAK, EarlyStoppingWithCheckpoint

log = logging.getLogger(__name__)

__all__ = [
    "METRICS_COLUMNS",
    "SPLITS",
    "RunFolder",
    "write_predictions_csv",
    "read_predictions_csv",
    "reconcile_best",
    "run_splits",
    "RESUME_OVERRIDES",
    "resume_config",
]

METRICS_COLUMNS = [
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_auc",
    "val_ap",
    "val_eer",
    "lr",
    "seconds",
]
SPLITS = ("train", "val", "test")
#: files that make a folder recognisably a run folder (``--overwrite`` deletes only such a folder)
_RUN_MARKERS = frozenset({"config.yaml", "metrics.csv", "last.pt", "best.pt", "splits.csv"})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------------------------------
# predictions.csv (val_predictions.csv, test_predictions.csv, evaluate's predictions.csv)
# --------------------------------------------------------------------------------------------------


def write_predictions_csv(
    path: str | os.PathLike, paths: list[str], y_true: Any, p_fake: Any, threshold: float,
    extra: Optional[dict[str, list]] = None,
) -> None:
    """``path,label,p_fake,predicted`` per video (then the ``extra`` columns, e.g. status and method);
    p_fake as ``repr`` so it reads back bit for bit."""
    extra = extra or {}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "p_fake", "predicted", *extra])
    for i, (pth, y, p) in enumerate(zip(paths, y_true, p_fake)):
        verdict = "FAKE" if p >= threshold else "REAL"
        w.writerow([path_to_text(pth), index_to_label(int(y)), repr(float(p)), verdict,
                    *(col[i] for col in extra.values())])
    atomic_write_text(path, buf.getvalue())


def read_predictions_csv(path: str | os.PathLike) -> Optional[dict]:
    """``{"paths", "y_true", "p_fake"}`` from a file of :func:`write_predictions_csv`; None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "paths": [path_from_text(r["path"]) for r in rows],
        "y_true": np.array([1 if r["label"] == "FAKE" else 0 for r in rows], dtype=np.int64),
        "p_fake": np.array([float(r["p_fake"]) for r in rows], dtype=np.float64),
    }


# --------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------


class RunFolder:
    """One run folder and the names and formats of its files (see the module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    @classmethod
    def next_to(cls, checkpoint: str | os.PathLike) -> RunFolder:
        """The run folder a checkpoint was saved in (``evaluate`` finds the run's splits there)."""
        return cls(Path(checkpoint).resolve().parent)

    @classmethod
    def prepare(cls, cfg: TrainConfig, info: DistInfo) -> RunFolder:
        """Check the run folder on rank 0 (refuse to clobber a run) and share the verdict with every rank."""
        if not _NAME_RE.match(cfg.name or ""):
            raise UserError(f"invalid run name {cfg.name!r}: use letters, digits, '.', '_' or '-' (no paths)")
        run = cls(Path(cfg.runs_dir) / cfg.name)
        error = None
        if info.is_main:
            try:
                run._check_resume() if cfg.resume else run._make_fresh(cfg.overwrite)
                run.root.mkdir(parents=True, exist_ok=True)
            except UserError as exc:
                error = str(exc)
            except OSError as exc:
                error = f"cannot create run folder {run.root}: {exc}"
        error = broadcast_object(error, info)
        if error:
            raise UserError(error)
        return run

    def _check_resume(self) -> None:
        if not self.last.is_file():
            hint = ""
            if self.root.is_dir() and any(self.root.iterdir()):
                hint = (
                    " (the run stopped before it saved a resumable state); start it again with "
                    "--overwrite, or choose another --name"
                )
            raise UserError(f"cannot resume: {self.last} does not exist{hint}")

    def _make_fresh(self, overwrite: bool) -> None:
        if not (self.root.exists() and any(self.root.iterdir())):
            return
        if not overwrite:
            raise UserError(
                f"run folder {self.root} already exists; pass --resume to continue it or "
                f"--overwrite to replace it (or choose another --name)"
            )
        if not _RUN_MARKERS & {p.name for p in self.root.iterdir()}:
            raise UserError(f"{self.root} exists and does not look like a run folder; not deleting it")
        shutil.rmtree(self.root)

    # --- file names -------------------------------------------------------------------------------

    @property
    def last(self) -> Path:
        return self.root / "last.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.pt"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def val_predictions(self) -> Path:
        return self.root / "val_predictions.csv"

    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def splits_csv(self) -> Path:
        return self.root / "splits.csv"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    # --- metrics.csv ------------------------------------------------------------------------------

    def write_metrics(self, history: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in history:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
        atomic_write_text(self.metrics_csv, buf.getvalue())

    def read_metrics(self, upto_epoch: int) -> list[dict]:
        """The epochs up to ``upto_epoch`` (a resume ignores rows written after its last.pt)."""
        if not self.metrics_csv.is_file():
            return []
        with open(self.metrics_csv, newline="", encoding="utf-8") as fh:
            rows = []
            for raw in csv.DictReader(fh):
                row: dict[str, Any] = {
                    k: float(v) for k, v in raw.items() if k != "epoch" and v not in ("", None)
                }
                row["epoch"] = int(raw["epoch"])
                if row["epoch"] <= upto_epoch:
                    rows.append(row)
        return rows

    # --- config.yaml, splits.csv, val_predictions.csv ---------------------------------------------

    def write_config(self, config: dict) -> None:
        write_run_config(self.config_yaml, config)

    def write_splits(self, splits: dict[str, list[ManifestRow]]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "split"])
        for name in SPLITS:
            w.writerows([path_to_text(r.path), name] for r in splits.get(name, []))
        atomic_write_text(self.splits_csv, buf.getvalue())

    def read_splits(self) -> Optional[dict[str, list[str]]]:
        """The recorded membership ``{split: [path, ...]}`` in the run's order; None without splits.csv."""
        if not self.splits_csv.is_file():
            return None
        out: dict[str, list[str]] = {name: [] for name in SPLITS}
        with open(self.splits_csv, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            for raw in csv.DictReader(fh):
                if raw.get("split") in out and raw.get("path"):
                    out[raw["split"]].append(path_from_text(raw["path"]))
        return out

    def write_val_predictions(self, paths: list[str], y_true: Any, p_fake: Any, threshold: float) -> None:
        write_predictions_csv(self.val_predictions, paths, y_true, p_fake, threshold)

    def read_val_predictions(self) -> Optional[dict]:
        return read_predictions_csv(self.val_predictions)


# --------------------------------------------------------------------------------------------------
# Split membership
# --------------------------------------------------------------------------------------------------


def _recorded(run: RunFolder, rows: list[ManifestRow], include_no_face: bool) -> Optional[dict]:
    """The run's recorded splits as this cache's rows; None when there is no record or the cache no
    longer holds every recorded clip as a usable row (another cache, or one changed since)."""
    recorded = run.read_splits()
    if recorded is None:
        return None
    by_path = {r.path: r for r in usable_rows(rows, include_no_face=include_no_face)}
    if not all(p in by_path for name in SPLITS for p in recorded[name]):
        return None
    return {name: [by_path[p] for p in recorded[name]] for name in SPLITS}


def run_splits(
    run: Optional[RunFolder],
    rows: list[ManifestRow],
    val_fraction: float,
    seed: int,
    include_no_face: bool,
    warn: bool = False,
) -> dict[str, list[ManifestRow]]:
    """``{"train", "val", "test"}`` rows: the run's ``splits.csv`` when it applies to ``rows``, else
    ``split_rows`` with the run's settings (folders from before splits.csv, or another cache)."""
    if run is not None:
        got = _recorded(run, rows, include_no_face)
        if got is not None:
            return got
        if warn and run.splits_csv.is_file():
            log.warning("%s names clips that are not usable rows of this cache any more; the split is "
                        "derived again from the cache", run.splits_csv)
    return split_rows(rows, val_fraction, seed, include_no_face=include_no_face)


# --------------------------------------------------------------------------------------------------
# After a kill
# --------------------------------------------------------------------------------------------------


def reconcile_best(
    stopper: EarlyStoppingWithCheckpoint, run: RunFolder, resume: Checkpoint, info: DistInfo
) -> None:
    """Finish what a run killed while saving left undone.

    At the end of an epoch last.pt is written before val_predictions.csv and best.pt; when that epoch was
    the best one, last.pt also carries what best.pt needs (``best_pending``: threshold, metrics and the
    validation predictions; the weights are last.pt's own). A run killed in between has a best.pt that
    does not hold the best epoch last.pt names: both files are rewritten from last.pt, exactly as the
    killed run would have written them. Without that record (older last.pt) the bookkeeping falls back to
    what best.pt holds, with a warning.
    """
    state = None
    if info.is_main and stopper.best_epoch >= 1:
        held_epoch, held = -1, {}
        if run.best.is_file():
            ck = load_checkpoint(run.best)
            held_epoch = int(ck.get("epoch", -1))
            held = ck.get("metrics") or {}
            del ck
        held_value = held.get(stopper.monitor)
        pending = resume.training.get("best_pending") or {}
        if held_epoch == stopper.best_epoch:
            pass
        elif pending.get("epoch") == stopper.best_epoch == int(resume.epoch):
            _rewrite_best(run, resume, pending)
            log.info("best.pt of epoch %d rewritten from last.pt (the run was stopped while saving)",
                     stopper.best_epoch)
        else:
            state = stopper.state_dict()
            if held_epoch >= 1 and isinstance(held_value, (int, float)):
                tie = held.get(TIE_BREAK) if stopper.uses_tie_break else None
                state.update(best=float(held_value), best_epoch=held_epoch, counter=0,
                             best_tie=float(tie) if isinstance(tie, (int, float)) else None)
            else:
                state.update(best=None, best_epoch=-1, best_tie=None, counter=0)
            log.warning(
                "best.pt holds epoch %s, not the best epoch %d recorded in last.pt (the run was stopped "
                "while saving); continuing from best.pt",
                held_epoch if held_epoch >= 1 else "none",
                stopper.best_epoch,
            )
    state = broadcast_object(state, info)
    if state:
        stopper.load_state_dict(state)


def _rewrite_best(run: RunFolder, resume: Checkpoint, pending: dict) -> None:
    preds = pending["val_predictions"]
    threshold = float(pending["threshold"])
    run.write_val_predictions(preds["paths"], preds["y_true"], preds["p_fake"], threshold)
    best = Checkpoint(
        model=resume.model, epoch=resume.epoch, config=resume.config, version=resume.version,
        threshold=threshold, metrics=pending["metrics"],
        training=dict(optimizer=None, scheduler=None, scaler=None, rng=None),
    )
    save_checkpoint(best, run.best)


# --------------------------------------------------------------------------------------------------
# The settings of a resumed run
# --------------------------------------------------------------------------------------------------

# Settings a resumed run may change; everything else comes from last.pt so the run stays the same run.
RESUME_OVERRIDES = (
    "epochs",
    "workers",
    "device",
    "stop_after",
    "cache",
    "amp",
    "compile",
    "patience",
    "pin_memory",
    "limit_train_batches",
    "tensorboard",  # tracking records a run, it does not change it
)
# Settings never reported as "ignored with --resume": they locate the run (name, runs_dir), are checked
# separately (cache) or are the resume request itself.
_NOT_COMPARED = frozenset({"name", "runs_dir", "cache", "resume", "overwrite", "model"})
_FLAG_NAMES = {"num_layers": "--lstm-layers"}  # config field -> CLI flag, where they differ
_NEGATABLE = frozenset({"pretrained", "amp", "feature_cache", "tensorboard"})  # booleans with a --no-X flag


def _flag_text(field: str, value: Any) -> str:
    """How a setting is spelled on the command line: ``--seq-len 12``, ``--no-pretrained``."""
    flag = _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))
    if isinstance(value, bool):
        if field in _NEGATABLE:
            return flag if value else "--no-" + flag[2:]
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return a == b


def resume_config(
    cfg: TrainConfig, saved: dict, overrides: Optional[set], is_main: bool = True
) -> TrainConfig:
    """The saved config of a resumed run, with the allowed overrides (``RESUME_OVERRIDES``) from ``cfg``.

    ``overrides`` names the settings the user gave (the CLI's flags); None = all of RESUME_OVERRIDES
    (API use). A different cache is an error; other given settings that differ from the saved ones
    and may not change are ignored with one warning line naming them.
    """
    old = from_dict(TrainConfig, saved)
    if cfg.cache and old.cache and not _same_path(cfg.cache, old.cache):
        if Cache(old.cache).has_manifest() or not Cache(cfg.cache).has_manifest():
            raise UserError(
                f"run {cfg.name} was trained on cache {old.cache}; --resume continues with its saved "
                f"settings: pass the same cache, or start a new run with another --name"
            )
        # the saved cache is gone (moved, or a relative path from another folder): use the one given
        if is_main:
            log.warning("the run's cache %s is not there; continuing with %s", old.cache, cfg.cache)
    else:
        cfg = replace(cfg, cache=old.cache or cfg.cache)
    if overrides is not None and is_main:
        _warn_ignored(cfg, old, overrides)
    keep = set(RESUME_OVERRIDES) if overrides is None else set(overrides) & set(RESUME_OVERRIDES)
    keep.add("cache")  # checked above: the saved cache, or the one given when the saved one is gone
    changes = {k: getattr(cfg, k) for k in keep}
    # stop_after belongs to one invocation: never inherit the "stop after 1 epoch" of the killed run
    changes.update(
        resume=True, name=cfg.name, runs_dir=cfg.runs_dir, overwrite=False, stop_after=cfg.stop_after
    )
    return replace(old, **changes)


def _warn_ignored(cfg: TrainConfig, old: TrainConfig, overrides: set) -> None:
    """One warning line naming the given settings a resumed run does not take (they differ from the saved)."""
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    ignored = []
    for k in sorted(set(overrides) - set(RESUME_OVERRIDES) - _NOT_COMPARED):
        if k in train_fields:
            given, was = getattr(cfg, k), getattr(old, k)
        elif k in model_fields:
            given, was = getattr(cfg.model, k), getattr(old.model, k)
        else:
            continue
        if given != was:
            shown = _flag_text(k, was) if isinstance(was, bool) else was
            ignored.append(f"{_flag_text(k, given)} (saved {shown})")
    if ignored:
        log.warning(
            "ignored with --resume: %s (a resumed run keeps its saved settings; only --epochs, "
            "--workers, --device, --patience, --no-amp, --compile, --no-tensorboard and --stop-after may "
            "change)",
            ", ".join(ignored),
        )
