"""Feature cache for a frozen backbone (``train --freeze-backbone``).

With the backbone frozen, its per-frame features never change, so they are computed once with the
test transform and stored next to the crop cache; training then runs only the LSTM + classifier on
them (an epoch over 10k clips takes seconds). Layout::

    CACHE/features/<key>/info.json            what made the features (backbone, weights, version)
    CACHE/features/<key>/<clip-name>.npy      float16 [T, F], one row per cached frame

``<key>`` hashes the backbone name and the identity of its weights (ImageNet enum, sha256 of a
weights file, or the seed of a random init), so features from different weights never mix.

Augmentation (``train --feature-views V``): besides the un-augmented features (validation reads those),
each training clip gets ``V`` augmented views, the clip put through the training augmentation
(``--augment``, H.264 re-encoding included) with a draw fixed by ``(seed, view, clip name)``, each in its
own keyed folder. Every epoch a clip reads one of its views, drawn from ``(seed, epoch, index)``. That
costs ``V`` extractions instead of one backbone pass per clip per epoch, and shows the head as many
different augmentations of a clip as there are views.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..config import ModelConfig
from ..data.cache import FEATURES_DIR, Cache, ManifestRow  # noqa: F401  (FEATURES_DIR: re-exported)
from ..data.dataset import ClipDataset, fit_length, order_fake
from ..data.records import label_to_index, normalize_label
from ..utils import atomic_write_bytes, atomic_write_json, sha256_file
from .distributed import DistInfo, ShardSampler, barrier
from .loop import autocast_context

log = logging.getLogger(__name__)

__all__ = ["feature_key", "extract_features", "extract_feature_views", "FeatureDataset", "HeadOnly"]

_VIEW_STREAM = 7919  # keeps the views' augmentation draws apart from the training epochs' (seed, epoch, i)


def feature_key(model_cfg: ModelConfig, seed: int, augment: str = "", view: int = 0) -> tuple[str, dict]:
    """Short key naming what produces the features (backbone + weights, and for ``view`` >= 1 the
    augmentation set and the view's number), and its description."""
    if model_cfg.weights_file:
        weights = "file:" + sha256_file(model_cfg.weights_file)
    elif model_cfg.pretrained and model_cfg.backbone != "tiny":
        from ..models import get_backbone_spec

        spec = get_backbone_spec(model_cfg.backbone)
        weights = f"torchvision:{spec.weights()}" if spec.weights else f"random:seed{seed}"
    else:
        weights = f"random:seed{seed}"
    desc = {"backbone": model_cfg.backbone, "weights": weights, "transform": "eval_transform", "version": 1}
    if view:
        desc.update(transform="train_clip", augment=augment, view=int(view), seed=int(seed))
    key = hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return f"{model_cfg.backbone}-{key}", desc


def _feature_path(feat_dir: Path, clip_rel: str) -> Path:
    return feat_dir / (Path(clip_rel).stem + ".npy")


def extract_features(
    model: nn.Module,
    cache: Cache | str | os.PathLike,
    rows: Sequence[ManifestRow],
    model_cfg: ModelConfig,
    seed: int,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    batch_size: int = 8,
    workers: int = 0,
    info: Optional[DistInfo] = None,
    augment: str = "",
    view: int = 0,
) -> Path:
    """Compute (once) the per-frame features of ``rows``' clips; returns the feature folder.

    ``view`` 0 is the un-augmented clips; ``view`` >= 1 the clips put through ``augment`` (one draw
    per view and clip). Existing feature files are reused, so a rerun or a resumed run costs nothing.
    Under DDP each rank extracts its share, then all ranks wait for each other.
    """
    info = info or DistInfo()
    cache = Cache.of(cache)
    key, desc = feature_key(model_cfg, seed, augment, view)
    feat_dir = cache.features_dir(key)
    todo = [r for r in rows if not _feature_path(feat_dir, r.clip).is_file()]
    if info.is_main:
        atomic_write_json(feat_dir / "info.json", {**desc, "package_version": __version__})
        log.info("feature cache %s: %d of %d clips to extract", feat_dir, len(todo), len(rows))
    if todo:
        ds = _WholeClips(cache, todo, augment if view else None, (seed, _VIEW_STREAM, view))
        _extract(model, ds, todo, feat_dir, seed, device, amp_dtype, batch_size, workers, info)
    barrier(info)
    return feat_dir


def extract_feature_views(model: nn.Module, cache: Cache | str | os.PathLike, rows: Sequence[ManifestRow],
                          model_cfg: ModelConfig, seed: int, views: int, augment: str,
                          **kwargs: Any) -> list[Path]:
    """The folders of ``views`` augmented feature views of ``rows`` (view 1 .. ``views``), extracted once."""
    return [extract_features(model, cache, rows, model_cfg, seed, augment=augment, view=v, **kwargs)
            for v in range(1, views + 1)]


def _extract(model: nn.Module, ds: Dataset, todo: list[ManifestRow], feat_dir: Path, seed: int,
             device: torch.device, amp_dtype: Optional[torch.dtype], batch_size: int, workers: int,
             info: DistInfo) -> None:
    """Write the features of ``todo``'s clips (this rank's share), about ``batch_size * 20`` frames a step."""
    loader = DataLoader(
        ds,
        batch_size=1,
        sampler=ShardSampler(len(ds), info.world_size, info.rank),
        # its own generator: a loader without one draws its worker seed from the global torch RNG,
        # so a run that extracts would train differently from one that finds the features cached
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        collate_fn=lambda b: b[0],
    )
    model.eval()
    with torch.no_grad():
        pending: list[tuple[int, torch.Tensor]] = []

        def flush() -> None:
            if not pending:
                return
            frames = torch.cat([x for _, x in pending]).to(device, non_blocking=True)
            with autocast_context(device, amp_dtype):
                feats = model.frame_features(frames)
            feats = feats.float().cpu().numpy().astype(np.float16)
            start = 0
            for i, x in pending:
                buf = io.BytesIO()
                np.save(buf, feats[start : start + len(x)], allow_pickle=False)
                atomic_write_bytes(_feature_path(feat_dir, todo[i].clip), buf.getvalue())
                start += len(x)
            pending.clear()

        for i, x in loader:
            pending.append((i, x))
            if sum(len(p[1]) for p in pending) >= batch_size * 20:
                flush()
        flush()


class _WholeClips(Dataset):
    """Whole cached clips at their own length, normalised; with ``augment``, put through the training
    augmentation drawn from ``stream`` + the clip's name (not its index: the draw must not depend on
    which clips were still to extract)."""

    def __init__(self, cache: Cache, rows: Sequence[ManifestRow], augment: Optional[str] = None,
                 stream: tuple[int, ...] = ()) -> None:
        self.ds = ClipDataset(cache, rows, seq_len=1, train=False)
        self.augment, self.stream = augment, stream

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        from ..data.dataset import eval_transform, normalize_clip, train_clip

        clip = self.ds.load(i)
        if self.augment is None:
            return i, eval_transform(clip, clip.shape[0])
        rng = np.random.default_rng([*self.stream, zlib.crc32(self.ds.rows[i].clip.encode())])
        return i, normalize_clip(train_clip(clip, clip.shape[0], rng, self.augment))


class FeatureDataset(Dataset):
    """Cached per-frame features: ``(features float [seq_len, F], label, index)`` like ClipDataset's items.

    With several folders (augmented views), each epoch reads one view per clip, drawn from
    ``(seed, epoch, index)`` like ClipDataset's augmentation, so workers and resumes see the same."""

    def __init__(self, feat_dir: str | os.PathLike | Sequence[str | os.PathLike], rows: Sequence[ManifestRow],
                 seq_len: int, seed: int = 0, order_fakes: float = 0.0) -> None:
        dirs = [feat_dir] if isinstance(feat_dir, (str, os.PathLike)) else list(feat_dir)
        if not dirs:
            raise ValueError("FeatureDataset needs at least one feature folder")
        self.feat_dirs = [Path(d) for d in dirs]
        self.rows = list(rows)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.order_fakes = float(order_fakes)  # as ClipDataset's: frozen features permute like frames
        self.epoch = 0
        self.paths = [r.path for r in self.rows]
        self.labels = [label_to_index(normalize_label(r.label) or "") for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)  # (index, epoch): EpochTaggedSampler
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        view = int(rng.integers(len(self.feat_dirs))) if len(self.feat_dirs) > 1 else 0
        feats = np.load(_feature_path(self.feat_dirs[view], self.rows[i].clip), allow_pickle=False)
        feats, label = order_fake(fit_length(feats, self.seq_len), self.labels[i], rng, self.order_fakes)
        return torch.from_numpy(feats.astype(np.float32)), label, i


class HeadOnly(nn.Module):
    """``forward(features [B, T, F]) -> logits``: the LSTM + classifier of a model, for cached features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.head(feats)
