"""One training epoch and one evaluation pass, as plain functions.

``train_epoch`` handles mixed precision (bf16, or fp16 with a ``GradScaler``), gradient clipping and
non-finite batches: a batch whose inputs, loss or gradients are NaN/Inf is reported with its video
ids and skipped; ``max_nonfinite`` such batches in a row stop the run with a clear ``UserError``
(a diverged model, not bad luck). Under DDP the skip decision is agreed by all ranks, so no rank
waits forever in an all-reduce the others skipped.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..data.dataset import clips_to_device
from ..errors import UserError
from .distributed import DistInfo, all_gather_objects, all_reduce_flags

log = logging.getLogger(__name__)

__all__ = ["train_epoch", "evaluate", "NonFiniteTracker", "autocast_context"]


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype)


def _progress(loader: Any, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, disable=not enabled or not sys.stderr.isatty()
    )


class NonFiniteTracker:
    """Counts consecutive non-finite batches and raises after ``limit`` in a row."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.consecutive = 0
        self.total = 0

    def ok(self) -> None:
        self.consecutive = 0

    def bad(self, what: str, names: Sequence[str]) -> None:
        self.consecutive += 1
        self.total += 1
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        log.warning(
            "non-finite %s: skipped this batch (%d in a row); videos: %s", what, self.consecutive, shown
        )
        if self.consecutive >= self.limit:
            raise UserError(
                f"training stopped: {self.consecutive} batches in a row had non-finite {what} "
                f"(last videos: {shown}). Lower --lr, check these clips, or raise max_nonfinite"
            )


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    return batch[0], batch[1], None


def _names(index: Optional[torch.Tensor], paths: Optional[Sequence[str]]) -> list[str]:
    if index is None:
        return ["?"]
    if paths is None:
        return [str(int(i)) for i in index]
    return [paths[int(i)] for i in index]


def train_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: torch.device,
    *,
    scheduler: Any = None,
    scaler: Any = None,
    amp_dtype: Optional[torch.dtype] = None,
    grad_clip: float = 0.0,
    tracker: Optional[NonFiniteTracker] = None,
    paths: Optional[Sequence[str]] = None,
    dist_info: Optional[DistInfo] = None,
    limit_batches: int = 0,
    progress: bool = True,
    desc: str = "train",
    on_step: Optional[Callable[[], None]] = None,
) -> dict:
    """Train for one pass over ``loader``; returns ``{loss, accuracy, n, skipped, seconds}``.

    ``scheduler`` (if given) is stepped once per optimizer step, and then ``on_step`` (the weight
    average's update). Loss and accuracy are averaged over
    the samples of non-skipped batches (this rank's share under DDP).
    """
    info = dist_info or DistInfo()
    tracker = tracker or NonFiniteTracker(5)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    bar = _progress(loader, desc, progress and info.is_main)
    totals = _EpochTotals(device)
    for step, batch in enumerate(bar):
        if limit_batches and step >= limit_batches:
            break
        x, y, index = _unpack(batch)
        raw = not x.is_floating_point()  # uint8 clips: finite by construction, normalised on device
        x = clips_to_device(x, device)
        y = y.to(device, non_blocking=True)
        # Checked before forward: a NaN batch would poison BatchNorm running statistics.
        if not raw and _inputs_nonfinite_anywhere(x, info):
            totals.skipped += 1
            tracker.bad("inputs", _names(index, paths))
            continue
        logits, loss = _forward_backward(model, criterion, optimizer, scaler, x, y, device, amp_dtype)
        norm = nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        bad_loss_any, bad_grad, bad_loss_here = _nonfinite_flags(loss, norm, info)
        if bad_loss_any or bad_grad:
            totals.skipped += 1
            what = _drop_step(optimizer, scaler, bad_loss_any, bad_loss_here)
            if what:
                tracker.bad(what, _names(index, paths))
            continue
        _optimizer_step(optimizer, scaler, scheduler)
        if on_step is not None:
            on_step()
        tracker.ok()
        totals.add(loss, logits, y)
        if info.is_main and not getattr(bar, "disable", True) and step % 10 == 0:
            bar.set_postfix(**totals.postfix())
    return totals.summary(info, t0)


class _EpochTotals:
    """Loss and accuracy sums of the non-skipped batches, kept on the device: no host sync per step."""

    def __init__(self, device: torch.device) -> None:
        self.loss_acc = torch.zeros((), dtype=torch.float64, device=device)
        self.correct_acc = torch.zeros((), dtype=torch.int64, device=device)
        self.n = 0
        self.skipped = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        bs = int(y.shape[0])
        self.loss_acc += loss.detach().double() * bs
        self.correct_acc += (logits.detach().argmax(dim=1) == y).sum()
        self.n += bs

    def postfix(self) -> dict[str, str]:
        """The running averages for the progress bar (a host sync: call it only now and then)."""
        loss = float(self.loss_acc) / self.n
        return {"loss": f"{loss:.4f}", "acc": f"{int(self.correct_acc) / self.n:.3f}"}

    def summary(self, info: DistInfo, t0: float) -> dict:
        """Average over all ranks' samples so every rank logs (and writes) the same numbers."""
        loss_sum = float(self.loss_acc)
        correct = int(self.correct_acc)
        parts = all_gather_objects((loss_sum, correct, self.n, self.skipped), info)
        loss_sum = sum(p[0] for p in parts)
        correct = sum(p[1] for p in parts)
        n = sum(p[2] for p in parts)
        skipped = sum(p[3] for p in parts)
        return {
            "loss": loss_sum / n if n else float("nan"),
            "accuracy": correct / n if n else float("nan"),
            "n": n,
            "skipped": skipped,
            "seconds": time.perf_counter() - t0,
        }


def _inputs_nonfinite_anywhere(x: torch.Tensor, info: DistInfo) -> bool:
    """Does any rank hold non-finite inputs? Under DDP every rank learns whether any rank must skip,
    so no rank waits in a collective alone."""
    return bool(all_reduce_flags((~torch.isfinite(x).all()).float().reshape(1), info).item())


def _forward_backward(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                      amp_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward, gradients left unscaled for clipping; returns ``(logits, loss)``.

    Backward runs even when the loss is not finite (its gradients are then not finite either, on
    every rank once DDP has averaged them), so the loss and gradient checks need ONE host-device
    sync per step, after backward, instead of one before and one after.
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(device, amp_dtype):
        logits = model(x)
        loss = criterion(logits.float(), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    return logits, loss


def _nonfinite_flags(loss: torch.Tensor, norm: torch.Tensor, info: DistInfo) -> tuple[bool, bool, bool]:
    """``(loss bad on any rank, gradients bad, loss bad on this rank)``, in one host-device sync."""
    local = torch.stack([~torch.isfinite(loss.detach()), ~torch.isfinite(norm)]).float()
    reduced = all_reduce_flags(local.clone(), info).to(local.device)  # in place under NCCL
    bad_loss_any, bad_grad, bad_loss_here, _ = (v > 0 for v in torch.cat([reduced, local]).tolist())
    return bad_loss_any, bad_grad, bad_loss_here


def _drop_step(optimizer: torch.optim.Optimizer, scaler: Any, bad_loss_any: bool,
               bad_loss_here: bool) -> str:
    """Skip the step of a non-finite batch, keeping the scaler consistent. Returns what to report as
    non-finite, or "" for an fp16 overflow (normal while the scaler calibrates: not a bad batch)."""
    if scaler is not None:
        if not bad_loss_any:
            # fp16 overflow: the scaler skips the step and lowers its scale (normal while calibrating)
            scaler.step(optimizer)
            scaler.update()
            return ""
        scaler.update()  # closes this iteration's unscale_ (lowers the scale: grads are not finite)
    optimizer.zero_grad(set_to_none=True)
    return "loss" if bad_loss_here else ("loss (on another rank)" if bad_loss_any else "gradients")


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: Any, scheduler: Any) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    dist_info: Optional[DistInfo] = None,
    progress: bool = True,
    desc: str = "val",
    frames: bool = False,
) -> dict:
    """Predict every sample of ``loader``; returns ``{loss, index, y_true, p_fake, n, seconds}``.

    ``loss`` is the mean unweighted cross-entropy (the log-loss of P(FAKE)). Under DDP each rank
    predicts its shard (``ShardSampler``) and the results of all ranks are gathered, ordered by
    dataset index, so every rank holds the full validation set's predictions. ``model`` should be
    the plain module (not the DDP wrapper) so evaluation runs no collectives.

    ``frames=True`` (a model with ``frame_features`` and ``head``) also scores each frame of a clip alone,
    as a one-frame clip, from the same backbone pass: ``p_frames`` ``[N, T]`` (frame-level AUC, the way
    frame-based detectors are compared). The clip's own score is computed exactly as ``model(x)`` does.
    """
    info = dist_info or DistInfo()
    model.eval()
    t0 = time.perf_counter()
    frames = frames and hasattr(model, "frame_features") and hasattr(model, "head")
    parts: dict[str, list[np.ndarray]] = {"index": [], "y": [], "p": [], "loss": [], "frames": []}
    offset = 0
    for batch in _progress(loader, desc, progress and info.is_main):
        x, y, index = _unpack(batch)
        if index is None:
            index = torch.arange(offset, offset + len(y))
        offset += len(y)
        x = clips_to_device(x, device)
        with autocast_context(device, amp_dtype):
            logits, frame_logits = _clip_and_frame_logits(model, x) if frames else (model(x), None)
        logits = logits.float().cpu()
        losses = nn.functional.cross_entropy(logits, y.long(), reduction="none")
        parts["index"].append(index.numpy())
        parts["y"].append(y.numpy())
        parts["p"].append(torch.softmax(logits, dim=1)[:, 1].numpy())
        parts["loss"].append(losses.numpy())
        if frame_logits is not None:
            parts["frames"].append(torch.softmax(frame_logits.float().cpu(), dim=1)[:, 1].reshape(len(y), -1)
                                   .numpy())
    local = (_cat(parts["index"], np.int64), _cat(parts["y"], np.int64), _cat(parts["p"], np.float64),
             _cat(parts["loss"], np.float64))
    if frames:
        local += (_cat(parts["frames"], np.float64),)
    result = _gather_predictions(local, info)
    result["seconds"] = time.perf_counter() - t0
    return result


def _clip_and_frame_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clip logits [B, 2], frame logits [B*T, 2])`` from one backbone pass: the clip through the head
    as ``model.forward`` runs it, and each frame's feature alone as a sequence of length one."""
    b, t = x.shape[:2]
    feats = model.frame_features(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
    return model.head(feats), model.head(feats.reshape(b * t, 1, -1))


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def _gather_predictions(local: tuple[np.ndarray, ...], info: DistInfo) -> dict:
    """All ranks' ``(index, y_true, p_fake, losses)``, ordered by dataset index so every rank holds
    the same arrays, and the mean of the finite losses."""
    gathered = all_gather_objects(local, info)
    index = np.concatenate([g[0] for g in gathered])
    order = np.argsort(index, kind="stable")
    index = index[order]
    y_true = np.concatenate([g[1] for g in gathered])[order]
    p_fake = np.concatenate([g[2] for g in gathered])[order]
    losses = np.concatenate([g[3] for g in gathered])[order]
    finite = np.isfinite(losses)
    out = {
        "loss": float(losses[finite].mean()) if finite.any() else float("nan"),
        "index": index,
        "y_true": y_true,
        "p_fake": p_fake,
        "n": int(index.size),
    }
    if len(local) > 4:  # per-frame scores [N, T]
        shards = [g[4].reshape(len(g[0]), -1) for g in gathered if len(g[0])]
        out["p_frames"] = np.concatenate(shards)[order] if shards else np.zeros((0, 0))
    return out
