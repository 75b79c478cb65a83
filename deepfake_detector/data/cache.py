"""The on-disk face-clip cache and its manifest.

Layout of a cache folder::

    CACHE/
      preprocess.json          resolved PreprocessConfig + dataset root/format (what made the clips)
      manifest.csv             one row per input video (``manifest-K-of-N.csv`` per shard)
      clips/ab/abcdef0123456789.npy   uint8 array [T, S, S, 3], RGB, one file per video

Clips are plain ``.npy`` files (no pickle, memory-mappable, readable from any language) named by a
hash of the video's path relative to the dataset root, so reruns and shards agree on names. Every
file is written through a temporary file and renamed, so a killed run never leaves a half-written
clip or manifest that a later reader could take as valid.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np

from ..constants import (  # noqa: F401  (statuses are re-exported: the manifest speaks them)
    ERROR,
    MISSING,
    NO_FACE,
    OK,
    REFUSED,
    STATUSES,
    TOO_SHORT,
    UNREADABLE,
    USABLE_STATUSES,
)
from ..utils import atomic_open, atomic_write_bytes, is_within

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
CONFIG_NAME = "preprocess.json"
CLIPS_DIR = "clips"



@dataclass
class ManifestRow:
    """One input video's outcome. ``path`` (relative to the dataset root) is the key."""

    path: str
    label: str = ""
    split: str = ""
    group: str = ""
    status: str = ""
    frames: int = 0  # frames in the clip
    face_ratio: float = 0.0  # fraction of sampled frames where a face was detected
    error: str = ""
    clip: str = ""  # clip file, relative to the cache folder
    source_frames: int = 0  # frames the video really has (or the best estimate)
    fps: float = 0.0
    duration: float = 0.0
    width: int = 0
    height: int = 0
    seconds: float = 0.0  # processing time
    source_stat: str = ""  # "size:mtime_ns" of the video when processed: a replaced file is redone

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES and bool(self.clip)


MANIFEST_FIELDS = [f.name for f in fields(ManifestRow)]
_INT_FIELDS = {"frames", "source_frames", "width", "height"}
_FLOAT_FIELDS = {"face_ratio", "fps", "duration", "seconds"}


def file_signature(path: str | os.PathLike) -> str:
    """``size:mtime_ns`` of a file ("" when it cannot be read): cheap change detection for resume."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def clip_key(rel_path: str) -> str:
    """Stable file name for a video's clip: a hash of its dataset-relative path."""
    return hashlib.sha1(rel_path.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def clip_relpath(rel_path: str) -> str:
    key = clip_key(rel_path)
    return f"{CLIPS_DIR}/{key[:2]}/{key}.npy"


def save_clip(cache_dir: str | os.PathLike, rel_path: str, clip: np.ndarray) -> str:
    """Write a uint8 [T,S,S,3] clip atomically; return its path relative to the cache folder."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 [T,H,W,3], got {clip.dtype} {clip.shape}")
    rel = clip_relpath(rel_path)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(clip), allow_pickle=False)
    atomic_write_bytes(Path(cache_dir) / rel, buf.getvalue())
    return rel


def load_clip(cache_dir: str | os.PathLike, clip_rel: str, mmap: bool = True) -> np.ndarray:
    """Read a clip written by ``save_clip`` (never unpickles, never leaves the cache folder)."""
    path = Path(cache_dir) / clip_rel
    if Path(clip_rel).is_absolute() or not is_within(path, cache_dir):
        raise ValueError(f"clip path {clip_rel!r} points outside the cache folder {cache_dir}")
    arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{path}: not a clip (dtype {arr.dtype}, shape {arr.shape})")
    return arr


def manifest_name(shard: Optional[tuple[int, int]] = None) -> str:
    """``manifest.csv``, or ``manifest-K-of-N.csv`` for shard K (1-based) of N."""
    if shard is None or shard[1] == 1:
        return MANIFEST_NAME
    return f"manifest-{shard[0]}-of-{shard[1]}.csv"


def _parse_row(raw: dict) -> ManifestRow:
    kwargs = {}
    for name in MANIFEST_FIELDS:
        value = raw.get(name, "")
        value = "" if value is None else value
        if name in _INT_FIELDS:
            value = int(float(value)) if value not in ("", None) else 0
        elif name in _FLOAT_FIELDS:
            value = float(value) if value not in ("", None) else 0.0
        kwargs[name] = value
    return ManifestRow(**kwargs)


def read_manifest_file(path: str | os.PathLike) -> list[ManifestRow]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames or "status" not in reader.fieldnames:
            raise ValueError(f"{path}: not a manifest (needs at least 'path' and 'status' columns)")
        return [_parse_row(r) for r in reader]


def write_manifest_file(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> None:
    with atomic_open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(asdict(row))


def load_manifest(cache_dir: str | os.PathLike) -> list[ManifestRow]:
    """All rows of a cache, merging shard manifests; for a path seen twice a usable row wins."""
    cache_dir = Path(cache_dir)
    files = sorted(cache_dir.glob("manifest*.csv"))
    if not files:
        raise FileNotFoundError(f"no manifest.csv in {cache_dir} (run 'deepfake-detector preprocess' first)")
    merged: dict[str, ManifestRow] = {}
    for f in files:
        for row in read_manifest_file(f):
            old = merged.get(row.path)
            if old is None or (row.usable and not old.usable) or (row.usable == old.usable):
                merged[row.path] = row
    return list(merged.values())


class ManifestWriter:
    """Keeps the rows of one (shard) manifest and rewrites the file atomically on ``flush``.

    Rows from an earlier run are loaded so a rerun can skip videos whose clip exists.
    """

    def __init__(self, cache_dir: str | os.PathLike, shard: Optional[tuple[int, int]] = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / manifest_name(shard)
        self.rows: dict[str, ManifestRow] = {}
        if self.path.exists():
            try:
                for row in read_manifest_file(self.path):
                    self.rows[row.path] = row
            except (ValueError, OSError, csv.Error) as exc:
                log.warning("ignoring unreadable manifest %s (%s); it will be rebuilt", self.path, exc)

    def is_done(self, rel_path: str, source_path: Optional[str | os.PathLike] = None) -> bool:
        """True when this video already has a finished, intact result (failures are retried).

        With ``source_path``, a video replaced at the same path since (see ``file_signature``) is not
        done; the file is only stat'ed for rows that would otherwise count as finished.
        """
        row = self.rows.get(rel_path)
        if row is None or row.status not in (OK, NO_FACE):
            return False
        if source_path is not None and row.source_stat:
            now = file_signature(source_path)
            if now and now != row.source_stat:
                return False
        if not row.clip:
            return row.status == NO_FACE
        return (self.cache_dir / row.clip).is_file()

    def add(self, row: ManifestRow) -> None:
        self.rows[row.path] = row

    def flush(self) -> None:
        write_manifest_file(self.path, sorted(self.rows.values(), key=lambda r: r.path))
