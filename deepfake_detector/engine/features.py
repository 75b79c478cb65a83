"""Feature cache for a frozen backbone (``train --freeze-backbone``).

With the backbone frozen, its per-frame features never change, so they are computed once with the
test transform and stored next to the crop cache; training then runs only the LSTM + classifier on
them (an epoch over 10k clips takes seconds). Layout::

    CACHE/features/<key>/info.json            what made the features (backbone, weights, version)
    CACHE/features/<key>/<clip-name>.npy      float16 [T, F], one row per cached frame

``<key>`` hashes the backbone name and the identity of its weights (ImageNet enum, sha256 of a
weights file, or the seed of a random init), so features from different weights never mix. The
trade-off: no augmentation in this mode (features are of the un-augmented frames).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
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
from ..data.dataset import ClipDataset, fit_length
from ..data.records import label_to_index, normalize_label
from ..utils import atomic_write_bytes, atomic_write_json, sha256_file
from .distributed import DistInfo, ShardSampler, barrier
from .loop import autocast_context

log = logging.getLogger(__name__)

__all__ = ["feature_key", "extract_features", "FeatureDataset", "HeadOnly"]


def feature_key(model_cfg: ModelConfig, seed: int) -> tuple[str, dict]:
    """Short key naming the backbone + weights that produce the features, and its description."""
    if model_cfg.weights_file:
        weights = "file:" + sha256_file(model_cfg.weights_file)
    elif model_cfg.pretrained and model_cfg.backbone != "tiny":
        from ..models import get_backbone_spec

        spec = get_backbone_spec(model_cfg.backbone)
        weights = f"torchvision:{spec.weights()}" if spec.weights else f"random:seed{seed}"
    else:
        weights = f"random:seed{seed}"
    desc = {"backbone": model_cfg.backbone, "weights": weights, "transform": "eval_transform", "version": 1}
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
) -> Path:
    """Compute (once) the per-frame features of ``rows``' clips; returns the feature folder.

    Existing feature files are reused, so a rerun or a resumed run costs nothing. Under DDP each
    rank extracts its share, then all ranks wait for each other.
    """
    info = info or DistInfo()
    cache = Cache.of(cache)
    key, desc = feature_key(model_cfg, seed)
    feat_dir = cache.features_dir(key)
    todo = [r for r in rows if not _feature_path(feat_dir, r.clip).is_file()]
    if info.is_main:
        atomic_write_json(feat_dir / "info.json", {**desc, "package_version": __version__})
        log.info("feature cache %s: %d of %d clips to extract", feat_dir, len(todo), len(rows))
    if todo:
        _extract(model, cache, todo, feat_dir, seed, device, amp_dtype, batch_size, workers, info)
    barrier(info)
    return feat_dir


def _extract(model: nn.Module, cache: Cache, todo: list[ManifestRow], feat_dir: Path, seed: int,
             device: torch.device, amp_dtype: Optional[torch.dtype], batch_size: int, workers: int,
             info: DistInfo) -> None:
    """Write the features of ``todo``'s clips (this rank's share), about ``batch_size * 20`` frames a step."""
    # whole clips at their own length: seq_len is applied when the features are read
    ds = _WholeClips(cache, todo)
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
    def __init__(self, cache: Cache, rows: Sequence[ManifestRow]) -> None:
        self.ds = ClipDataset(cache, rows, seq_len=1, train=False)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        from ..data.dataset import eval_transform

        clip = self.ds.load(i)
        return i, eval_transform(clip, clip.shape[0])


class FeatureDataset(Dataset):
    """Cached per-frame features: ``(features float [seq_len, F], label, index)`` like ClipDataset's items."""

    def __init__(self, feat_dir: str | os.PathLike, rows: Sequence[ManifestRow], seq_len: int) -> None:
        self.feat_dir = Path(feat_dir)
        self.rows = list(rows)
        self.seq_len = int(seq_len)
        self.paths = [r.path for r in self.rows]
        self.labels = [label_to_index(normalize_label(r.label) or "") for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:  # no augmentation in feature mode
        pass

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        i = key[0] if isinstance(key, tuple) else key  # (index, epoch) from EpochTaggedSampler
        feats = np.load(_feature_path(self.feat_dir, self.rows[i].clip), allow_pickle=False)
        return torch.from_numpy(fit_length(feats, self.seq_len).astype(np.float32)), self.labels[i], i


class HeadOnly(nn.Module):
    """``forward(features [B, T, F]) -> logits``: the LSTM + classifier of a model, for cached features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model.head(feats)
