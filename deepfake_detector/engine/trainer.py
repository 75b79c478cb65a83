"""``fit(TrainConfig)``: one training run from a face-clip cache to a run folder (``engine.run``).

``fit`` is a short sequence of named steps over one :class:`TrainingSession`: set up (device, run
folder, a resumed run's settings), data (cache, splits, datasets, sampler), model (and the feature
cache of a frozen backbone), loaders, optimiser, restore (``--resume``), run files (config.yaml,
splits.csv), epochs (train, validate, record the row, save the checkpoints) and finish (best weights,
plots of the best epoch, the test split through ``engine.evaluate``, the model card).

Determinism: the shuffling of each epoch is seeded by ``(seed, epoch)`` and augmentation by
``(seed, epoch, index)``; last.pt stores all RNG states. So ``--resume`` after a kill ends with the
same weights and metrics as an uninterrupted run (CPU, fixed seed). The steps keep one order of RNG
draws, saves and collective calls: data before the model (whose initialisation draws the global RNG),
last.pt before best.pt, Ctrl-C held back while an epoch's files are written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..checkpoint import Checkpoint, read_checkpoint, save_checkpoint, to_builtin
from ..config import TrainConfig, default_batch_size, to_dict
from ..data.cache import Cache
from ..data.dataset import ClipDataset, training_rows
from ..device import amp_dtype as autocast_dtype
from ..device import grad_scaler, precision_name, resolve_device, use_channels_last
from ..errors import UserError
from ..metrics import choose_threshold, compute_metrics
from .distributed import (
    BalancedDistributedSampler,
    DistInfo,
    EpochTaggedSampler,
    ShardSampler,
    all_gather_objects,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from .early_stopping import TIE_BREAK, EarlyStoppingWithCheckpoint
from .ema import WeightAverage, decay_for
from .loop import NonFiniteTracker, evaluate, train_epoch
from .rng import get_rng_state, set_rng_state
from .run import RunFolder, reconcile_best, resume_config, run_splits

log = logging.getLogger(__name__)

__all__ = ["fit", "TrainingSession", "read_preprocess_config"]


def read_preprocess_config(cache: Cache | str | Path) -> dict:
    """The cache's preprocessing settings, for the checkpoint ({} with a warning when none are recorded)."""
    cache = Cache.of(cache)
    if not cache.has_meta():
        log.warning("%s missing: the checkpoint will not record how clips were made", cache.config_path)
        return {}
    return to_builtin(cache.preprocess)


@dataclass
class TrainingSession:
    """Everything one ``fit`` holds between its steps (see the module docstring for the steps)."""

    cfg: TrainConfig
    info: DistInfo
    progress: bool
    device: torch.device
    run: RunFolder
    resume: Optional[Checkpoint] = None  # last.pt of a resumed run, until it is restored
    saved_epochs: Optional[int] = None  # the resumed run's planned epochs
    # data
    cache: Optional[Cache] = None
    splits: dict = field(default_factory=dict)
    pre_cfg: dict = field(default_factory=dict)
    train_ds: Any = None
    val_ds: Any = None
    class_weights: Optional[torch.Tensor] = None
    sampler: Optional[EpochTaggedSampler] = None
    loader_opts: dict = field(default_factory=dict)
    steps_per_epoch: int = 0
    # model and optimiser
    raw_model: Optional[nn.Module] = None  # the network itself
    net: Optional[nn.Module] = None  # what the loops call: the whole model on clips, or its head on features
    train_model: Optional[nn.Module] = None  # net, wrapped for DDP / torch.compile
    amp_dtype: Optional[torch.dtype] = None
    scaler: Any = None
    train_loader: Optional[DataLoader] = None
    val_loader: Optional[DataLoader] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Any = None
    criterion: Optional[nn.Module] = None
    ema: Optional[WeightAverage] = None  # the weight average that is validated and saved (ema_epochs)
    monitor: str = "val_loss"
    stopper: Optional[EarlyStoppingWithCheckpoint] = None
    tracker: Optional[NonFiniteTracker] = None
    config_dict: dict = field(default_factory=dict)  # what config.yaml and every checkpoint record
    # progress
    history: list = field(default_factory=list)
    start_epoch: int = 1
    best_val: Optional[dict] = None  # the best epoch's validation predictions and threshold
    epochs_run: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    tb: Any = None  # TensorBoard writer (rank 0, when enabled and installed)
    calibration_note: str = ""  # the temperature fitted at the end, or why none was

    def checkpoint(self, epoch: int, **fields: Any) -> Checkpoint:
        """This run's checkpoint of ``epoch``: the current weights, the config, and ``fields``."""
        return Checkpoint(
            model={k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()},
            epoch=epoch, config=to_builtin(self.config_dict), version=__version__, **fields,
        )

    def summary(self) -> dict:
        """What ``fit`` returns (``finish`` adds the threshold and the best epoch's metrics)."""
        return {
            "run_dir": str(self.run.root),
            "epochs_run": self.epochs_run,
            "history": self.history,
            "stopped_early": self.stopped_early,
            "interrupted": self.interrupted,
            "best_epoch": self.stopper.best_epoch,
            "best": self.stopper.best,
            "monitor": self.monitor,
            "model": self.raw_model,
            "config": self.cfg,
            "rank": self.info.rank,
            "world_size": self.info.world_size,
        }


def fit(cfg: TrainConfig, resume_overrides: Optional[set] = None, progress: bool = True) -> dict:
    """Train per ``cfg`` and write the run folder; returns a summary (and the trained ``model``).

    With ``cfg.resume`` the saved config in ``last.pt`` is used, except the settings named in
    ``resume_overrides`` (default: all of ``run.RESUME_OVERRIDES``) which are taken from ``cfg``.
    """
    pre_device = resolve_device(cfg.device, local_rank=0)
    info = init_distributed(pre_device.type)
    try:
        return _fit(cfg, info, resume_overrides, progress)
    finally:
        cleanup_distributed(info)


def _fit(cfg: TrainConfig, info: DistInfo, resume_overrides: Optional[set], progress: bool) -> dict:
    s = _setup(cfg, info, resume_overrides, progress)
    _load_data(s)
    _build_model(s)
    _build_loaders(s)
    _build_optimiser(s)
    _restore(s)
    _write_run_files(s)
    try:
        _run_epochs(s)
        summary = s.summary()
        if not s.interrupted:
            _finish(s, summary)
    finally:
        if s.tb is not None:
            s.tb.close()
    return summary


# --- setup --------------------------------------------------------------------------------------------


def _setup(
    cfg: TrainConfig, info: DistInfo, resume_overrides: Optional[set], progress: bool
) -> TrainingSession:
    """Device, run folder (created, or checked for --resume) and the settings this run really uses."""
    device = resolve_device(cfg.device, info.local_rank)
    run = RunFolder.prepare(cfg, info)
    resume, saved_epochs = None, None
    cfg = _resolve_pretrained(cfg, quiet=cfg.resume or not info.is_main)
    if cfg.resume:
        resume = read_checkpoint(run.last)
        saved_train = resume.config["train"]
        saved_epochs = saved_train.get("epochs")
        cfg = resume_config(cfg, saved_train, resume_overrides, is_main=info.is_main)
        cfg = _resolve_pretrained(cfg, quiet=True)
        log.info("resuming %s from epoch %d", run.root, resume.epoch)
    if not cfg.cache:
        raise UserError("no cache folder given")
    if cfg.batch_size == 0:  # auto: resolved here, so the run's config records the real value
        cfg = replace(cfg, batch_size=default_batch_size(device.type))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _seed_everything(cfg.seed)
    return TrainingSession(cfg=cfg, info=info, progress=progress, device=device, run=run, resume=resume,
                           saved_epochs=saved_epochs)


# --- data ---------------------------------------------------------------------------------------------


def _load_data(s: TrainingSession) -> None:
    """The cache, the split (the run's splits.csv on --resume), the datasets and the class balance."""
    cfg = s.cfg
    s.cache = Cache.open(cfg.cache)
    rows = s.cache.rows()
    s.pre_cfg = read_preprocess_config(s.cache)
    if s.info.is_main:
        _warn_if_ungrouped(s.cache)
    s.splits = run_splits(s.run, rows, cfg.val_fraction, cfg.seed, cfg.include_no_face, warn=True)
    if not s.splits["train"] or not s.splits["val"]:
        raise UserError(
            f"{cfg.cache}: need usable training and validation videos (status ok, REAL/FAKE "
            f"label); found train={len(s.splits['train'])} val={len(s.splits['val'])}"
        )
    # a video with several faces (preprocess --max-faces) trains on the faces its label is true of
    samples = training_rows(s.cache, s.splits["train"], rows, cfg.fake_tracks)
    s.train_ds = ClipDataset(s.cache, samples, cfg.seq_len, train=True, seed=cfg.seed, return_index=True,
                             raw=True, augment=cfg.augment, order_fakes=cfg.order_fakes)
    s.val_ds = ClipDataset(s.cache, s.splits["val"], cfg.seq_len, train=False, return_index=True, raw=True)
    counts = np.bincount(np.asarray(s.train_ds.labels, dtype=np.int64), minlength=2)
    if (counts == 0).any():
        raise UserError(
            f"the training split has only {'FAKE' if counts[0] == 0 else 'REAL'} videos; "
            "a detector needs both classes"
        )
    if s.info.is_main:
        log.info(
            "videos: train %d (REAL %d, FAKE %d), val %d, test %d",
            len(s.train_ds),
            counts[0],
            counts[1],
            len(s.val_ds),
            len(s.splits["test"]),
        )
    # order pseudo-fakes move a share of the REAL clips to FAKE: weigh the classes as they are seen
    seen = counts * np.array([1.0 - cfg.order_fakes, 1.0]) + np.array([0.0, counts[0] * cfg.order_fakes])
    s.class_weights = torch.tensor(seen.sum() / (2.0 * seen), dtype=torch.float32)
    _make_sampler(s, counts)


def _warn_if_ungrouped(cache: Cache) -> None:
    """One warning when every video is its own group: a fake and its original may then land on both sides
    of the split, which flatters validation. Says how to give the dataset's groups."""
    try:
        grouping = cache.dataset_info().get("grouping")
    except UserError:
        return
    if grouping == "per-video":
        log.warning(
            "%s: every video is its own group (the dataset says nothing about which fake came from which "
            "original), so the split cannot keep a fake with its original and validation may be optimistic; "
            "add an 'original' or 'group' column to the list, or rerun 'preprocess --group-by REGEX'", cache)


def _make_sampler(s: TrainingSession, counts: np.ndarray) -> None:
    """One sampler for the whole run: its loader's worker processes live across epochs
    (persistent_workers), and the epoch reaches them with each index (EpochTaggedSampler)."""
    cfg, info = s.cfg, s.info
    sample_weights = None
    if cfg.balance == "sampler":
        sample_weights = [1.0 / counts[y] for y in s.train_ds.labels]
    train_sampler = BalancedDistributedSampler(
        s.train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed, weights=sample_weights
    )
    s.sampler = EpochTaggedSampler(train_sampler)
    s.loader_opts = {"num_workers": cfg.workers, "pin_memory": cfg.pin_memory and s.device.type == "cuda"}
    if cfg.workers > 0:
        s.loader_opts.update(persistent_workers=True, prefetch_factor=4)
    s.steps_per_epoch = math.ceil(len(s.sampler) / cfg.batch_size)
    if cfg.limit_train_batches:
        s.steps_per_epoch = min(s.steps_per_epoch, cfg.limit_train_batches)


# --- model, loaders, optimiser ------------------------------------------------------------------------


def _build_model(s: TrainingSession) -> None:
    """The network on its device, its precision, and (frozen backbone) the feature cache it trains on."""
    cfg = s.cfg
    model = _build_model_rank0_first(cfg, s.info).to(s.device)
    if use_channels_last(s.device, cfg.channels_last):
        model.set_channels_last(True)
    s.amp_dtype = autocast_dtype(s.device, cfg.amp)
    s.scaler = grad_scaler(s.amp_dtype)
    s.raw_model = s.net = model
    if cfg.model.freeze_backbone and cfg.feature_cache:
        from .features import FeatureDataset, HeadOnly, extract_feature_views, extract_features

        samples = s.train_ds.rows  # the training faces (training_rows), the videos' main faces for one face
        opts = dict(device=s.device, amp_dtype=s.amp_dtype, batch_size=cfg.batch_size, workers=cfg.workers,
                    info=s.info)
        feat_dir = extract_features(s.raw_model, s.cache, samples + s.splits["val"], cfg.model, cfg.seed,
                                    **opts)
        views = extract_feature_views(s.raw_model, s.cache, samples, cfg.model, cfg.seed, cfg.feature_views,
                                      cfg.augment, **opts)
        s.train_ds = FeatureDataset(views or [feat_dir], samples, cfg.seq_len, cfg.seed, cfg.order_fakes)
        s.val_ds = FeatureDataset(feat_dir, s.splits["val"], cfg.seq_len)
        s.net = HeadOnly(s.raw_model)


def _build_loaders(s: TrainingSession) -> None:
    """Made after the model: the training set may have become a FeatureDataset. Each loader has its own
    seeded generator (worker base seeds), so none ever draws the global RNG."""
    cfg, info = s.cfg, s.info
    s.val_loader = DataLoader(
        s.val_ds,
        batch_size=cfg.batch_size,
        sampler=ShardSampler(len(s.val_ds), info.world_size, info.rank),
        generator=torch.Generator().manual_seed(cfg.seed),  # else each new iterator draws the global RNG
        **s.loader_opts,
    )
    s.train_loader = DataLoader(
        s.train_ds, batch_size=cfg.batch_size, sampler=s.sampler,
        generator=torch.Generator().manual_seed(cfg.seed * 1000003), drop_last=False, **s.loader_opts,
    )


def _build_optimiser(s: TrainingSession) -> None:
    """DDP / compile wrappers, optimiser, LR schedule, loss, early stopping and the config record."""
    cfg, device = s.cfg, s.device
    s.train_model = s.net
    if s.info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        s.train_model = DDP(s.net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        s.train_model = torch.compile(s.train_model)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused CUDA kernels for the update (one launch instead of several per parameter group)
    extra = {"fused": True} if device.type == "cuda" else {}
    s.optimizer = opt_cls(param_groups(s.raw_model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    s.scheduler = _make_scheduler(cfg, s.optimizer, s.steps_per_epoch)
    s.criterion = nn.CrossEntropyLoss(
        weight=s.class_weights.to(device) if cfg.balance == "weighted_loss" else None
    )
    s.monitor = cfg.monitor
    if s.monitor != "val_loss" and len(set(s.val_ds.labels)) < 2:
        # AUC is undefined (NaN) and F1/accuracy are degenerate with one class: no epoch could ever be "best"
        log.warning("the validation split has only one class: monitoring val_loss instead of %s", s.monitor)
        s.monitor = "val_loss"
    # write=False: the epoch step writes best.pt itself, after last.pt (see _save_epoch)
    s.stopper = EarlyStoppingWithCheckpoint(s.run.best, s.monitor, cfg.patience, cfg.min_delta, write=False)
    s.tracker = NonFiniteTracker(cfg.max_nonfinite)
    if cfg.ema_epochs > 0:
        s.ema = WeightAverage(s.raw_model, decay_for(cfg.ema_epochs, s.steps_per_epoch))
    s.config_dict = {
        "train": to_dict(cfg),
        "model": to_dict(cfg.model),
        "preprocess": s.pre_cfg,
        # what "auto" and the device-dependent switches became in this run (the train section keeps
        # what was asked, so a resume on another machine decides afresh)
        "runtime": {
            "device": str(device),
            "world_size": s.info.world_size,
            "amp": precision_name(s.amp_dtype),
            "channels_last": use_channels_last(device, cfg.channels_last),
            "torch": str(torch.__version__),
        },
    }


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The optimiser's parameter groups: one (every trainable weight at ``lr``) unless ``lr_backbone``
    differs, then the head first (so ``param_groups[0]`` is still the reported ``lr``) and the backbone.

    A pretrained backbone usually wants a smaller step than the freshly initialised LSTM and classifier."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if cfg.lr_backbone is None or cfg.lr_backbone == cfg.lr:
        return [{"params": trainable}]
    backbone = {id(p) for p in model.backbone.parameters()}
    head = [p for p in trainable if id(p) not in backbone]
    trunk = [p for p in trainable if id(p) in backbone]
    return [{"params": head}] + ([{"params": trunk, "lr": cfg.lr_backbone}] if trunk else [])


# --- restore, run files -------------------------------------------------------------------------------


def _restore(s: TrainingSession) -> None:
    """--resume: weights, optimiser, schedule, scaler, early stopping, metrics so far and RNG states."""
    resume = s.resume
    if resume is None:
        return
    s.raw_model.load_state_dict(resume.model)
    if s.ema is not None and resume.training.get("ema"):
        s.ema.load(s.raw_model, resume.training["ema"])  # model: the average; back in it: training weights
    s.optimizer.load_state_dict(resume.training["optimizer"])
    s.scheduler.load_state_dict(resume.training["scheduler"])
    if s.scaler is not None and resume.training.get("scaler"):
        s.scaler.load_state_dict(resume.training["scaler"])
    s.stopper.load_state_dict(resume.training.get("early_stopping") or {})
    reconcile_best(s.stopper, s.run, resume, s.info)
    _replan_schedule(s)
    s.start_epoch = int(resume.epoch) + 1
    s.history = s.run.read_metrics(s.start_epoch - 1)
    per_rank = resume.training.get("rng_per_rank") or []
    rank = s.info.rank
    set_rng_state(per_rank[rank] if rank < len(per_rank) else resume.training.get("rng") or {})
    s.resume = None  # its tensors are no longer needed


def _replan_schedule(s: TrainingSession) -> None:
    """A resumed run with another --epochs: the schedule is rebuilt for the new total (its lambda reads
    cfg.epochs), so the rest of the run follows the schedule of a run planned for cfg.epochs from the
    start. Applied now, not one step late."""
    cfg, optimizer, scheduler = s.cfg, s.optimizer, s.scheduler
    if s.saved_epochs is None or s.saved_epochs == cfg.epochs or cfg.scheduler == "none":
        return
    before = float(optimizer.param_groups[0]["lr"])
    for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * fn(scheduler.last_epoch)
    if s.info.is_main:
        log.warning(
            "--epochs %d (saved %d): the %s LR schedule is recomputed for %d epochs, as if the run "
            "had been planned for them; the LR goes from %.3g to %.3g",
            cfg.epochs, s.saved_epochs, cfg.scheduler, cfg.epochs, before,
            float(optimizer.param_groups[0]["lr"]),
        )


def _write_run_files(s: TrainingSession) -> None:
    """config.yaml and splits.csv, before the first epoch (rewritten unchanged on --resume), and the
    TensorBoard writer (a resumed run drops the events a killed run wrote past last.pt)."""
    if s.info.is_main:
        s.run.write_config(to_builtin(s.config_dict))
        s.run.write_splits(s.splits)
        if s.cfg.tensorboard:
            from .tracking import open_tensorboard

            s.tb = open_tensorboard(s.run.tensorboard_dir, purge_step=s.start_epoch)


# --- epochs -------------------------------------------------------------------------------------------


def _run_epochs(s: TrainingSession) -> None:
    for epoch in range(s.start_epoch, s.cfg.epochs + 1):
        if s.stopper.should_stop:  # a resumed run that had already met its patience
            s.stopped_early = True
            break
        if not _epoch(s, epoch):
            break
    barrier(s.info)


def _epoch(s: TrainingSession, epoch: int) -> bool:
    """Train, validate, record the row, save the checkpoints; False when the run stops here."""
    t0 = time.perf_counter()
    tr = _train(s, epoch)
    broadcast_buffers(s.raw_model, s.info)
    with _average_applied(s):
        ev = evaluate(s.net, s.val_loader, s.device, amp_dtype=s.amp_dtype, dist_info=s.info,
                      progress=s.progress, desc="val")
        row = _record(s, epoch, tr, ev, t0)
        improved = s.stopper.step(row[s.monitor], epoch, s.raw_model,
                                  lambda: _best_checkpoint(s, epoch, ev, row), tie=row.get(TIE_BREAK))
        if improved:
            s.best_val = {
                "y_true": ev["y_true"],
                "p_fake": ev["p_fake"],
                "threshold": choose_threshold(ev["y_true"], ev["p_fake"], s.cfg.threshold_method),
                "paths": [s.val_ds.paths[i] for i in ev["index"]],
            }
        rng = all_gather_objects(get_rng_state(), s.info)
        if s.info.is_main:
            _save_epoch(s, epoch, ev, row, improved, rng)
    s.epochs_run += 1
    return _carry_on(s, epoch)


@contextlib.contextmanager
def _average_applied(s: TrainingSession) -> Iterator[None]:
    """With ``ema_epochs``: the weight average in the model while it is validated and saved (every rank
    holds rank 0's averaged buffers); the training weights back for the next epoch."""
    if s.ema is None:
        yield
        return
    with s.ema.applied(s.raw_model):
        broadcast_buffers(s.raw_model, s.info)
        yield


def _train(s: TrainingSession, epoch: int) -> dict:
    cfg = s.cfg
    s.sampler.set_epoch(epoch)
    s.train_ds.set_epoch(epoch)  # for workers=0 and any direct use; the workers get it per index
    return train_epoch(
        s.train_model,
        s.train_loader,
        s.optimizer,
        s.criterion,
        s.device,
        scheduler=s.scheduler,
        scaler=s.scaler,
        amp_dtype=s.amp_dtype,
        grad_clip=cfg.grad_clip,
        tracker=s.tracker,
        paths=s.train_ds.paths,
        dist_info=s.info,
        limit_batches=cfg.limit_train_batches,
        progress=s.progress,
        desc=f"epoch {epoch}/{cfg.epochs}",
        on_step=(lambda: s.ema.update(s.raw_model)) if s.ema is not None else None,
    )


def _record(s: TrainingSession, epoch: int, tr: dict, ev: dict, t0: float) -> dict:
    """The epoch's metrics.csv row (validation at threshold 0.5), added to the history and logged."""
    m = compute_metrics(ev["y_true"], ev["p_fake"], 0.5)
    row = {
        "epoch": epoch,
        "train_loss": tr["loss"],
        "train_accuracy": tr["accuracy"],
        "val_loss": ev["loss"],
        "val_accuracy": m["accuracy"],
        "val_precision": m["precision"],
        "val_recall": m["recall"],
        "val_f1": m["f1"],
        "val_auc": m["auc"],
        "val_ap": m["ap"],
        "val_eer": m["eer"],
        "lr": float(s.optimizer.param_groups[0]["lr"]),
        "seconds": time.perf_counter() - t0,
    }
    s.history.append(row)
    if s.info.is_main:
        log.info(
            "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc@0.5 %.3f auc %.3f",
            epoch, tr["loss"], tr["accuracy"], ev["loss"], m["accuracy"], m["auc"],
        )
        if s.tb is not None:
            from .tracking import log_epoch

            log_epoch(s.tb, row)
    if tr["skipped"]:
        log.warning("epoch %d: %d batches skipped (non-finite)", epoch, tr["skipped"])
    return row


def _best_checkpoint(s: TrainingSession, epoch: int, ev: dict, row: dict) -> Checkpoint:
    """best.pt of an improved epoch: the weights, the validation-chosen threshold and the metrics there."""
    thr = choose_threshold(ev["y_true"], ev["p_fake"], s.cfg.threshold_method)
    at_thr = compute_metrics(ev["y_true"], ev["p_fake"], thr, f"{s.cfg.threshold_method} on validation")
    return s.checkpoint(
        epoch, threshold=float(thr), metrics=to_builtin({**row, "val_at_threshold": at_thr}),
        training=dict(optimizer=None, scheduler=None, scaler=None, rng=None),
    )


def _last_checkpoint(
    s: TrainingSession, epoch: int, row: dict, rng: list, best: Optional[Checkpoint]
) -> Checkpoint:
    """last.pt: everything a resume needs and, when this epoch is the best, what best.pt needs
    (``best_pending``: a kill between the two saves is repaired exactly by ``run.reconcile_best``)."""
    training: dict = {}
    if best is not None and s.best_val is not None:
        training["best_pending"] = {
            "epoch": epoch,
            "threshold": best.threshold,
            "metrics": best.metrics,
            "val_predictions": to_builtin({k: s.best_val[k] for k in ("paths", "y_true", "p_fake")}),
        }
    training.update(
        optimizer=s.optimizer.state_dict(),
        scheduler=s.scheduler.state_dict(),
        scaler=s.scaler.state_dict() if s.scaler is not None else None,
        rng=rng[0],
        rng_per_rank=rng if s.info.enabled else None,
        early_stopping=s.stopper.state_dict(),
        ema=s.ema.training_state() if s.ema is not None else None,  # model holds the average
    )
    return s.checkpoint(epoch, metrics=to_builtin(row), threshold=None, training=training)


def _save_epoch(s: TrainingSession, epoch: int, ev: dict, row: dict, improved: bool, rng: list) -> None:
    """metrics.csv (a resume ignores rows past last.pt's epoch), then last.pt (the resumable state), then
    val_predictions.csv, best.pt and the plots; Ctrl-C waits until all are written."""
    from ..plots import plot_accuracy, plot_loss

    with _sigint_deferred():
        s.run.write_metrics(s.history)
        best = _best_checkpoint(s, epoch, ev, row) if improved else None
        save_checkpoint(_last_checkpoint(s, epoch, row, rng, best), s.run.last)
        if best is not None and s.best_val is not None:
            bv = s.best_val
            s.run.write_val_predictions(bv["paths"], ev["y_true"], ev["p_fake"], bv["threshold"])
            save_checkpoint(best, s.run.best)
            del best
        best_epoch = s.stopper.best_epoch if s.stopper.best_epoch >= 1 else None
        plot_loss(s.history, s.run.root / "loss.png", best_epoch=best_epoch)
        plot_accuracy(s.history, s.run.root / "accuracy.png", best_epoch=best_epoch)


def _carry_on(s: TrainingSession, epoch: int) -> bool:
    """False when early stopping or --stop-after ends the run after ``epoch``."""
    if s.stopper.should_stop:
        log.info(
            "early stopping: no %s improvement for %d epochs (best epoch %d)",
            s.monitor,
            s.stopper.patience,
            s.stopper.best_epoch,
        )
        s.stopped_early = True
        return False
    if s.cfg.stop_after and s.epochs_run >= s.cfg.stop_after and epoch < s.cfg.epochs:
        s.interrupted = True
        return False
    return True


# --- finish -------------------------------------------------------------------------------------------


def _finish(s: TrainingSession, summary: dict) -> None:
    """The best weights back in the model; the validation split scored like ``evaluate`` scores it, a
    temperature fitted on it (stored in best.pt) and its plots; the test split; TensorBoard; the card."""
    if not s.stopper.restore_best(s.raw_model):
        raise UserError(f"no epoch produced a finite {s.monitor}; nothing to save (check the data)")
    best = read_checkpoint(s.run.best) if s.run.best.is_file() else None
    if s.best_val is None:  # resumed run: the best epoch happened before the kill
        s.best_val = s.run.read_val_predictions()
    threshold = float(best.threshold) if best else 0.5
    summary.update(threshold=threshold, best_metrics=best.metrics if best else {})
    ckpt = best or s.checkpoint(s.stopper.best_epoch, threshold=threshold)
    val = _evaluate_val_split(s, ckpt, best is not None)
    summary.update(val_metrics=val.metrics, calibration=ckpt.calibration, calibration_note=s.calibration_note)
    if s.splits["test"]:
        summary["test_metrics"] = _evaluate_test_split(s, ckpt)
    if s.info.is_main:
        if s.tb is not None:
            from .tracking import log_final

            images = {n: s.run.root / f"{n}.png" for n in ("roc", "confusion_matrix", "calibration")}
            log_final(s.tb, val.metrics, images, step=s.stopper.best_epoch)
        _maybe_model_card(s.run.root, summary, s.config_dict, s.cache)
    barrier(s.info)


def _evaluate_val_split(s: TrainingSession, ckpt: Checkpoint, save: bool) -> Any:
    """Every video of the validation split through ``engine.evaluate`` with the best weights: a temperature
    fitted on the raw scores (best.pt gains it when ``save``; too small a split gets none), then the
    metrics and plots of the calibrated scores (val_metrics.json, confusion_matrix.png, roc.png, ...)."""
    from ..calibration import fit_calibration
    from .evaluate import every_video, prepare_evaluation

    cfg = s.cfg
    prepared = prepare_evaluation(ckpt, s.cache, "val", rows=every_video(s.cache.rows(), s.splits, "val"),
                                  model=s.raw_model, device=s.device, amp=cfg.amp, calibration=False)
    raw = prepared.predict(cfg.batch_size, cfg.workers, s.info, s.progress, desc="val (best epoch)")
    mask, y = raw["mask"], prepared.score(raw).y_true
    fitted_on = {"split": "val", "cache": Path(str(s.cache)).resolve().name, "when": "end of training"}
    cal, note = fit_calibration(y[mask], raw["p_raw"][mask], ckpt.threshold, fitted_on)
    cal = broadcast_object(cal, s.info)  # every rank scores the test split the way rank 0 reports it
    s.calibration_note = note
    prepared.set_calibration(cal)
    if cal is not None and save and s.info.is_main:
        save_checkpoint(ckpt, s.run.best)
    result = prepared.score(raw)
    if s.info.is_main:
        epoch = s.stopper.best_epoch
        report = result.report(split="val", best_epoch=epoch, calibration_note=note)
        result.write_metrics_json(s.run.root / "val_metrics.json", report)
        result.write_plots(s.run.root, roc_title=f"Validation ROC, epoch {epoch}",
                           cm_title=f"Validation, epoch {epoch}, threshold {result.threshold:.3f}")
    return result


def _evaluate_test_split(s: TrainingSession, ckpt: Checkpoint) -> dict:
    """The dataset's test split, every video of it, scored like ``evaluate`` scores it (calibrated, at the
    mapped threshold), with the best weights as they trained (every rank predicts its share); rank 0
    writes test_metrics.json and test_predictions.csv."""
    from .evaluate import evaluate_checkpoint, every_video

    cfg = s.cfg
    result = evaluate_checkpoint(
        ckpt, s.cache, "test", rows=every_video(s.cache.rows(), s.splits, "test"), model=s.raw_model,
        device=s.device, amp=cfg.amp, batch_size=cfg.batch_size, workers=cfg.workers, info=s.info,
        progress=s.progress, desc="test",
    )
    if s.info.is_main:
        result.write_metrics_json(s.run.root / "test_metrics.json")
        result.write_predictions(s.run.root / "test_predictions.csv")
    return result.metrics


# --- helpers ------------------------------------------------------------------------------------------


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _make_scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.scheduler == "cosine":
        warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total // 5)

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.scheduler == "step":
        every = (cfg.step_epochs or max(1, cfg.epochs // 3)) * steps_per_epoch

        def factor(step: int) -> float:
            return cfg.step_gamma ** (step // max(1, every))
    else:

        def factor(step: int) -> float:
            return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _resolve_pretrained(cfg: TrainConfig, quiet: bool = False) -> TrainConfig:
    """``pretrained`` as it really is: False for a backbone without pretrained weights (``tiny``), so
    config.yaml, the checkpoints and MODEL_CARD.md do not claim ImageNet weights that were never used."""
    if not cfg.model.pretrained or cfg.model.weights_file:
        return cfg
    from ..models import get_backbone_spec

    try:
        spec = get_backbone_spec(cfg.model.backbone)
    except ValueError:
        return cfg  # unknown backbone: build_model reports it
    if spec.weights is not None:
        return cfg
    if not quiet:
        log.info("backbone %s has no pretrained weights: it starts from random weights (pretrained: false)",
                 spec.name)
    return replace(cfg, model=replace(cfg.model, pretrained=False))


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back while the end-of-epoch files are written, then raise it: an
    interrupted run always has a consistent last.pt / best.pt / metrics.csv to resume from."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # Ctrl-C is ignored here anyway (background job)
    ):
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        log.warning("interrupt received: finishing this epoch's checkpoint first")

    try:
        previous = signal.signal(signal.SIGINT, hold)
    except (ValueError, OSError):  # no signal handling here (embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        if callable(previous):
            previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def _build_model_rank0_first(cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """Build (and download weights) on rank 0 first, so N ranks never race on the hub cache."""
    from ..models import build_model

    model = None
    error = None
    if info.is_main:
        try:
            model = build_model(cfg.model)
        except UserError as exc:
            error = str(exc)
        except ValueError as exc:
            error = str(exc)
    error = broadcast_object(error, info)
    if error:
        raise UserError(error)
    if model is None:
        model = build_model(cfg.model)
    return model


def _maybe_model_card(run_dir: Path, summary: dict, config: dict, cache: Cache) -> None:
    """Write MODEL_CARD.md through the predict stage's helper when it is present."""
    try:
        from ..model_card import write_model_card  # type: ignore[import-not-found]
    except ImportError:
        return
    try:
        write_model_card(
            run_dir,
            config=config,
            metrics=to_builtin(summary.get("best_metrics", {})),
            threshold=summary.get("threshold"),
            test_metrics=to_builtin(summary.get("test_metrics")),
            val_metrics=to_builtin(summary.get("val_metrics")),
            calibration=to_builtin(summary.get("calibration")),
            checkpoint="best.pt",
            cache=cache,
        )
    except TypeError:
        try:
            write_model_card(run_dir)
        except Exception as exc:  # the card is documentation; never lose a trained run over it
            log.warning("could not write the model card: %s", exc)
    except Exception as exc:
        log.warning("could not write the model card: %s", exc)
