"""The on-disk face-clip cache: the :class:`Cache` object and the manifest format.

Layout of a cache folder::

    CACHE/
      preprocess.json          resolved PreprocessConfig + dataset root/format (what made the clips)
                               and ``manifest_schema``, the version of the manifest's layout
      manifest.csv             one row per input video and face track (``manifest-K-of-N.csv`` per shard)
      clips/ab/abcdef0123456789.npy   uint8 array [T, S, S, 3], RGB, one file per video and track
      clips/ab/abcdef0123456789.json  with ``max_faces > 1`` only: that track's mean box and landmarks
      features/<key>/          per-frame features of a frozen backbone (``engine.features``)

Clips are plain ``.npy`` files (no pickle, memory-mappable, readable from any language) named by a
hash of the video's path relative to the dataset root (and the track number for tracks after the
first: track 0 keeps the path-only name, so a single-face cache is the same with or without tracks),
so reruns and shards agree on names. Every
file is written through a temporary file and renamed, so a killed run never leaves a half-written
clip or manifest that a later reader could take as valid.

Everything downstream of preprocessing reads a cache through :class:`Cache` (``Cache.open(path)``):
its rows, its settings (``preprocess.json`` is parsed here and nowhere else), its clips and its
features folder.

The manifest stays a plain CSV with one header line (``csv.DictReader`` and pandas read it as is);
its version lives in ``preprocess.json`` (``manifest_schema``; caches without it are schema 1), and
:func:`read_manifest_file` is its one reader. Extending the manifest is one change here: add the field
to :class:`ManifestRow`, bump :data:`MANIFEST_SCHEMA` and add an upgrader to
:data:`_MANIFEST_UPGRADERS` that fills the field in for older rows. The contract is "extend, don't
rename", so an upgrader only fills in what is missing (``setdefault``) and is harmless on a newer row.
That is what lets a cache hold manifests of two layouts (a rerun rewrites one shard's manifest, not
the others): the recorded version is the OLDEST layout any of its manifests may have
(:func:`manifest_schema_to_record`), and every row is read through the upgraders from there.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..config import PreprocessConfig, preprocess_config_from_record
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
from ..errors import UserError
from ..utils import (
    atomic_open,
    atomic_write_bytes,
    check_schema,
    is_within,
    path_from_text,
    path_to_text,
    printable_text,
    upgrade_schema,
)

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
CONFIG_NAME = "preprocess.json"
CLIPS_DIR = "clips"
FEATURES_DIR = "features"

#: version of the manifest's layout (see the module docstring); recorded in preprocess.json.
#: 2: ``method`` (a FAKE's manipulation method, "" when unknown and for REAL videos)
#: 3: ``track`` and ``tracks`` (one row per face track; ``preprocess --max-faces``). The two columns are
#:    written only when some video has more than one track, so single-face manifests keep schema 2's
#:    columns; older rows read as ``track=0, tracks=1``.
MANIFEST_SCHEMA = 3
MANIFEST_SCHEMA_KEY = "manifest_schema"


@dataclass
class ManifestRow:
    """One input video's outcome. ``path`` (relative to the dataset root) is the key."""

    path: str
    label: str = ""
    split: str = ""
    group: str = ""
    method: str = ""  # a FAKE's manipulation method as the dataset names it ("" for REAL / unknown)
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
    track: int = 0  # face track of this row: 0 = the main face (most detections x size), then 1, 2, ...
    tracks: int = 1  # face tracks this video has in the cache (rows with the same path)

    @property
    def usable(self) -> bool:
        return self.status in USABLE_STATUSES and bool(self.clip)

    @property
    def key(self) -> str:
        """The row's identity in a manifest: its path, and its track after the first."""
        return row_key(self.path, self.track)


MANIFEST_FIELDS = [f.name for f in fields(ManifestRow)]
#: the columns a manifest without multi-track videos is written with (schema 2's, unchanged)
SINGLE_TRACK_FIELDS = [f for f in MANIFEST_FIELDS if f not in ("track", "tracks")]
_INT_FIELDS = {"frames", "source_frames", "width", "height", "track", "tracks"}
#: a single-track manifest of schema 3 has no track columns at all (see write_manifest_file)
_INT_DEFAULTS = {"tracks": 1}
_FLOAT_FIELDS = {"face_ratio", "fps", "duration", "seconds"}


def file_signature(path: str | os.PathLike) -> str:
    """``size:mtime_ns`` of a file ("" when it cannot be read): cheap change detection for resume."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def row_key(rel_path: str, track: int = 0) -> str:
    """A manifest row's identity: the path for track 0 (as before tracks existed), path + track after."""
    return rel_path if not track else f"{rel_path}\0track{int(track)}"


def clip_key(rel_path: str, track: int = 0) -> str:
    """Stable file name for a video's clip: a hash of its dataset-relative path (and track after the 1st)."""
    return hashlib.sha1(row_key(rel_path, track).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def clip_relpath(rel_path: str, track: int = 0) -> str:
    key = clip_key(rel_path, track)
    return f"{CLIPS_DIR}/{key[:2]}/{key}.npy"


def save_clip(cache_dir: str | os.PathLike, rel_path: str, clip: np.ndarray, track: int = 0) -> str:
    """Write a uint8 [T,S,S,3] clip atomically; return its path relative to the cache folder."""
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 [T,H,W,3], got {clip.dtype} {clip.shape}")
    rel = clip_relpath(rel_path, track)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(clip), allow_pickle=False)
    atomic_write_bytes(Path(cache_dir) / rel, buf.getvalue())
    return rel


def save_track_info(cache_dir: str | os.PathLike, clip_rel: str, info: dict) -> str:
    """Write a track's sidecar (``{"track", "box", "landmarks", "face_ratio"}``) beside its clip, atomically.

    Why a sidecar and not manifest columns: a box and five landmarks are nested numbers that a CSV
    cell would hide in JSON text, and single-face caches (no sidecars) keep today's manifest."""
    rel = str(Path(clip_rel).with_suffix(".json"))
    atomic_write_bytes(Path(cache_dir) / rel, json.dumps(info, sort_keys=True).encode("utf-8"))
    return rel


def load_track_info(cache_dir: str | os.PathLike, clip_rel: str) -> dict:
    """A clip's track sidecar ({} when it has none: single-face caches, older caches)."""
    path = Path(cache_dir) / Path(clip_rel).with_suffix(".json")
    if Path(clip_rel).is_absolute() or not is_within(path, cache_dir) or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def _manifest_v1_to_v2(raw: dict) -> dict:
    """Schema 1 had no ``method``: unknown (a rerun of ``preprocess`` fills it in without redoing clips)."""
    if raw.get("method") is None:
        raw["method"] = ""
    return raw


#: schema N -> the function that turns one raw schema-N row (column -> text) into a schema-(N+1) row.
#: Upgraders fill in what older rows lack (``setdefault``), so they are harmless on newer rows.
def _manifest_v2_to_v3(raw: dict) -> dict:
    """Schema 2 kept one face per video: every row is the main face's track, the only one."""
    for name, value in (("track", "0"), ("tracks", "1")):
        if raw.get(name) in (None, ""):
            raw[name] = value
    return raw


_MANIFEST_UPGRADERS: dict[int, Callable[[dict], dict]] = {1: _manifest_v1_to_v2, 2: _manifest_v2_to_v3}


def _check_manifest_schema(schema: Any, where: Any) -> int:
    return check_schema(schema, current=MANIFEST_SCHEMA, what="manifest", where=where)


def upgrade_manifest_row(raw: dict, schema: int, where: Any = "manifest") -> dict:
    """One raw manifest row of ``schema`` brought to :data:`MANIFEST_SCHEMA`."""
    return upgrade_schema(raw, schema, current=MANIFEST_SCHEMA, upgraders=_MANIFEST_UPGRADERS,
                          what="manifest", where=where)


def _parse_row(raw: dict) -> ManifestRow:
    kwargs = {}
    raw["path"] = path_from_text(raw.get("path") or "")
    for name in MANIFEST_FIELDS:
        value = raw.get(name, "")
        value = "" if value is None else value
        if name in _INT_FIELDS:  # an empty cell is the field's default (tracks: 1)
            value = int(float(value)) if value not in ("", None) else _INT_DEFAULTS.get(name, 0)
        elif name in _FLOAT_FIELDS:
            value = float(value) if value not in ("", None) else 0.0
        kwargs[name] = value
    return ManifestRow(**kwargs)


def read_manifest_file(path: str | os.PathLike, schema: int = 1) -> list[ManifestRow]:
    """THE manifest reader: the rows of one manifest file of ``schema``, upgraded to the current one.

    ``schema`` is the cache's recorded ``manifest_schema`` (:meth:`Cache.manifest_schema`); 1, the
    default, is right for every manifest written before versions were recorded.
    """
    schema = _check_manifest_schema(schema, path)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames or "status" not in reader.fieldnames:
            raise ValueError(f"{path}: not a manifest (needs at least 'path' and 'status' columns)")
        return [_parse_row(upgrade_manifest_row(r, schema)) for r in reader]


def write_manifest_file(path: str | os.PathLike, rows: Iterable[ManifestRow]) -> None:
    """Write rows atomically; the ``track``/``tracks`` columns only when some video has several tracks."""
    rows = list(rows)
    names = MANIFEST_FIELDS if any(r.track or r.tracks > 1 for r in rows) else SINGLE_TRACK_FIELDS
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:  # valid UTF-8, whatever the names
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            cells = {k: printable_text(v) if isinstance(v, str) else v for k, v in asdict(row).items()}
            writer.writerow({**cells, "path": path_to_text(row.path)})


def load_manifest(cache_dir: str | os.PathLike) -> list[ManifestRow]:
    """All rows of a cache, merging shard manifests; for a (path, track) seen twice a usable row wins.

    Raises ``FileNotFoundError`` / ``ValueError`` / ``OSError``; :meth:`Cache.rows` turns them into
    one ``UserError`` line.
    """
    cache_dir = Path(cache_dir)
    files = sorted(cache_dir.glob("manifest*.csv"))
    if not files:
        raise FileNotFoundError(f"no manifest.csv in {cache_dir} (run 'deepfake-detector preprocess' first)")
    schema = _recorded_manifest_schema(cache_dir)
    merged: dict[str, ManifestRow] = {}
    for f in files:
        for row in read_manifest_file(f, schema):
            old = merged.get(row.key)
            if old is None or (row.usable and not old.usable) or (row.usable == old.usable):
                merged[row.key] = row
    return list(merged.values())


class ManifestWriter:
    """Keeps the rows of one (shard) manifest and rewrites the file atomically on ``flush``.

    Rows from an earlier run are loaded so a rerun can skip videos whose clip exists. ``rows`` is keyed
    by :attr:`ManifestRow.key`: a video's main row under its path, its other tracks' beside it.
    """

    def __init__(self, cache_dir: str | os.PathLike, shard: Optional[tuple[int, int]] = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / manifest_name(shard)
        self.rows: dict[str, ManifestRow] = {}
        if self.path.exists():
            try:
                for row in read_manifest_file(self.path, _recorded_manifest_schema(self.cache_dir)):
                    self.rows[row.key] = row
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
        clips = [row.clip] + [r.clip for r in self.tracks_of(rel_path)] if row.tracks > 1 else [row.clip]
        return all(c and (self.cache_dir / c).is_file() for c in clips)

    def add(self, row: ManifestRow) -> None:
        """Record a row; a video's main row (track 0) first drops that video's rows of an earlier run."""
        if not row.track:
            for key in [k for k, r in self.rows.items() if r.path == row.path and r.track]:
                del self.rows[key]
        self.rows[row.key] = row

    def tracks_of(self, rel_path: str) -> list[ManifestRow]:
        """The rows of one video's other tracks (track > 0), in track order."""
        rows = [r for r in self.rows.values() if r.path == rel_path and r.track]
        return sorted(rows, key=lambda r: r.track)

    def flush(self) -> None:
        write_manifest_file(self.path, sorted(self.rows.values(), key=lambda r: (r.path, r.track)))


# --------------------------------------------------------------------------------------------------
# preprocess.json: parsed here and nowhere else
# --------------------------------------------------------------------------------------------------


class CacheConfigError(UserError):
    """``preprocess.json`` exists but cannot be read or parsed. ``path`` and ``detail`` let a caller
    phrase its own advice (``preprocess`` suggests ``--force``)."""

    def __init__(self, path: Path, detail: Any) -> None:
        super().__init__(f"{path} is unreadable: {detail}")
        self.path = path
        self.detail = detail


def read_cache_meta(cache_dir: str | os.PathLike) -> Optional[dict]:
    """THE reader of a cache's ``preprocess.json``: the whole record, None when the folder has none.

    A file that is not a JSON object reads as ``{}`` (no settings recorded). Raises
    :class:`CacheConfigError` when the file cannot be read or is not JSON.
    """
    path = Path(cache_dir) / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CacheConfigError(path, exc) from exc
    return data if isinstance(data, dict) else {}


def preprocess_settings(meta: Optional[dict]) -> dict:
    """The preprocessing settings inside a ``preprocess.json`` record.

    ``preprocess`` is the layout ``preprocess`` writes; ``config`` and a flat dict of settings are
    older / hand-made layouts that are still read.
    """
    if not meta:
        return {}
    for key in ("preprocess", "config"):
        if isinstance(meta.get(key), dict):
            return meta[key]
    return meta


def manifest_schema_to_record(cache_dir: str | os.PathLike) -> int:
    """The ``manifest_schema`` for a (re)written ``preprocess.json``: the current layout for a new cache,
    else the oldest one its manifests may still have (the writer rewrites only its own shard's)."""
    if not any(Path(cache_dir).glob("manifest*.csv")):
        return MANIFEST_SCHEMA
    recorded = _recorded_manifest_schema(Path(cache_dir))
    valid = isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1
    return min(recorded, MANIFEST_SCHEMA) if valid else 1


def _recorded_manifest_schema(cache_dir: Path) -> int:
    """The ``manifest_schema`` a cache records; 1 when it records none or its record is unreadable
    (upgraders only fill in missing fields, so assuming the oldest layout is always safe)."""
    try:
        meta = read_cache_meta(cache_dir) or {}
    except CacheConfigError:
        return 1
    return meta.get(MANIFEST_SCHEMA_KEY, 1)


# --------------------------------------------------------------------------------------------------
# The Cache object
# --------------------------------------------------------------------------------------------------


class Cache:
    """One face-clip cache folder: its manifest rows, preprocessing settings, clips and features folder.

    Why an object: the folder used to travel as a string through the engine, the dataset, the feature
    cache, ``evaluate``, the demo and the model card, each re-deriving file names and re-parsing
    ``preprocess.json`` in its own way. ``Cache(path)`` is cheap and reads nothing (datasets pickle it
    to their loader workers); ``Cache.open(path)`` also checks that the folder holds a readable
    manifest. Rows and settings are read once, on first use.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._given = os.fspath(root)  # as the user spelled it: messages quote it unchanged
        self._rows: Optional[list[ManifestRow]] = None
        self._meta: Optional[dict] = None
        self._meta_read = False

    @classmethod
    def open(cls, path: str | os.PathLike | Cache) -> Cache:
        """The cache at ``path``, its manifest read; a missing or unreadable one is a ``UserError``."""
        cache = cls.of(path)
        cache.rows()
        return cache

    @classmethod
    def of(cls, obj: str | os.PathLike | Cache) -> Cache:
        """``obj`` itself when it is a Cache, else a Cache for that folder (nothing read yet)."""
        return obj if isinstance(obj, Cache) else cls(obj)

    def __fspath__(self) -> str:
        return self._given

    def __str__(self) -> str:
        return self._given

    def __repr__(self) -> str:
        return f"Cache({self._given!r})"

    def __reduce__(self) -> tuple:  # loader workers get the folder, not the rows read so far
        return (Cache, (self._given,))

    # --- manifest ---------------------------------------------------------------------------------

    def rows(self) -> list[ManifestRow]:
        """Every manifest row (shards merged), read once; no or an unreadable manifest is a ``UserError``."""
        if self._rows is None:
            try:
                self._rows = load_manifest(self.root)
            except (FileNotFoundError, ValueError, OSError) as exc:
                raise UserError(str(exc)) from exc
        return self._rows

    @property
    def manifest(self) -> list[ManifestRow]:
        return self.rows()

    def has_manifest(self) -> bool:
        """True when the folder holds a ``manifest.csv`` (a cache, not just a folder)."""
        return (self.root / MANIFEST_NAME).is_file()

    @property
    def manifest_schema(self) -> int:
        return _recorded_manifest_schema(self.root)

    # --- preprocess.json --------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def meta(self) -> dict:
        """The whole ``preprocess.json`` record ({} when there is none); unreadable: ``CacheConfigError``."""
        if not self._meta_read:
            self._meta = read_cache_meta(self.root)
            self._meta_read = True
        return self._meta or {}

    def has_meta(self) -> bool:
        return self.config_path.is_file()

    @property
    def preprocess(self) -> dict:
        """The preprocessing settings the clips were made with ({} when none are recorded)."""
        return preprocess_settings(self.meta)

    def preprocess_config(self) -> Optional[PreprocessConfig]:
        """The settings as a ``PreprocessConfig``; None when the folder records none."""
        if not self.has_meta():
            return None
        return preprocess_config_from_record(self.preprocess)

    @property
    def dataset_root(self) -> str:
        """The dataset folder the manifest's paths are relative to ("" when unknown)."""
        root = self.meta.get("dataset_root")
        return root if isinstance(root, str) else ""

    def dataset_info(self) -> dict:
        """What ``preprocess`` recorded about the dataset: ``format``, ``grouping`` (where the groups that
        keep a fake with its original came from: dataset | names | group-by | per-video), its
        ``grouping_note`` and ``compression`` ("" when not recorded). An older cache without a recorded
        ``grouping`` whose every group is its own path reads as ``per-video``."""
        meta = self.meta
        info = {k: meta.get(k) if isinstance(meta.get(k), str) else ""
                for k in ("format", "grouping", "grouping_note", "compression")}
        if not info["grouping"] and self.has_manifest():
            rows = self.rows()
            if rows and all((r.group or r.path) == r.path for r in rows):
                info["grouping"] = "per-video"
        return info

    # --- clips and features -----------------------------------------------------------------------

    def load_clip(self, clip_rel: str, mmap: bool = True) -> np.ndarray:
        """A clip of this cache by its manifest ``clip`` path (see :func:`load_clip`)."""
        return load_clip(self.root, clip_rel, mmap=mmap)

    def features_dir(self, key: str) -> Path:
        """Where the per-frame features named ``key`` (``engine.features.feature_key``) live."""
        return self.root / FEATURES_DIR / key
