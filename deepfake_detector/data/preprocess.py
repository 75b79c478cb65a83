"""Video -> face clip, for one video (``extract_clip``, shared with predict) and for a dataset
(``run_preprocess``: process pool, resumable, shardable, crash- and hang-tolerant).

``extract_clip`` never raises for a bad video: every outcome is a ``ClipResult`` with a status from
``cache.STATUSES`` and a one-line error message.

``run_preprocess`` writes into a cache folder (layout in ``cache``):

* ``preprocess.json``: the resolved ``PreprocessConfig`` + dataset root/format. A rerun with settings
  that change the clips (frames, size, margin, detector, ...) is refused unless ``force=True``
  (which also redoes every video) -- mixing clips made two ways would silently corrupt training.
* one ``.npy`` clip per video (written by the worker that made it, atomically), and
  ``manifest.csv`` (``manifest-K-of-N.csv`` per shard), rewritten atomically every few seconds, at
  the end and on Ctrl-C. Finished videos are skipped on rerun; failed ones are retried.

Time and crash bounds: decoding stops at ``cfg.timeout_s`` inside the worker (status ``error``,
"timed out"). A worker that still does not answer (stuck in native code) or dies (segfault, OOM
kill) breaks the pool: the pool is killed and rebuilt, the videos that were in flight are retried
one at a time, and a video that breaks the pool on its own is recorded as ``error``. The run goes on.

A cache folder that cannot take more data (disk full or over quota while writing a clip or the
manifest; a read-only or forbidden folder) is not a per-video problem: every remaining video would
fail the same way. The run stops at the first such error, saves the manifest (atomically) with what
finished, and raises ``CacheWriteError``; a rerun of the same command resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import PREPROCESS_BEFORE, PreprocessConfig, SegmentConfig, from_dict, to_dict
from ..errors import DISK_FULL_ERRNOS, NO_WRITE_ERRNOS, WRITE_STOP_ERRNOS, UserError
from ..utils import atomic_write_json
from . import cache
from .pool import imap_resilient
from .records import VideoRecord

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
# settings whose change makes existing clips incompatible
CLIP_KEYS = ("frames", "size", "margin", "detector", "upsample", "no_face", "detect_max_side", "smooth",
             "align", "max_faces", "sampling", "snippet_len")
_FLUSH_EVERY_S = 5.0
HARD_TIMEOUT_GRACE_S = 60.0  # a video still running after 2 * timeout_s + this is killed with its worker
# write errors that no later video can escape: the run stops at the first one


class CacheWriteError(UserError):
    """The cache folder cannot take more data (disk full, quota, read-only, permissions), so the run
    stopped early. What finished is in the manifest and a rerun resumes. ``summary`` is the
    ``PreprocessSummary`` of the run so far (None when nothing had started)."""

    exit_code = 1

    def __init__(self, message: str, summary: Optional[PreprocessSummary] = None) -> None:
        super().__init__(message)
        self.summary = summary


def cache_write_error(exc: OSError, what: str) -> CacheWriteError:
    """One line for a failed write into the cache: what was being written, why, and what to do."""
    why = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        return CacheWriteError(f"disk full while writing {what} ({why}); free space and rerun the same "
                               "command to resume")
    if exc.errno in NO_WRITE_ERRNOS:
        return CacheWriteError(f"cannot write {what} ({why}); make the folder writable or choose another "
                               "--out, then rerun the same command to resume")
    return CacheWriteError(f"cannot write {what} ({why}); fix that and rerun the same command to resume")


@dataclass
class ClipResult:
    """The outcome of turning one video into a face clip (see the module docstring)."""

    clip: Optional[np.ndarray]  # uint8 [T,S,S,3] RGB; T == cfg.frames unless the video is shorter
    status: str
    error: str = ""
    frames: int = 0  # T
    face_ratio: float = 0.0  # sampled frames with a real detection / sampled frames
    source_frames: int = 0  # frames the video really has (best estimate)
    fps: float = 0.0
    duration: float = 0.0
    width: int = 0  # displayed (upright) size of the source
    height: int = 0
    seconds: float = 0.0  # time spent on this video
    indices: list[int] = field(default_factory=list)  # frame ordinals sampled
    boxes: Optional[np.ndarray] = None  # [T,4] x0,y0,x1,y1 crop squares in upright source pixels
    landmarks: Optional[np.ndarray] = None  # [T,5,2] the face's landmarks in source pixels (mtcnn), NaN gaps
    # with max_faces > 1: the other faces' tracks (1, 2, ...), each a ClipResult with clip, boxes, face_ratio
    others: list[ClipResult] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.clip is not None

    def track_info(self, track: int) -> dict:
        """What a track's sidecar holds: its mean crop box (and landmarks) in source pixels."""
        info: dict = {"track": track, "face_ratio": round(float(self.face_ratio), 4), "box": None,
                      "landmarks": None}
        if self.boxes is not None and len(self.boxes):
            info["box"] = [round(float(v), 1) for v in np.asarray(self.boxes, np.float64).mean(axis=0)]
        if self.landmarks is not None and not np.isnan(self.landmarks).all():
            marks = np.nanmean(np.asarray(self.landmarks, np.float64), axis=0)
            info["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in marks]
        return info


_DETECTOR_CACHE: dict[tuple, object] = {}


def _detector_for(cfg: PreprocessConfig):
    """One detector per process and setting (building dlib's detector costs ~0.5 s)."""
    from .faces import detector_from_config

    key = (cfg.detector, cfg.detect_max_side, cfg.upsample, cfg.mtcnn_weights, cfg.detector_device)
    det = _DETECTOR_CACHE.get(key)
    if det is None:
        det = detector_from_config(cfg)
        _DETECTOR_CACHE[key] = det
    return det


def check_video_file(path: str) -> Optional[tuple[str, str]]:
    """``(status, error)`` when ``path`` cannot be a readable video file, else None.

    Cheap checks before any decoder opens the file (shared by ``extract_clip`` and ``predict``).
    """
    if not os.path.lexists(path):
        return cache.MISSING, "file does not exist"
    if not os.path.exists(path):
        return cache.UNREADABLE, "broken symbolic link or symbolic link loop"
    if os.path.isdir(path):
        return cache.UNREADABLE, "is a directory, not a video file"
    try:
        st = os.stat(path)
    except OSError as exc:
        return cache.UNREADABLE, f"cannot stat: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):  # FIFOs and devices would block or never end
        return cache.UNREADABLE, "not a regular file (pipe, device or socket)"
    if st.st_size == 0:
        return cache.UNREADABLE, "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return cache.UNREADABLE, "permission denied"
    return None


def extract_clip(
    path: str | os.PathLike, cfg: PreprocessConfig, *, detector=None, threads: int = 0
) -> ClipResult:
    """Sample ``cfg.frames`` frames across the whole video, find and track the face, cut square crops.

    Never raises for a bad video: the status says what happened (``ok``, ``no_face``, ``unreadable``,
    ``too_short``, ``refused``, ``missing``, ``error``). ``detector`` overrides the one named in
    ``cfg`` (tests, benchmarks); ``threads`` is the decoder thread count (0 = automatic).
    """
    from .video import read_frames

    path = os.fspath(path)
    res = ClipResult(clip=None, status=cache.ERROR)
    with _outcome(res, path):
        pre = check_video_file(path)
        if pre is not None:
            res.status, res.error = pre
        else:
            _crop_into(res, read_frames(path, cfg.frames, **_read_options(cfg, threads)), cfg, detector)
    return res


@dataclass
class SegmentClip:
    """One time window of a video scored by segments: its span in seconds and its clip."""

    start: float
    end: float
    clip: ClipResult


@dataclass
class SegmentedResult(ClipResult):
    """``extract_segments``' outcome: the video's status, frames and face ratio over all windows, and
    one ``SegmentClip`` per window (``clip`` stays None: the windows carry the clips)."""

    segments: list[SegmentClip] = field(default_factory=list)
    segment_seconds: float = 0.0  # the windows' width: wider than asked when the video is long


def extract_segments(
    path: str | os.PathLike, cfg: PreprocessConfig, segments: SegmentConfig, *, detector=None,
    threads: int = 0,
) -> SegmentedResult:
    """``extract_clip`` for each consecutive time window (``segments.seconds`` wide, at most
    ``segments.max_segments``; ``video.read_windows``): every window is sampled and cropped like a whole
    clip with ``cfg``, one window's frames in memory at a time. Never raises for a bad video."""
    from .video import read_windows

    path = os.fspath(path)
    res = SegmentedResult(clip=None, status=cache.ERROR)
    with _outcome(res, path):
        pre = check_video_file(path)
        if pre is not None:
            res.status, res.error = pre
            return res
        windows = read_windows(path, cfg.frames, seconds=segments.seconds, max_windows=segments.max_segments,
                               **_read_options(cfg, threads))
        for sampled in windows:
            seg = _crop_into(ClipResult(clip=None, status=cache.ERROR), sampled, cfg, detector)
            res.segments.append(SegmentClip(*(sampled.window or (0.0, 0.0)), seg))
            res.segment_seconds = float(sampled.window_s)
        _summarise_segments(res)
    if res.status not in (cache.OK, cache.NO_FACE):
        res.segments = []
    return res


def _summarise_segments(res: SegmentedResult) -> None:
    """The video's status, frames, face ratio and source facts from its windows' clips."""
    clips = [s.clip for s in res.segments]
    last = clips[-1]
    res.source_frames, res.fps, res.duration = last.source_frames, last.fps, last.duration
    res.width, res.height = last.width, last.height
    res.indices = [i for c in clips for i in c.indices]
    res.frames = sum(c.frames for c in clips)
    sampled = sum(len(c.indices) for c in clips)
    res.face_ratio = sum(c.face_ratio * len(c.indices) for c in clips) / sampled if sampled else 0.0
    for status in (cache.OK, cache.NO_FACE):
        if any(c.status == status for c in clips):
            res.status = status
            res.error = "" if status == cache.OK else f"no face found in any of {len(clips)} segment(s)"
            return
    res.status, res.error = clips[0].status, clips[0].error


def _read_options(cfg: PreprocessConfig, threads: int) -> dict:
    """``read_frames``' options from a preprocessing config."""
    return dict(max_side=cfg.max_decode_side, max_pixels=cfg.max_pixels, max_duration_s=cfg.max_duration_s,
                threads=threads, deadline_s=cfg.timeout_s or None, sampling=getattr(cfg, "sampling", "even"),
                snippet_len=getattr(cfg, "snippet_len", 1))


def _crop_into(res: ClipResult, sampled: Any, cfg: PreprocessConfig, detector: Any) -> ClipResult:
    """Find and track the face in ``sampled`` frames and fill ``res``: crops, boxes, status."""
    from .faces import FaceCropper

    info = sampled.info
    res.source_frames = int(info.frames)
    res.fps = float(info.fps)
    res.duration = float(info.duration)
    res.width, res.height = (int(v) for v in info.display_size)
    res.indices = list(sampled.indices)
    det = detector if detector is not None else _detector_for(cfg)
    cropper = FaceCropper(det, size=cfg.size, margin=cfg.margin, smooth=cfg.smooth, align=cfg.align,
                          max_faces=getattr(cfg, "max_faces", 1))
    crop = cropper.crop(sampled.frames)
    res.frames = len(sampled.frames)
    _fill_track(res, crop, sampled.scale)
    res.others = [_fill_track(ClipResult(clip=o.crops, status=cache.OK, frames=res.frames), o,
                              sampled.scale) for o in crop.others]
    if crop.found:
        res.status, res.clip = cache.OK, crop.crops
    else:
        res.status = cache.NO_FACE
        res.error = f"no face found in {res.frames} sampled frames"
        if cfg.no_face == "center":
            res.clip = crop.crops
            res.error += " (centre crops used)"
        else:
            res.frames = 0
    return res


@contextlib.contextmanager
def _outcome(res: ClipResult, path: str) -> Iterator[None]:
    """Turn whatever reading a video raises into ``res``' status and one-line error (never raises), and
    time it; a result that is not ``ok``/``no_face`` keeps no clip."""
    from .video import VideoError

    t0 = time.perf_counter()
    try:
        yield
    except VideoError as exc:
        res.status, res.error = exc.status, str(exc)
    except MemoryError:
        res.status, res.error = cache.ERROR, "MemoryError: out of memory while reading the video"
    except Exception as exc:  # a bug or an unexpected library failure: reported per video
        log.debug("extract_clip(%s) failed", path, exc_info=True)
        res.status, res.error = cache.ERROR, f"{type(exc).__name__}: {exc}"
    finally:
        res.seconds = time.perf_counter() - t0
    if res.status not in (cache.OK, cache.NO_FACE):
        res.clip, res.frames = None, 0


def clip_settings(settings: dict) -> dict:
    """The ``CLIP_KEYS`` of a preprocessing record as the clips depend on them: keys an older record lacks
    take the value they had then, and ``snippet_len`` counts only with ``sampling: snippets``. Compare
    two records with this to tell whether their clips were made the same way."""
    out = {**PREPROCESS_BEFORE, **{k: settings[k] for k in CLIP_KEYS if k in settings}}
    if out.get("sampling") != "snippets":
        out.pop("snippet_len", None)
    return out


def _fill_track(res: ClipResult, crop: Any, scale: float) -> ClipResult:
    """Copy one track's face ratio, boxes and landmarks into ``res``, in upright source pixels."""
    res.face_ratio = crop.face_ratio
    res.boxes = crop.boxes / np.float32(scale) if scale else crop.boxes
    res.landmarks = None
    if crop.landmarks is not None:
        res.landmarks = crop.landmarks / np.float32(scale) if scale else crop.landmarks
    return res


# --------------------------------------------------------------------------------------------------
# Dataset runs
# --------------------------------------------------------------------------------------------------


@dataclass
class PreprocessSummary:
    out_dir: str
    manifest: str
    total: int = 0  # records in this shard
    skipped: int = 0  # already done by an earlier run
    todo: int = 0  # to be attempted in this run
    processed: int = 0  # attempted in this run
    counts: dict = field(default_factory=dict)  # status -> videos, this run
    manifest_counts: dict = field(default_factory=dict)  # status -> videos, whole (shard) manifest
    seconds: float = 0.0
    failures: list = field(default_factory=list)  # (path, status, error), first 50 of this run
    interrupted: bool = False
    stopped: str = ""  # why the run stopped before every video was tried (disk full, read-only, ...)

    @property
    def videos_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def usable(self) -> int:
        return int(self.manifest_counts.get(cache.OK, 0) + self.manifest_counts.get(cache.NO_FACE, 0))


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"K/N"`` (1-based) -> (K, N); None/"" -> None. Raises ValueError on nonsense."""
    if not text:
        return None
    try:
        k_s, n_s = str(text).split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard must look like K/N (e.g. 2/8), got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return k, n


def shard_of(rel_path: str, n: int) -> int:
    """The 1-based shard of a video: a hash of its dataset-relative path (stable across machines and
    across datasets that grow)."""
    digest = hashlib.sha1(rel_path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def select_shard(records: list[VideoRecord], shard: Optional[tuple[int, int]]) -> list[VideoRecord]:
    if shard is None or shard[1] == 1:
        return list(records)
    k, n = shard
    return [r for r in records if shard_of(r.rel_path or r.path, n) == k]


def _cache_meta(cfg: PreprocessConfig, dataset_root: Optional[str], fmt: str,
                dataset: Optional[dict] = None) -> dict:
    from .. import __version__

    return {
        "cache_format": CACHE_FORMAT,
        cache.MANIFEST_SCHEMA_KEY: cache.MANIFEST_SCHEMA,
        "preprocess": to_dict(cfg),
        "dataset_root": os.fspath(dataset_root) if dataset_root else "",
        "format": fmt,
        # where the groups that keep a fake with its original came from (train warns on per-video) and
        # the dataset's compression, for the model card
        **{k: str((dataset or {}).get(k) or "") for k in ("grouping", "grouping_note", "compression")},
        "version": __version__,
        "clip_layout": "uint8 [T,S,S,3] RGB .npy under clips/, T <= frames (short videos), see manifest",
    }


def read_cache_config(out_dir: str | os.PathLike) -> Optional[PreprocessConfig]:
    """The PreprocessConfig a cache was made with (None when the folder has none)."""
    return cache.Cache(out_dir).preprocess_config()


def _check_cache(out_dir: Path, cfg: PreprocessConfig, force: bool) -> bool:
    """Refuse to mix clips made with different settings. Returns True when old results must be redone."""
    folder = cache.Cache(out_dir)
    if not folder.has_meta():
        return False
    try:
        old = folder.preprocess
    except cache.CacheConfigError as exc:
        if not force:
            raise UserError(f"{exc.path} is unreadable ({exc.detail}); use --force to rebuild this "
                            "cache") from exc
        return True
    new = clip_settings(to_dict(cfg))
    old = clip_settings(old)  # caches made before tracks hold the main face only, before samplers: even
    diff = [k for k in CLIP_KEYS if k in old and k in new and old[k] != new[k]]
    if not diff:
        return False
    if not force:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise UserError(
            f"{out_dir} holds clips made with other settings ({what}); use another --out folder, "
            "or --force to redo every video with the new settings"
        )
    log.warning("settings changed (%s): every video will be redone", ", ".join(diff))
    return True


# --- worker side -------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(cfg_dict: dict, out_dir: str, threads: int) -> None:
    """Runs once in each worker process (spawn-safe: everything comes in as plain data)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # the OpenCV fallback's FFmpeg: quiet
    # NB: never call av.logging.set_level() here: it installs a Python log callback that FFmpeg's
    # decoder threads call while the main thread holds the GIL, which can deadlock (PyAV's default,
    # no callback, is what we want).
    with contextlib.suppress(Exception):
        import cv2

        cv2.setNumThreads(1)
    _WORKER["cfg"] = from_dict(PreprocessConfig, cfg_dict)
    _WORKER["out_dir"] = out_dir
    _WORKER["threads"] = threads


def _process_one(rec: tuple[str, str, str, str, str, str]) -> cache.ManifestRow:
    """Make one video's clip, write it, and return its manifest row. Never raises."""
    path, rel, label, split, group, method = rec
    cfg: PreprocessConfig = _WORKER["cfg"]
    signature = cache.file_signature(path)
    res = extract_clip(path, cfg, threads=_WORKER.get("threads", 0))
    row = cache.ManifestRow(
        path=rel, label=label, split=split, group=group, method=method, status=res.status, frames=res.frames,
        face_ratio=round(res.face_ratio, 4), error=res.error, source_frames=res.source_frames,
        fps=round(res.fps, 4), duration=round(res.duration, 3), width=res.width, height=res.height,
        seconds=round(res.seconds, 3), source_stat=signature,
    )
    if res.clip is not None:
        try:
            row.clip = cache.save_clip(_WORKER["out_dir"], rel, res.clip)
            if res.others:  # several faces (max_faces > 1): a single-face video is stored as before tracks
                _save_tracks(row, res, _WORKER["out_dir"])
        except OSError as exc:
            clip = cache.clip_relpath(rel)
            row.status, row.frames = cache.ERROR, 0
            row.error = f"cannot write clip {clip}: {exc.strerror or exc}"
            # not a manifest column: tells the main process to stop the run (see errors.WRITE_STOP_ERRNOS)
            row.write_errno = exc.errno  # type: ignore[attr-defined]
    return row


def _save_tracks(row: cache.ManifestRow, res: ClipResult, out_dir: str) -> None:
    """A video with several faces: each track's sidecar, the other tracks' clips, and their rows, which travel
    on the main row as ``row.track_rows`` (not a column: one task still returns one row, so the pool and
    its crash handling stay per video)."""
    cache.save_track_info(out_dir, row.clip, res.track_info(0))
    extra: list[cache.ManifestRow] = []
    for k, other in enumerate(res.others, start=1):
        clip = cache.save_clip(out_dir, row.path, other.clip, track=k)
        cache.save_track_info(out_dir, clip, other.track_info(k))
        extra.append(replace(row, track=k, clip=clip, face_ratio=round(other.face_ratio, 4)))
    row.tracks = 1 + len(extra)
    for r in extra:
        r.tracks = row.tracks
    row.track_rows = extra  # type: ignore[attr-defined]


_TASK = _process_one  # what the pool runs per video (tests swap in a misbehaving stand-in)


def _error_row(rec: tuple, msg: str) -> cache.ManifestRow:
    path, rel, label, split, group, method = rec
    return cache.ManifestRow(path=rel, label=label, split=split, group=group, method=method,
                             status=cache.ERROR, error=msg)


# --- pool driver -------------------------------------------------------------------------------


def _run_pool(todo: list[tuple], workers: int, cfg: PreprocessConfig, out_dir: Path, threads: int,
              on_row) -> None:
    """Feed ``todo`` through a crash- and hang-tolerant process pool (``data.pool``), row by row."""
    hard_timeout = (cfg.timeout_s * 2 + HARD_TIMEOUT_GRACE_S) if cfg.timeout_s else None
    rows = imap_resilient(_TASK, todo, workers, _error_row, initializer=_init_worker,
                          initargs=(to_dict(cfg), str(out_dir), threads), hard_timeout=hard_timeout)
    # closing() stops the pool (and the videos still in flight) as soon as on_row stops the run,
    # instead of whenever the traceback that holds the generator is freed
    with contextlib.closing(rows):
        for _, row in rows:
            on_row(row)


def run_preprocess(
    records: list[VideoRecord],
    out_dir: str | os.PathLike,
    cfg: PreprocessConfig,
    workers: Optional[int] = None,
    shard: Optional[tuple[int, int]] = None,
    progress: bool = True,
    dataset_root: Optional[str | os.PathLike] = None,
    fmt: str = "",
    force: bool = False,
    dataset: Optional[dict] = None,
    engine: Any = None,
) -> PreprocessSummary:
    """Preprocess ``records`` into the cache ``out_dir`` (see the module docstring).

    ``workers``: processes (None = one per CPU up to 8; 0 = in this process, for debugging);
    ``shard``: (K, N) to do only the K-th of N hash slices; ``force``: redo everything even when the
    cache was made with other settings; ``dataset``: what the source said about the dataset
    (``grouping``, ``grouping_note``, ``compression``), recorded in preprocess.json; ``engine``: None or
    ``"local"`` (this machine's process pool), ``"ray"`` or a ``cluster.preprocess.RayEngine`` (the same
    per-video task in Ray actors, for datasets larger than one machine: same clips and manifest).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    cfg = resolve_config(cfg, out_dir)
    if engine is not None and engine != "local":
        from ..cluster.preprocess import make_engine

        engine = make_engine(engine, workers)
    redo_all = _prepare_cache(out_dir, cfg, force, dataset_root, fmt, dataset)
    mine = select_shard(records, shard)
    writer = cache.ManifestWriter(out_dir, shard)
    summary = PreprocessSummary(out_dir=str(out_dir), manifest=str(writer.path), total=len(mine))
    todo = _plan(mine, writer, redo_all, summary)
    workers, threads = _worker_split(workers, len(todo))
    sink = _RowSink(writer, summary, out_dir, len(todo), progress)
    stop: Optional[CacheWriteError] = None
    ran = False  # the loop ended without an exception (other than a stop)
    try:
        _run_todo(todo, workers, cfg, out_dir, threads, sink.add, engine)
        ran = True
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    except CacheWriteError as exc:
        stop, ran = exc, True
    finally:
        stop = sink.close(stop, ran)
        summary.seconds = time.perf_counter() - t0
    if stop is not None:
        summary.stopped = str(stop)
        stop.summary = summary
        raise stop
    return summary


def resolve_config(cfg: PreprocessConfig, out_dir: str | os.PathLike) -> PreprocessConfig:
    """``cfg`` with its detector resolved (``auto``: the cache's own when resuming it, else mtcnn or the
    dlib fallback; see ``faces.resolve_detector``), so the cache records the detector that made its clips."""
    from .faces import resolve_detector

    try:
        previous = read_cache_config(out_dir)
    except Exception as exc:  # an unreadable preprocess.json is reported by _prepare_cache
        log.debug("cache config unreadable while resolving the detector: %s", exc)
        previous = None
    return resolve_detector(cfg, previous)


def _prepare_cache(out_dir: Path, cfg: PreprocessConfig, force: bool,
                   dataset_root: Optional[str | os.PathLike], fmt: str,
                   dataset: Optional[dict] = None) -> bool:
    """Create the cache folder and record its settings before any clip is written, so an
    incompatible rerun is refused up front. Returns True when old results must be redone."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        redo_all = _check_cache(out_dir, cfg, force)
        meta = _cache_meta(cfg, dataset_root and str(dataset_root), fmt, dataset)
        meta[cache.MANIFEST_SCHEMA_KEY] = cache.manifest_schema_to_record(out_dir)
        atomic_write_json(out_dir / cache.CONFIG_NAME, meta)
    except OSError as exc:
        raise cache_write_error(exc, f"the cache folder {out_dir}") from exc
    return redo_all


def _plan(mine: list[VideoRecord], writer: cache.ManifestWriter, redo_all: bool,
          summary: PreprocessSummary) -> list[tuple]:
    """The videos this run must (re)do, one task tuple each. Finished ones are skipped (counted in
    ``summary``) but their labels, groups and methods are refreshed: the metadata may have been
    corrected since, and a cache made before the ``method`` column gains it without new clips."""
    todo: list[tuple] = []
    seen: set[str] = set()
    for r in mine:
        rel = r.rel_path or r.path
        if rel in seen:
            continue
        seen.add(rel)
        if not redo_all and writer.is_done(rel, r.path):
            done = writer.rows[rel]  # metadata may have been corrected since: keep the row current
            done.label, done.split, done.group = r.label or "", r.split or "", r.group or ""
            done.method = r.method or ""
            for tr in writer.tracks_of(rel):
                tr.label, tr.split, tr.group, tr.method = done.label, done.split, done.group, done.method
            summary.skipped += 1
            continue
        todo.append((r.path, rel, r.label or "", r.split or "", r.group or "", r.method or ""))
    if redo_all:
        writer.rows.clear()
    summary.todo = len(todo)
    return todo


def _worker_split(workers: Optional[int], n_todo: int) -> tuple[int, int]:
    """``(processes, decoder threads per process)``: no more processes than videos, and the CPUs
    shared between them (0 processes = work in this process)."""
    cpus = os.cpu_count() or 1
    if workers is None:
        workers = min(cpus, 8)
    workers = max(0, min(int(workers), max(n_todo, 1)))
    threads = max(1, cpus // max(workers, 1)) if workers else 0
    return workers, threads


def _run_todo(todo: list[tuple], workers: int, cfg: PreprocessConfig, out_dir: Path, threads: int,
              on_row: Callable[[cache.ManifestRow], None], engine: Any = None) -> None:
    """Make every clip of ``todo``, in a pool, on a cluster ``engine``, or (``workers == 0``) in this
    process, for debugging."""
    if not todo:
        return
    if engine is not None and engine != "local":
        engine.run(todo, cfg, out_dir, on_row)
        return
    if workers == 0:
        _init_worker(to_dict(cfg), str(out_dir), 0)
        for rec in todo:
            on_row(_process_one(rec))
    else:
        _run_pool(todo, workers, cfg, out_dir, threads, on_row)


class _RowSink:
    """Takes each finished video's row: into the manifest (saved every few seconds, so a crash loses
    little), the counts, the first failures and the progress bar. A row whose clip could not be
    written for a reason every later video shares (disk full, read-only) stops the run."""

    def __init__(self, writer: cache.ManifestWriter, summary: PreprocessSummary, out_dir: Path,
                 total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.writer = writer
        self.summary = summary
        self.out_dir = out_dir
        self.counts: Counter = Counter()
        self.bar = tqdm(total=total, disable=not progress, unit="video", desc="preprocess",
                        dynamic_ncols=True)
        self.last_flush = time.monotonic()

    def flush(self) -> None:
        try:
            self.writer.flush()
        except OSError as exc:
            raise cache_write_error(exc, f"the manifest {self.writer.path}") from exc

    def add(self, row: cache.ManifestRow) -> None:
        self.writer.add(row)
        for extra in getattr(row, "track_rows", ()):  # the video's other faces (max_faces > 1)
            self.writer.add(extra)
        self.counts[row.status] += 1
        if row.status not in (cache.OK, cache.NO_FACE) and len(self.summary.failures) < 50:
            self.summary.failures.append((row.path, row.status, row.error))
        self.bar.update(1)
        self.bar.set_postfix({k: v for k, v in sorted(self.counts.items())}, refresh=False)
        code = getattr(row, "write_errno", None)
        if code in WRITE_STOP_ERRNOS:
            where = f"clip {cache.clip_relpath(row.path)} in {self.out_dir}"
            raise cache_write_error(OSError(code, os.strerror(code)), where)
        if time.monotonic() - self.last_flush > _FLUSH_EVERY_S:
            self.flush()
            self.last_flush = time.monotonic()

    def close(self, stop: Optional[CacheWriteError], ran: bool) -> Optional[CacheWriteError]:
        """Save what finished (atomically: a rerun skips it) and fill in the summary's counts.

        Returns the error that stops the run: ``stop``, or a failed final save when the run ended
        normally (``ran``). When another error is on its way out, a failed save is only logged."""
        self.bar.close()
        try:
            self.flush()  # what finished, atomically: a rerun skips it
        except CacheWriteError as exc:
            if stop is None and ran:
                stop = exc
            else:  # another error is on its way out: do not hide it, but say the manifest is stale
                log.error("the manifest %s could not be saved (%s); videos finished in this run will be "
                          "redone by the next one", self.writer.path, exc.__cause__)
        summary = self.summary
        summary.processed = sum(self.counts.values())
        summary.counts = dict(self.counts)
        summary.manifest_counts = dict(Counter(r.status for r in self.writer.rows.values() if not r.track))
        return stop


__all__ = [
    "CacheWriteError",
    "ClipResult",
    "cache_write_error",
    "extract_clip",
    "extract_segments",
    "SegmentClip",
    "SegmentedResult",
    "run_preprocess",
    "PreprocessSummary",
    "parse_shard",
    "shard_of",
    "select_shard",
    "read_cache_config",
    "CLIP_KEYS",
    "clip_settings",
]
