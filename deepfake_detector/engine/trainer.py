"""``fit(TrainConfig)``: one training run from a face-clip cache to a run folder.

Run folder ``RUNS/NAME/``: ``config.yaml`` (resolved config), ``metrics.csv`` (one row per epoch),
``best.pt`` (best epoch, with the validation-chosen threshold), ``last.pt`` (everything needed to
resume: model, optimizer, scheduler, scaler, epoch, RNG states, early-stopping state, config),
``val_predictions.csv`` (best epoch), ``loss.png``, ``accuracy.png``, ``confusion_matrix.png``,
``roc.png``; with a dataset test split also ``test_metrics.json`` and ``test_predictions.csv``.

Determinism: the shuffling of each epoch is seeded by ``(seed, epoch)`` and augmentation by
``(seed, epoch, index)``; last.pt stores all RNG states. So ``--resume`` after a kill ends with the
same weights and metrics as an uninterrupted run (CPU, fixed seed).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..checkpoint import load_checkpoint, save_checkpoint, to_builtin
from ..config import ModelConfig, TrainConfig, default_batch_size, from_dict, to_dict
from ..data.cache import CONFIG_NAME, MANIFEST_NAME, load_manifest
from ..data.dataset import ClipDataset, split_rows
from ..data.records import index_to_label
from ..device import amp_dtype as autocast_dtype
from ..device import grad_scaler, precision_name, resolve_device, use_channels_last
from ..errors import UserError
from ..metrics import choose_threshold, compute_metrics
from ..utils import atomic_write_json, atomic_write_text
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
from .early_stopping import EarlyStoppingWithCheckpoint
from .loop import NonFiniteTracker, evaluate, train_epoch
from .rng import get_rng_state, set_rng_state

log = logging.getLogger(__name__)

__all__ = [
    "fit",
    "METRICS_COLUMNS",
    "RESUME_OVERRIDES",
    "read_preprocess_config",
    "evaluate_rows",
    "write_predictions_csv",
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
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def read_preprocess_config(cache: str | Path) -> dict:
    """The cache's preprocessing settings (``preprocess.json``'s ``config`` key, or the whole dict)."""
    path = Path(cache) / CONFIG_NAME
    if not path.is_file():
        log.warning("%s missing: the checkpoint will not record how clips were made", path)
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    elif isinstance(data, dict) and isinstance(data.get("preprocess"), dict):  # preprocess.json's layout
        data = data["preprocess"]
    return to_builtin(data) if isinstance(data, dict) else {}


def write_predictions_csv(
    path: str | Path, paths: list[str], y_true: Any, p_fake: Any, threshold: float
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "p_fake", "predicted"])
    for pth, y, p in zip(paths, y_true, p_fake):
        w.writerow([pth, index_to_label(int(y)), repr(float(p)), "FAKE" if p >= threshold else "REAL"])
    atomic_write_text(path, buf.getvalue())


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for row in history:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _read_metrics_csv(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = []
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = {
                k: float(v) for k, v in raw.items() if k != "epoch" and v not in ("", None)
            }
            row["epoch"] = int(raw["epoch"])
            if row["epoch"] <= upto_epoch:
                rows.append(row)
    return rows


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
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


def _prepare_run_dir(cfg: TrainConfig, info: DistInfo) -> Path:
    """Check the run folder on rank 0 (refuse to clobber a run) and share the verdict with every rank."""
    if not _NAME_RE.match(cfg.name or ""):
        raise UserError(f"invalid run name {cfg.name!r}: use letters, digits, '.', '_' or '-' (no paths)")
    run_dir = Path(cfg.runs_dir) / cfg.name
    error = None
    if info.is_main:
        try:
            if cfg.resume:
                if not (run_dir / "last.pt").is_file():
                    hint = ""
                    if run_dir.is_dir() and any(run_dir.iterdir()):
                        hint = (
                            " (the run stopped before it saved a resumable state); start it again with "
                            "--overwrite, or choose another --name"
                        )
                    raise UserError(f"cannot resume: {run_dir / 'last.pt'} does not exist{hint}")
            elif run_dir.exists() and any(run_dir.iterdir()):
                if not cfg.overwrite:
                    raise UserError(
                        f"run folder {run_dir} already exists; pass --resume to continue it or "
                        f"--overwrite to replace it (or choose another --name)"
                    )
                known = {"config.yaml", "metrics.csv", "last.pt", "best.pt"}
                if not known & {p.name for p in run_dir.iterdir()}:
                    raise UserError(f"{run_dir} exists and does not look like a run folder; not deleting it")
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
        except UserError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"cannot create run folder {run_dir}: {exc}"
    error = broadcast_object(error, info)
    if error:
        raise UserError(error)
    return run_dir


# Settings never reported as "ignored with --resume": they locate the run (name, runs_dir), are checked
# separately (cache) or are the resume request itself.
_NOT_COMPARED = frozenset({"name", "runs_dir", "cache", "resume", "overwrite", "model"})
_FLAG_NAMES = {"num_layers": "--lstm-layers"}  # config field -> CLI flag, where they differ
_NEGATABLE = frozenset({"pretrained", "amp", "feature_cache"})  # booleans with a --no-X flag


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


def _resume_config(
    cfg: TrainConfig, saved: dict, overrides: Optional[set], is_main: bool = True
) -> TrainConfig:
    """The saved config of a resumed run, with the allowed overrides (``RESUME_OVERRIDES``) from ``cfg``.

    ``overrides`` names the settings the user gave (the CLI's flags); None = all of RESUME_OVERRIDES
    (API use). A different cache is an error; other given settings that differ from the saved ones
    and may not change are ignored with one warning line naming them.
    """
    old = from_dict(TrainConfig, saved)
    if cfg.cache and old.cache and not _same_path(cfg.cache, old.cache):
        if (Path(old.cache) / MANIFEST_NAME).is_file() or not (Path(cfg.cache) / MANIFEST_NAME).is_file():
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
                "--workers, --device, --patience, --no-amp, --compile and --stop-after may change)",
                ", ".join(ignored),
            )
    keep = set(RESUME_OVERRIDES) if overrides is None else set(overrides) & set(RESUME_OVERRIDES)
    keep.add("cache")  # checked above: the saved cache, or the one given when the saved one is gone
    changes = {k: getattr(cfg, k) for k in keep}
    # stop_after belongs to one invocation: never inherit the "stop after 1 epoch" of the killed run
    changes.update(
        resume=True, name=cfg.name, runs_dir=cfg.runs_dir, overwrite=False, stop_after=cfg.stop_after
    )
    return replace(old, **changes)


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
def _sigint_deferred():
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


def _reconcile_best(
    stopper: EarlyStoppingWithCheckpoint, run_dir: Path, resume_ckpt: dict, info: DistInfo
) -> None:
    """Finish what a run killed while saving left undone.

    At the end of an epoch last.pt is written before val_predictions.csv and best.pt; when that epoch was
    the best one, last.pt also carries what best.pt needs (``best_pending``: threshold, metrics and the
    validation predictions; the weights are last.pt's own). A run killed in between has a best.pt that
    does not hold the best epoch last.pt names: both files are rewritten from last.pt, exactly as the
    killed run would have written them. Without that record (older last.pt) the bookkeeping falls back to
    what best.pt holds, with a warning.
    """
    best_path = run_dir / "best.pt"
    state = None
    if info.is_main and stopper.best_epoch >= 1:
        held_epoch, held_value = -1, None
        if best_path.is_file():
            ck = load_checkpoint(best_path)
            held_epoch = int(ck.get("epoch", -1))
            held_value = (ck.get("metrics") or {}).get(stopper.monitor)
            del ck
        pending = resume_ckpt.get("best_pending") or {}
        if held_epoch == stopper.best_epoch:
            pass
        elif pending.get("epoch") == stopper.best_epoch == int(resume_ckpt["epoch"]):
            preds = pending["val_predictions"]
            write_predictions_csv(
                run_dir / "val_predictions.csv", preds["paths"], preds["y_true"], preds["p_fake"],
                float(pending["threshold"]),
            )
            best = {k: resume_ckpt[k] for k in ("model", "epoch", "config", "version") if k in resume_ckpt}
            best.update(
                optimizer=None, scheduler=None, scaler=None, rng=None,
                threshold=float(pending["threshold"]), metrics=pending["metrics"],
            )
            save_checkpoint(best, best_path)
            log.info("best.pt of epoch %d rewritten from last.pt (the run was stopped while saving)",
                     stopper.best_epoch)
        else:
            state = stopper.state_dict()
            if held_epoch >= 1 and isinstance(held_value, (int, float)):
                state.update(best=float(held_value), best_epoch=held_epoch, counter=0)
            else:
                state.update(best=None, best_epoch=-1, counter=0)
            log.warning(
                "best.pt holds epoch %s, not the best epoch %d recorded in last.pt (the run was stopped "
                "while saving); continuing from best.pt",
                held_epoch if held_epoch >= 1 else "none",
                stopper.best_epoch,
            )
    state = broadcast_object(state, info)
    if state:
        stopper.load_state_dict(state)


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


def evaluate_rows(
    model: nn.Module,
    cache: str,
    rows: list,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    workers: int = 0,
    info: Optional[DistInfo] = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Predict manifest ``rows`` (eval transform); ``{loss, y_true, p_fake, paths, ...}`` in row order."""
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


def fit(cfg: TrainConfig, resume_overrides: Optional[set] = None, progress: bool = True) -> dict:
    """Train per ``cfg`` and write the run folder; returns a summary (and the trained ``model``).

    With ``cfg.resume`` the saved config in ``last.pt`` is used, except the settings named in
    ``resume_overrides`` (default: all of ``RESUME_OVERRIDES``) which are taken from ``cfg``.
    """
    pre_device = resolve_device(cfg.device, local_rank=0)
    info = init_distributed(pre_device.type)
    try:
        return _fit(cfg, info, resume_overrides, progress)
    finally:
        cleanup_distributed(info)


def _fit(cfg: TrainConfig, info: DistInfo, resume_overrides: Optional[set], progress: bool) -> dict:
    device = resolve_device(cfg.device, info.local_rank)
    run_dir = _prepare_run_dir(cfg, info)
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    resume_ckpt = None
    saved_epochs = None
    cfg = _resolve_pretrained(cfg, quiet=cfg.resume or not info.is_main)
    if cfg.resume:
        resume_ckpt = load_checkpoint(last_path)
        saved_train = resume_ckpt["config"]["train"]
        saved_epochs = saved_train.get("epochs")
        cfg = _resume_config(cfg, saved_train, resume_overrides, is_main=info.is_main)
        cfg = _resolve_pretrained(cfg, quiet=True)
        log.info("resuming %s from epoch %d", run_dir, resume_ckpt["epoch"])
    if not cfg.cache:
        raise UserError("no cache folder given")
    if cfg.batch_size == 0:  # auto: resolved here, so the run's config records the real value
        cfg = replace(cfg, batch_size=default_batch_size(device.type))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _seed_everything(cfg.seed)

    # --- data -------------------------------------------------------------------------------------
    try:
        rows = load_manifest(cfg.cache)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    pre_cfg = read_preprocess_config(cfg.cache)
    splits = split_rows(rows, cfg.val_fraction, cfg.seed, include_no_face=cfg.include_no_face)
    if not splits["train"] or not splits["val"]:
        raise UserError(
            f"{cfg.cache}: need usable training and validation videos (status ok, REAL/FAKE "
            f"label); found train={len(splits['train'])} val={len(splits['val'])}"
        )
    train_ds = ClipDataset(
        cfg.cache, splits["train"], cfg.seq_len, train=True, seed=cfg.seed, return_index=True, raw=True
    )
    val_ds = ClipDataset(cfg.cache, splits["val"], cfg.seq_len, train=False, return_index=True, raw=True)
    counts = np.bincount(np.asarray(train_ds.labels, dtype=np.int64), minlength=2)
    if (counts == 0).any():
        raise UserError(
            f"the training split has only {'FAKE' if counts[0] == 0 else 'REAL'} videos; "
            "a detector needs both classes"
        )
    if info.is_main:
        log.info(
            "videos: train %d (REAL %d, FAKE %d), val %d, test %d",
            len(train_ds),
            counts[0],
            counts[1],
            len(val_ds),
            len(splits["test"]),
        )
    class_weights = torch.tensor(counts.sum() / (2.0 * counts), dtype=torch.float32)
    sample_weights = None
    if cfg.balance == "sampler":
        sample_weights = [1.0 / counts[y] for y in train_ds.labels]
    train_sampler = BalancedDistributedSampler(
        train_ds, info.world_size, info.rank, shuffle=True, seed=cfg.seed, weights=sample_weights
    )
    pin = cfg.pin_memory and device.type == "cuda"

    # One loader for the whole run: its worker processes live across epochs (persistent_workers), and
    # the epoch reaches them with each index (EpochTaggedSampler), not through dataset.set_epoch.
    tagged_sampler = EpochTaggedSampler(train_sampler)
    g = torch.Generator()
    g.manual_seed(cfg.seed * 1000003)  # worker base seeds, never the global RNG
    loader_opts: dict = {"num_workers": cfg.workers, "pin_memory": pin}
    if cfg.workers > 0:
        loader_opts.update(persistent_workers=True, prefetch_factor=4)
    steps_per_epoch = math.ceil(len(tagged_sampler) / cfg.batch_size)
    if cfg.limit_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.limit_train_batches)

    # --- model, optimizer -------------------------------------------------------------------------
    model = _build_model_rank0_first(cfg, info).to(device)
    if use_channels_last(device, cfg.channels_last):
        model.set_channels_last(True)
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = grad_scaler(amp_dtype)
    raw_model = model
    net: nn.Module = model  # what the loops call: the whole model on clips, or its head on features
    if cfg.model.freeze_backbone and cfg.feature_cache:
        from .features import FeatureDataset, HeadOnly, extract_features

        feat_dir = extract_features(
            raw_model,
            cfg.cache,
            splits["train"] + splits["val"],
            cfg.model,
            cfg.seed,
            device,
            amp_dtype,
            cfg.batch_size,
            cfg.workers,
            info,
        )
        train_ds = FeatureDataset(feat_dir, splits["train"], cfg.seq_len)
        val_ds = FeatureDataset(feat_dir, splits["val"], cfg.seq_len)
        net = HeadOnly(raw_model)
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.batch_size,
        sampler=ShardSampler(len(val_ds), info.world_size, info.rank),
        generator=torch.Generator().manual_seed(cfg.seed),  # else each new iterator draws the global RNG
        **loader_opts,
    )
    # made here, after train_ds may have become a FeatureDataset
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, sampler=tagged_sampler, generator=g, drop_last=False,
        **loader_opts,
    )

    def train_loader_for(epoch: int) -> DataLoader:
        tagged_sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)  # for workers=0 and any direct use; the workers get it per index
        return train_loader
    train_model: nn.Module = net
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    params = [p for p in raw_model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # fused CUDA kernels for the update (one launch instead of several per parameter group)
    extra = {"fused": True} if device.type == "cuda" else {}
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    scheduler = _make_scheduler(cfg, optimizer, steps_per_epoch)
    criterion = nn.CrossEntropyLoss(
        weight=class_weights.to(device) if cfg.balance == "weighted_loss" else None
    )
    monitor = cfg.monitor
    if monitor != "val_loss" and len(set(val_ds.labels)) < 2:
        # AUC is undefined (NaN) and F1/accuracy are degenerate with one class: no epoch could ever be "best"
        log.warning("the validation split has only one class: monitoring val_loss instead of %s", monitor)
        monitor = "val_loss"
    # write=False: this loop writes best.pt itself, after last.pt (see the end of an epoch)
    stopper = EarlyStoppingWithCheckpoint(best_path, monitor, cfg.patience, cfg.min_delta, write=False)
    tracker = NonFiniteTracker(cfg.max_nonfinite)
    config_dict = {
        "train": to_dict(cfg),
        "model": to_dict(cfg.model),
        "preprocess": pre_cfg,
        # what "auto" and the device-dependent switches became in this run (the train section keeps
        # what was asked, so a resume on another machine decides afresh)
        "runtime": {
            "device": str(device),
            "world_size": info.world_size,
            "amp": precision_name(amp_dtype),
            "channels_last": use_channels_last(device, cfg.channels_last),
            "torch": str(torch.__version__),
        },
    }

    history: list[dict] = []
    start_epoch = 1
    best_val: Optional[dict] = None
    if resume_ckpt is not None:
        raw_model.load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if scaler is not None and resume_ckpt.get("scaler"):
            scaler.load_state_dict(resume_ckpt["scaler"])
        stopper.load_state_dict(resume_ckpt.get("early_stopping") or {})
        _reconcile_best(stopper, run_dir, resume_ckpt, info)
        if saved_epochs is not None and saved_epochs != cfg.epochs and cfg.scheduler != "none":
            # The schedule is rebuilt for the new total (its lambda reads cfg.epochs): the rest of the run
            # follows the schedule of a run planned for cfg.epochs from the start. Apply it now, not one
            # step late.
            before = float(optimizer.param_groups[0]["lr"])
            for group, base, fn in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * fn(scheduler.last_epoch)
            if info.is_main:
                log.warning(
                    "--epochs %d (saved %d): the %s LR schedule is recomputed for %d epochs, as if the run "
                    "had been planned for them; the LR goes from %.3g to %.3g",
                    cfg.epochs, saved_epochs, cfg.scheduler, cfg.epochs, before,
                    float(optimizer.param_groups[0]["lr"]),
                )
        start_epoch = int(resume_ckpt["epoch"]) + 1
        history = _read_metrics_csv(run_dir / "metrics.csv", start_epoch - 1)
        per_rank = resume_ckpt.get("rng_per_rank") or []
        set_rng_state(per_rank[info.rank] if info.rank < len(per_rank) else resume_ckpt.get("rng") or {})
        del resume_ckpt
    if info.is_main:
        import yaml

        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_builtin(config_dict), sort_keys=False))

    def base_checkpoint(epoch: int) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in raw_model.state_dict().items()},
            "epoch": epoch,
            "config": to_builtin(config_dict),
            "version": __version__,
        }

    # --- epochs -----------------------------------------------------------------------------------
    epochs_this_run = 0
    stopped_early = False
    interrupted = False
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopper.should_stop:  # a resumed run that had already met its patience
            stopped_early = True
            break
        t0 = time.perf_counter()
        tr = train_epoch(
            train_model,
            train_loader_for(epoch),
            optimizer,
            criterion,
            device,
            scheduler=scheduler,
            scaler=scaler,
            amp_dtype=amp_dtype,
            grad_clip=cfg.grad_clip,
            tracker=tracker,
            paths=train_ds.paths,
            dist_info=info,
            limit_batches=cfg.limit_train_batches,
            progress=progress,
            desc=f"epoch {epoch}/{cfg.epochs}",
        )
        broadcast_buffers(raw_model, info)
        ev = evaluate(
            net, val_loader, device, amp_dtype=amp_dtype, dist_info=info, progress=progress, desc="val"
        )
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
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if info.is_main:
            log.info(
                "epoch %d: train loss %.4f acc %.3f | val loss %.4f acc %.3f auc %.3f",
                epoch,
                tr["loss"],
                tr["accuracy"],
                ev["loss"],
                m["accuracy"],
                m["auc"],
            )
        if tr["skipped"]:
            log.warning("epoch %d: %d batches skipped (non-finite)", epoch, tr["skipped"])

        def make_best(epoch: int = epoch, ev: dict = ev, row: dict = row) -> dict:
            thr = choose_threshold(ev["y_true"], ev["p_fake"], cfg.threshold_method)
            at_thr = compute_metrics(ev["y_true"], ev["p_fake"], thr)
            ck = base_checkpoint(epoch)
            ck.update(
                optimizer=None,
                scheduler=None,
                scaler=None,
                rng=None,
                threshold=float(thr),
                metrics=to_builtin({**row, "val_at_threshold": at_thr}),
            )
            return ck

        improved = stopper.step(row[monitor], epoch, raw_model, make_best)
        if improved:
            thr = choose_threshold(ev["y_true"], ev["p_fake"], cfg.threshold_method)
            best_val = {
                "y_true": ev["y_true"],
                "p_fake": ev["p_fake"],
                "threshold": thr,
                "paths": [val_ds.paths[i] for i in ev["index"]],
            }
        rng = all_gather_objects(get_rng_state(), info)
        if info.is_main:
            from ..plots import plot_accuracy, plot_loss

            # metrics.csv (a resume ignores rows past last.pt's epoch), then last.pt (the resumable state),
            # then val_predictions.csv, best.pt and the plots; Ctrl-C waits until all are written. last.pt
            # carries what best.pt needs, so a kill between the two is repaired exactly on --resume
            # (_reconcile_best).
            with _sigint_deferred():
                _write_metrics_csv(run_dir / "metrics.csv", history)
                best_ck = make_best() if improved else None
                last = base_checkpoint(epoch)
                if best_ck is not None and best_val is not None:
                    last["best_pending"] = {
                        "epoch": epoch,
                        "threshold": best_ck["threshold"],
                        "metrics": best_ck["metrics"],
                        "val_predictions": to_builtin(
                            {k: best_val[k] for k in ("paths", "y_true", "p_fake")}
                        ),
                    }
                last.update(
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None else None,
                    rng=rng[0],
                    rng_per_rank=rng if info.enabled else None,
                    early_stopping=stopper.state_dict(),
                    metrics=to_builtin(row),
                    threshold=None,
                )
                save_checkpoint(last, last_path)
                del last
                if best_ck is not None and best_val is not None:
                    write_predictions_csv(
                        run_dir / "val_predictions.csv", best_val["paths"], ev["y_true"], ev["p_fake"],
                        best_val["threshold"],
                    )
                    save_checkpoint(best_ck, best_path)
                    del best_ck
                plot_loss(history, run_dir / "loss.png")
                plot_accuracy(history, run_dir / "accuracy.png")
        epochs_this_run += 1
        if stopper.should_stop:
            log.info(
                "early stopping: no %s improvement for %d epochs (best epoch %d)",
                monitor,
                stopper.patience,
                stopper.best_epoch,
            )
            stopped_early = True
            break
        if cfg.stop_after and epochs_this_run >= cfg.stop_after and epoch < cfg.epochs:
            interrupted = True
            break
    barrier(info)

    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "epochs_run": epochs_this_run,
        "history": history,
        "stopped_early": stopped_early,
        "interrupted": interrupted,
        "best_epoch": stopper.best_epoch,
        "best": stopper.best,
        "monitor": monitor,
        "model": raw_model,
        "config": cfg,
        "rank": info.rank,
        "world_size": info.world_size,
    }
    if interrupted:
        return summary

    # --- finish: best weights, plots of the best epoch, test split ---------------------------------
    if not stopper.restore_best(raw_model):
        raise UserError(f"no epoch produced a finite {monitor}; nothing to save (check the data)")
    best_ckpt_meta = load_checkpoint(best_path) if best_path.is_file() else None
    if best_val is None:  # resumed run: the best epoch happened before the kill
        best_val = _read_val_predictions(run_dir / "val_predictions.csv")
    threshold = float(best_ckpt_meta["threshold"]) if best_ckpt_meta else 0.5
    summary.update(threshold=threshold, best_metrics=best_ckpt_meta["metrics"] if best_ckpt_meta else {})
    if info.is_main and best_val is not None:
        from ..plots import plot_confusion_matrix, plot_roc

        m = compute_metrics(best_val["y_true"], best_val["p_fake"], threshold)
        plot_confusion_matrix(
            m["confusion_matrix"],
            run_dir / "confusion_matrix.png",
            title=f"Validation, epoch {stopper.best_epoch}, threshold {threshold:.3f}",
        )
        plot_roc(
            best_val["y_true"],
            best_val["p_fake"],
            run_dir / "roc.png",
            title=f"Validation ROC, epoch {stopper.best_epoch}",
        )
        summary["val_metrics"] = m
    if splits["test"]:
        ev = evaluate_rows(
            raw_model,
            cfg.cache,
            splits["test"],
            cfg.seq_len,
            cfg.batch_size,
            device,
            amp_dtype,
            cfg.workers,
            info,
            progress,
            desc="test",
        )
        tm = compute_metrics(ev["y_true"], ev["p_fake"], threshold)
        summary["test_metrics"] = tm
        if info.is_main:
            atomic_write_json(run_dir / "test_metrics.json", to_builtin(tm))
            write_predictions_csv(
                run_dir / "test_predictions.csv", ev["paths"], ev["y_true"], ev["p_fake"], threshold
            )
    if info.is_main:
        _maybe_model_card(run_dir, summary, config_dict)
    barrier(info)
    return summary


def _read_val_predictions(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "paths": [r["path"] for r in rows],
        "y_true": np.array([1 if r["label"] == "FAKE" else 0 for r in rows], dtype=np.int64),
        "p_fake": np.array([float(r["p_fake"]) for r in rows], dtype=np.float64),
    }


def _maybe_model_card(run_dir: Path, summary: dict, config: dict) -> None:
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
        )
    except TypeError:
        try:
            write_model_card(run_dir)
        except Exception as exc:  # the card is documentation; never lose a trained run over it
            log.warning("could not write the model card: %s", exc)
    except Exception as exc:
        log.warning("could not write the model card: %s", exc)
