"""Reading videos and sampling frames evenly across the WHOLE video, decoding only what is needed.

Why this is more than ``for frame in container.decode()``:

* Frames are chosen by presentation time: ``k`` targets at the centres of ``k`` equal time segments.
  For constant frame rate this is exactly ``sample_indices(n, k)``; for variable frame rate it still
  spreads the samples evenly over the clip's time line. Samplers have names (``SAMPLERS``): ``even``
  (that) and ``snippets`` (runs of consecutive frames anchored the same way, for local motion).
* ``read_windows`` samples each consecutive time window of a long video like a whole clip (scoring
  by segments), holding one window's frames at a time.
* The frame table (every frame's timestamp and keyframe flag) comes from the container index when it
  is complete (MP4/MOV/AVI), else from a demux-only pass (packets are read, nothing is decoded). So
  wrong or missing frame counts in headers do not matter.
* Frames that are not kept are decoded but never colour-converted; non-reference frames far from any
  target are not even decoded (``skip_frame=NONREF``). Before each target the reader seeks to the
  keyframe at or before it when that saves decoding (short GOPs, e.g. all-intra or 1 s GOPs); with
  long GOPs it decodes sequentially. The decision is made per target from the keyframe table.
* Decoded frames are rotated upright (display matrix), down-scaled at conversion time to
  ``max_side``, and absurd headers (``max_pixels``), long videos (``max_duration_s``) and slow files
  (``deadline_s``) are capped. PyAV errors become ``VideoError`` subclasses with a status; OpenCV is
  the fallback reader when PyAV cannot open a file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 4096 * 4096
_MAX_TABLE_FRAMES = 5_000_000  # a demux pass never records more packets than this
_SEEK_MIN_GAIN = 4  # seek only when it skips decoding more than this many frames


class VideoError(Exception):
    """A video that cannot be used; ``status`` is the manifest status it maps to."""

    status = "unreadable"


class VideoRefused(VideoError):
    """Refused by a safety cap (absurd dimensions)."""

    status = "refused"


class NoFramesError(VideoError):
    """The container opened but not a single frame could be decoded."""

    status = "too_short"


class _OpenFailed(VideoError):
    """PyAV could not open the file at all (the only case where OpenCV is tried)."""


class DecodeTimeout(VideoError):
    """Reading took longer than the per-video deadline."""

    status = "error"


@dataclass
class VideoInfo:
    """What a video claims and what the reader found out. ``frames`` is the best estimate (0 = unknown)."""

    path: str
    frames: int = 0
    fps: float = 0.0
    duration: float = 0.0  # seconds
    width: int = 0  # coded size (before rotation)
    height: int = 0
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise (0, 90, 180, -90)
    codec: str = ""
    container: str = ""
    start_time: float = 0.0
    keyframes: int = 0  # keyframes in the frame table (0 = unknown)
    keyframe_interval: float = 0.0  # mean frames per GOP (0 = unknown)
    frames_source: str = ""  # index | demux | header | decode
    header_frames: int = 0  # what the header claims (may be wrong)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed, after rotation."""
        if self.rotation % 180 != 0:
            return self.height, self.width
        return self.width, self.height


@dataclass
class SampledFrames:
    """Frames sampled by ``read_frames``: RGB uint8 [H,W,3], upright, possibly down-scaled."""

    frames: list[np.ndarray]
    indices: list[int]  # frame ordinals in the video
    times: list[float]  # presentation times, seconds from the first frame
    info: VideoInfo
    scale: float = 1.0  # frames are ``scale`` x the (rotated) source size
    backend: str = "av"
    decoded: int = 0  # frames decoded (converted or not)
    seeks: int = 0
    stats: dict = field(default_factory=dict)
    window: Optional[tuple[float, float]] = None  # read_windows: this window's (start, end), seconds
    window_s: float = 0.0  # read_windows: the width of the windows (wider than asked for long videos)


# --------------------------------------------------------------------------------------------------
# Sampling (pure functions)
# --------------------------------------------------------------------------------------------------


def sample_indices(n_frames: int, k: int) -> list[int]:
    """``k`` frame indices evenly spaced across ``n_frames``: the centres of ``k`` equal segments.

    Deterministic; sorted; unique. Short videos (``n_frames <= k``) give every frame (the caller
    pads). ``n_frames <= 0`` gives ``[]``.
    """
    n, k = int(n_frames), int(k)
    if n <= 0 or k <= 0:
        return []
    if n <= k:
        return list(range(n))
    return [min(n - 1, int((2 * j + 1) * n // (2 * k))) for j in range(k)]


def sample_by_time(times: np.ndarray, k: int, end: Optional[float] = None) -> list[int]:
    """Ordinals of ``k`` frames evenly spaced in presentation time.

    ``times`` are sorted frame start times; frame ``i`` is shown on ``[times[i], times[i+1])``. The
    target times are the centres of ``k`` equal segments of ``[times[0], end)`` and each picks the
    frame on screen at that moment. With constant frame rate this equals ``sample_indices``.
    """
    times = np.asarray(times, dtype=np.float64)
    n = len(times)
    if n == 0 or k <= 0:
        return []
    if n <= k:
        return list(range(n))
    if end is None or not end > times[-1]:
        step = np.median(np.diff(times)) if n > 1 else 1.0
        end = float(times[-1] + (step if step > 0 else 1.0))
    t0 = float(times[0])
    span = end - t0
    targets = t0 + (2 * np.arange(k) + 1) * span / (2 * k)
    # tiny tolerance: a target that falls on a frame boundary belongs to the later frame
    idx = np.searchsorted(times, targets + 1e-9 * max(1.0, abs(span)), side="right") - 1
    idx = np.clip(idx, 0, n - 1)
    chosen: set[int] = set()
    for target, i in zip(targets, idx):
        i = int(i)
        if i in chosen:
            # variable frame rate: a long-lived frame holds two targets; take the nearest unused
            # neighbour in time so the clip still has k distinct frames
            lo, hi = i - 1, i + 1
            while lo in chosen:
                lo -= 1
            while hi in chosen:
                hi += 1
            cands = [j for j in (lo, hi) if 0 <= j < n]
            if not cands:
                continue
            i = min(cands, key=lambda j: (abs(times[j] - target), j))
        chosen.add(i)
    return sorted(chosen)


def sample_snippets(times: np.ndarray, k: int, snippet_len: int, end: Optional[float] = None) -> list[int]:
    """Ordinals of ``k`` frames as ``k // snippet_len`` snippets of ``snippet_len`` consecutive frames.

    Why: single frames spread over the clip show the LSTM no motion; snippets show local motion (flicker,
    blending seams that move) and still cover the whole clip. Each snippet starts at an anchor frame:
    the anchors are ``sample_by_time(times, k // snippet_len, end)`` (evenly spread in presentation
    time, so variable frame rate is handled like the even sampler). Snippets that would run past the end
    or into the next one are pushed back, so there are always ``k`` distinct frames when the video has
    more than ``k``; shorter videos give every frame, like ``sample_by_time``.
    """
    n, k, length = len(times), int(k), int(snippet_len)
    if length < 1 or k % length:
        raise ValueError(f"frames ({k}) must be a positive multiple of snippet_len ({length})")
    if n == 0 or k <= 0:
        return []
    if n <= k:
        return list(range(n))
    starts = sample_by_time(times, k // length, end)
    for j in range(1, len(starts)):  # no overlap with the snippet before
        starts[j] = max(starts[j], starts[j - 1] + length)
    starts[-1] = min(starts[-1], n - length)  # clamped at the end, pushing earlier snippets back
    for j in range(len(starts) - 2, -1, -1):
        starts[j] = min(starts[j], starts[j + 1] - length)
    return [s + i for s in starts for i in range(length)]


def _sample_even(times: np.ndarray, k: int, snippet_len: int, end: Optional[float]) -> list[int]:
    return sample_by_time(times, k, end)


#: frame samplers by name (``PreprocessConfig.sampling``): ``f(times, k, snippet_len, end) -> ordinals``
SAMPLERS = {"even": _sample_even, "snippets": sample_snippets}


def sample_frames(times: Any, k: int, *, sampling: str = "even", snippet_len: int = 1,
                  end: Optional[float] = None) -> list[int]:
    """Ordinals of the frames sampler ``sampling`` picks from a video whose frames start at ``times``."""
    if sampling not in SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLERS)}")
    return SAMPLERS[sampling](np.asarray(times, dtype=np.float64), int(k), int(snippet_len), end)


def segment_windows(duration: float, seconds: float,
                    max_windows: int) -> tuple[list[tuple[float, float]], float]:
    """Consecutive time windows ``[(start, end), ...]`` covering ``[0, duration)`` and their width.

    Windows are ``seconds`` wide, or wider when that would make more than ``max_windows`` (the work per
    video stays bounded; the width returned says so). The last window takes the remainder; a remainder
    shorter than half a window joins the window before, so no window is a sliver of a few frames.
    """
    if seconds <= 0 or max_windows < 1:
        raise ValueError("seconds must be > 0 and max_windows >= 1")
    if not duration > 0:
        return [], float(seconds)
    width = max(float(seconds), float(duration) / int(max_windows))
    count = max(1, int(np.ceil(duration / width - 1e-9)))
    if count > 1 and duration - (count - 1) * width < width / 2:
        count -= 1
    bounds = [round(i * width, 6) for i in range(count)] + [round(float(duration), 6)]
    return list(zip(bounds[:-1], bounds[1:])), width


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as PyAV reports it) to a frame."""
    k = int(round(rotation / 90.0)) % 4
    if k == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, k=k))


def normalize_rotation(degrees: float) -> int:
    """A display rotation snapped to 0, 90, 180 or -90 degrees (counter-clockwise)."""
    return {0: 0, 1: 90, 2: 180, 3: -90}[int(round((degrees or 0) / 90.0)) % 4]


def _scaled_size(w: int, h: int, max_side: Optional[int]) -> tuple[int, int, float]:
    if not max_side or max(w, h) <= max_side:
        return w, h, 1.0
    s = max_side / float(max(w, h))
    # even sizes keep swscale fast and chroma-aligned
    return max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2), s


# --------------------------------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------------------------------


@dataclass
class _Table:
    ts: np.ndarray  # sorted presentation timestamps (stream time base, int64)
    key: np.ndarray  # bool, keyframe flags aligned with ts
    raw: np.ndarray  # the timestamp to pass to seek() for each entry (index: dts; demux: pts)
    source: str


def _open(path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    import av

    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        # FFmpeg refuses some headers (an absurd frame size) with an errno that says nothing about
        # the file ("Device or resource busy"): say what is wrong when the header tells us
        size = declared_frame_size(path)
        if size is not None and (size[0] * size[1] > max_pixels or not ffmpeg_accepts_size(*size)):
            # not _OpenFailed: the OpenCV fallback (FFmpeg too) would refuse it or allocate for it
            raise VideoError(f"cannot open: {_size_problem(size[0], size[1], max_pixels)}") from exc
        raise _OpenFailed(f"cannot open: {_av_msg(exc)}") from exc
    except (OSError, ValueError, UnicodeError) as exc:
        raise _OpenFailed(f"cannot open: {exc}") from exc


# errnos that describe a file or the machine; any other errno from FFmpeg on a regular file we could
# stat (EBUSY, ENOTTY, ...) is a decoder's error code reused for bad data, and its text would mislead
_FILE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO, errno.EISDIR, errno.ENOTDIR, errno.ELOOP,
                errno.ENAMETOOLONG, errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.EFBIG, errno.EOVERFLOW,
                errno.ESTALE, errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN}


def _av_msg(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and isinstance(code, int) and code > 0 and code not in _FILE_ERRNOS:
        name = errno.errorcode.get(code, str(code))
        return f"invalid or unsupported data (FFmpeg error code {name})"
    msg = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {msg}"


def ffmpeg_accepts_size(width: int, height: int) -> bool:
    """FFmpeg's own frame-size check (``av_image_check_size``): a header over it cannot be opened."""
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        return False
    stride = 8 * w + 128 * 8
    return stride < 2**31 - 1 and stride * (h + 128) < 2**31 - 1


def _size_problem(width: int, height: int, max_pixels: int) -> str:
    """Why a declared frame size cannot be used, in one line."""
    if width * height > max_pixels:
        side = int(round(max_pixels ** 0.5))
        shape = f"{side}x{side}, " if side * side == max_pixels else ""
        return f"frame size {width}x{height} exceeds the limit of {max_pixels} pixels ({shape}max_pixels)"
    return f"frame size {width}x{height} is larger than the decoder (FFmpeg) accepts"


def declared_frame_size(path: str | os.PathLike) -> Optional[tuple[int, int]]:
    """The frame size a file's header declares, read without any decoder; None when unknown.

    Only for headers FFmpeg checks (and rejects with a meaningless errno) before a stream exists:
    YUV4MPEG2 (``.y4m``), whose first line is ``YUV4MPEG2 W<width> H<height> ...``. Container formats
    (MP4, MKV, ...) open fine and their stream's size is checked against ``max_pixels`` as usual.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"YUV4MPEG2 "):
        return None
    w = h = None
    for token in head.split(b"\n", 1)[0].split()[1:]:
        try:
            if token[:1] == b"W":
                w = int(token[1:])
            elif token[:1] == b"H":
                h = int(token[1:])
        except ValueError:
            return None
    return (w, h) if w is not None and h is not None and w > 0 and h > 0 else None


_IMAGE_FORMATS = ("image2", "_pipe", "gif", "apng", "webp")


def _video_stream(container):
    fmt = container.format.name if container.format else ""
    if any(x in fmt for x in _IMAGE_FORMATS) and "mjpeg" not in fmt:
        raise VideoError(f"not a video: a still image ({fmt})")
    streams = container.streams.video
    if not streams:
        raise VideoError("no video stream")
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoError("unsupported or damaged video codec")
    return stream


def _table_from_index(stream, header_frames: int, fmt: str) -> Optional[_Table]:
    """Frame table from the container index (MP4/MOV/AVI list every sample; MKV only keyframes)."""
    try:
        entries = stream.index_entries
        n = len(entries)
    except Exception:  # older PyAV without index access
        return None
    if n < 2 or n > _MAX_TABLE_FRAMES:
        return None
    complete_format = any(x in fmt for x in ("mov", "mp4", "avi"))
    if header_frames > 0:
        if not 0.9 * header_frames <= n <= 1.1 * header_frames + 2:
            return None
    elif not complete_format:
        return None
    ts = np.empty(n, np.int64)
    key = np.empty(n, bool)
    m = 0
    for e in entries:
        if e.is_discard:
            continue
        ts[m] = e.timestamp
        key[m] = e.is_keyframe
        m += 1
    if m < 2:
        return None
    ts, key = ts[:m], key[:m]
    order = np.argsort(ts, kind="stable")
    raw = ts[order]
    key = key[order]
    # MOV/MP4 index timestamps are decode times; presentation = decode + the reorder delay
    shift = 0
    if stream.start_time is not None and stream.start_time > raw[0]:
        shift = int(stream.start_time - raw[0])
    return _Table(ts=raw + shift, key=key, raw=raw, source="index")


def _table_from_demux(container, stream, max_ticks: Optional[int]) -> Optional[_Table]:
    """Frame table from a demux-only pass: reads packets, decodes nothing."""
    ts: list[int] = []
    key: list[bool] = []
    first = None
    ordinal = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        t = packet.pts if packet.pts is not None else packet.dts
        if t is None:
            t = ordinal  # no timestamps at all: ordinal "time"
        ordinal += 1
        if first is None:
            first = t
        if max_ticks is not None and t - first > max_ticks:
            break
        ts.append(int(t))
        key.append(bool(packet.is_keyframe))
        if len(ts) >= _MAX_TABLE_FRAMES:
            break
    if not ts:
        return None
    arr = np.asarray(ts, np.int64)
    order = np.argsort(arr, kind="stable")
    arr = arr[order]
    return _Table(ts=arr, key=np.asarray(key, bool)[order], raw=arr.copy(), source="demux")


def _info_from_stream(path: str, container, stream) -> VideoInfo:
    cc = stream.codec_context
    tb = float(stream.time_base) if stream.time_base else 0.0
    fps = 0.0
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            fps = float(rate)
            if 0 < fps < 1000:
                break
    if not 0 < fps < 1000:
        fps = 0.0
    duration = 0.0
    if stream.duration and tb:
        duration = stream.duration * tb
    elif container.duration:
        duration = container.duration / 1_000_000.0
    start = stream.start_time * tb if (stream.start_time is not None and tb) else 0.0
    header_frames = int(stream.frames or 0)
    return VideoInfo(
        path=path,
        frames=header_frames,
        fps=fps,
        duration=float(duration),  # header value, replaced by the frame table
        width=int(cc.width or 0),
        height=int(cc.height or 0),
        codec=cc.name or "",
        container=container.format.name if container.format else "",
        start_time=float(start),
        frames_source="header" if header_frames else "",
        header_frames=header_frames,
    )


def _check_caps(info: VideoInfo, max_pixels: int) -> None:
    if info.width < 0 or info.height < 0:
        raise VideoRefused(f"invalid frame size {info.width}x{info.height}")
    if info.width * info.height > max_pixels:
        raise VideoRefused(_size_problem(info.width, info.height, max_pixels))


def _apply_table(info: VideoInfo, table: _Table, tb: float) -> None:
    n = len(table.ts)
    info.frames = n
    info.frames_source = table.source
    info.keyframes = int(table.key.sum())
    info.keyframe_interval = n / info.keyframes if info.keyframes else 0.0
    if n > 1 and tb:
        span = (table.ts[-1] - table.ts[0]) * tb
        step = float(np.median(np.diff(table.ts))) * tb
        table_duration = span + max(step, 0.0)
        if table_duration > 0:
            info.duration = float(table_duration)
            if not info.fps and step > 0:
                info.fps = 1.0 / step


def _describe(path: str, container: Any, max_pixels: int) -> tuple[Any, VideoInfo, float, Optional[_Table]]:
    """The video stream, its header info (caps checked), time base and the index's frame table
    (None when the container has no usable index; the caller may then demux)."""
    stream = _video_stream(container)
    info = _info_from_stream(path, container, stream)
    _check_caps(info, max_pixels)
    tb = float(stream.time_base or 0)
    return stream, info, tb, _table_from_index(stream, info.header_frames, info.container)


def probe(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, scan: bool = True) -> VideoInfo:
    """Describe a video cheaply: header values corrected by the frame table, plus rotation.

    Raises ``VideoError`` (or a subclass) when the file cannot be used.
    """
    import av

    path = os.fspath(path)
    container = _open(path, max_pixels)
    try:
        stream, info, tb, table = _describe(path, container, max_pixels)
        if table is None and scan:
            table = _table_from_demux(container, stream, None)
        if table is not None:
            _apply_table(info, table, tb)
        # rotation lives in side data that the decoder attaches to frames: decode one frame
        with contextlib.suppress(av.error.FFmpegError):
            container.seek(0)
        try:
            for frame in container.decode(stream):
                info.rotation = normalize_rotation(frame.rotation)
                break
        except av.error.FFmpegError:
            pass
        return info
    except av.error.FFmpegError as exc:
        raise VideoError(_av_msg(exc)) from exc
    finally:
        container.close()


class _Deadline:
    def __init__(self, seconds: Optional[float]) -> None:
        self.end = time.monotonic() + seconds if seconds else None

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise DecodeTimeout("timed out while decoding (deadline_s)")


class _AvReader:
    """One pass over a PyAV container that converts only the frames at the target ordinals."""

    def __init__(self, path: str, table: _Table, tb: float, threads: int, max_side: Optional[int],
                 deadline: _Deadline, skip_nonref: bool) -> None:
        self.path = path
        self.table = table
        self.tb = tb
        self.threads = threads
        self.max_side = max_side
        self.deadline = deadline
        self.skip_nonref = skip_nonref
        self.key_ords = np.flatnonzero(table.key)
        self.decoded = 0
        self.seeks = 0
        self.decode_errors = 0
        self.rotation: Optional[int] = None
        self.last_ord = -1  # the highest ordinal decoded in this pass
        self.out_size: Optional[tuple[int, int, float]] = None
        self.next_ts = 0  # presentation time of the frame wanted next (stream time base)
        self.max_pixels = DEFAULT_MAX_PIXELS

    def _ordinal(self, pts: Optional[int], prev: int) -> int:
        if pts is None:
            return prev + 1
        i = int(np.searchsorted(self.table.ts, pts, side="right")) - 1
        return max(i, 0)

    def _keyframe_before(self, ordinal: int) -> int:
        if len(self.key_ords) == 0:
            return 0
        i = int(np.searchsorted(self.key_ords, ordinal, side="right")) - 1
        return int(self.key_ords[max(i, 0)])

    def _convert(self, frame) -> np.ndarray:
        if frame.width * frame.height > self.max_pixels:  # headers can lie about the size
            raise VideoRefused(f"decoded frame {frame.width}x{frame.height} exceeds max_pixels")
        if self.out_size is None:
            self.out_size = _scaled_size(frame.width, frame.height, self.max_side)
        w, h, s = self.out_size
        if s != 1.0:
            img = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
        else:
            img = frame.to_ndarray(format="rgb24")
        if self.rotation is None:
            self.rotation = normalize_rotation(frame.rotation)
        return rotate_upright(img, self.rotation)

    def run(self, targets: list[int], have: dict[int, tuple[np.ndarray, int, float]]) -> None:
        """Decode ``targets`` (sorted ordinals) into ``have[target] = (rgb, real_ordinal, time)``."""
        import av

        todo = [t for t in targets if t not in have]
        if not todo:
            return
        container = _open(self.path, self.max_pixels)
        try:
            stream = _video_stream(container)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self.threads
            seekable = self.table.source in ("index", "demux") and len(self.key_ords) > 0
            cur = -1  # ordinal of the last decoded frame
            frames_iter = None
            ts0 = int(self.table.ts[0])
            for target in todo:
                if target in have:
                    continue
                kf = self._keyframe_before(target)
                if frames_iter is None or (seekable and kf - cur > _SEEK_MIN_GAIN):
                    if kf > 0 or cur >= 0:
                        frames_iter = self._seek(container, stream, kf, target)
                    else:
                        frames_iter = self._frames(container, stream)
                    cur = kf - 1
                next_ts = int(self.table.ts[target])
                self.next_ts = next_ts
                got = False
                while True:
                    self.deadline.check()
                    try:
                        frame = next(frames_iter)
                    except StopIteration:
                        frames_iter = None
                        break
                    self.decoded += 1
                    ordinal = self._ordinal(frame.pts, cur)
                    cur = ordinal
                    self.last_ord = max(self.last_ord, ordinal)
                    early = frame.pts < next_ts if frame.pts is not None else ordinal < target
                    if early:
                        continue  # decoded but never converted
                    t = ((frame.pts if frame.pts is not None else ts0) - ts0) * self.tb
                    have[target] = (self._convert(frame), ordinal, float(t))
                    got = True
                    break
                if not got:
                    break  # end of stream: the caller re-plans with what really exists
        except av.error.FFmpegError as exc:
            if not have:
                raise VideoError(f"decode failed: {_av_msg(exc)}") from exc
            log.debug("%s: decode stopped early (%s)", self.path, exc)
        finally:
            container.close()

    def _seek(self, container, stream, kf: int, target: int):
        """Seek to keyframe ``kf`` (presentation time); if the demuxer lands after the target, go
        back one keyframe at a time (at most 3), then give up seeking and decode from the start."""
        import itertools

        tries = 0
        while True:
            self.deadline.check()
            container.seek(int(self.table.ts[kf]), stream=stream, backward=True)
            self.seeks += 1
            it = self._frames(container, stream)
            try:
                first = next(it)
            except StopIteration:
                return iter(())
            if first.pts is None or first.pts <= int(self.table.ts[target]) or kf == 0 or tries >= 3:
                if first.pts is not None and first.pts > int(self.table.ts[target]) and kf > 0:
                    container.seek(int(self.table.ts[0]), stream=stream, backward=True)
                    self.seeks += 1
                    return self._frames(container, stream)
                return itertools.chain([first], it)
            tries += 1
            self.decoded += 1
            kf = self._keyframe_before(kf - 1)

    def _frames(self, container, stream):
        """Decoded frames from the current position. Packets of frames shown before the next target
        are decoded with ``skip_frame=NONREF``: a non-reference frame that is not kept is never needed."""
        import av

        cc = stream.codec_context
        nonref = False
        for packet in container.demux(stream):
            if self.skip_nonref:
                want = packet.pts is not None and packet.pts < self.next_ts and not packet.is_keyframe
                if want != nonref:
                    cc.skip_frame = "NONREF" if want else "DEFAULT"
                    nonref = want
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.decode_errors += 1
                if self.decode_errors > 1000:
                    raise
                continue
            yield from frames


def _av_table(path: str, max_pixels: int, max_duration_s: Optional[float],
              deadline: _Deadline) -> tuple[VideoInfo, _Table, float]:
    """The video's header info, its frame table (index, else a demux pass; capped at ``max_duration_s``)
    and the stream's time base."""
    import av

    container = _open(path, max_pixels)
    try:
        stream, info, tb, table = _describe(path, container, max_pixels)
        if not tb:
            raise VideoError("stream has no time base")
        max_ticks = int(max_duration_s / tb) if max_duration_s else None
        if table is None:
            deadline.check()
            table = _table_from_demux(container, stream, max_ticks)
    except av.error.FFmpegError as exc:
        raise VideoError(f"cannot read: {_av_msg(exc)}") from exc
    finally:
        container.close()
    if table is None:
        raise NoFramesError("no video frames in the container")
    if max_ticks is not None:
        keep = table.ts - table.ts[0] <= max_ticks
        if not keep.all():
            table = _Table(table.ts[keep], table.key[keep], table.raw[keep], table.source)
    _apply_table(info, table, tb)
    return info, table, tb


def _read_av(path: str, pick: Callable[..., list[int]], max_side: Optional[int], max_pixels: int,
             max_duration_s: Optional[float], threads: int, deadline: _Deadline,
             skip_nonref: bool) -> SampledFrames:
    info, table, tb = _av_table(path, max_pixels, max_duration_s, deadline)
    reader = _AvReader(path, table, tb, threads, max_side, deadline, skip_nonref)
    reader.max_pixels = max_pixels
    have: dict[int, tuple[np.ndarray, int, float]] = {}
    times_s = (table.ts - table.ts[0]) * tb
    targets = pick(times_s)
    reader.run(targets, have)
    if len(have) < len(targets) and reader.last_ord >= 0:
        # fewer frames decodable than the table claims (truncated/corrupt): re-plan over what exists
        real = reader.last_ord + 1
        log.debug("%s: %d frames in the table but only %d decodable", path, len(table.ts), real)
        info.frames = real
        info.frames_source = "decode"
        info.duration = float(times_s[min(real, len(times_s) - 1)]) if real < len(times_s) else info.duration
        targets = pick(times_s[:real])
        kept = {t: v for t, v in have.items() if t < real}
        have = kept
        reader.run(targets, have)
        wanted = set(targets)
        have = {t: v for t, v in have.items() if t in wanted}
    if not have:
        raise NoFramesError("no frame could be decoded")
    if reader.decode_errors:
        log.debug("%s: %d packets failed to decode", path, reader.decode_errors)
    return _collect(have, info, reader, table)


def _collect(have: dict[int, tuple[np.ndarray, int, float]], info: VideoInfo, reader: _AvReader,
             table: _Table) -> SampledFrames:
    """The decoded targets as ``SampledFrames``, in order."""
    # several targets can land on one real frame (decode gaps): keep each real frame once, in order
    seen: dict[int, tuple[np.ndarray, float]] = {}
    for t in sorted(have):
        img, ordinal, when = have[t]
        seen.setdefault(ordinal, (img, when))
    ordinals = sorted(seen)
    info.rotation = reader.rotation or 0
    return SampledFrames(
        frames=[seen[o][0] for o in ordinals],
        indices=ordinals,
        times=[seen[o][1] for o in ordinals],
        info=info,
        scale=reader.out_size[2] if reader.out_size else 1.0,
        backend="av",
        decoded=reader.decoded,
        seeks=reader.seeks,
        stats={"decode_errors": reader.decode_errors, "table": table.source},
    )


def _iter_av_windows(path: str, pick: Callable[..., list[int]], seconds: float, max_windows: int,
                     max_side: Optional[int], max_pixels: int, max_duration_s: Optional[float], threads: int,
                     deadline: _Deadline) -> Iterator[SampledFrames]:
    """Each time window's sampled frames, in order (see ``read_windows``).

    One frame table for the whole file, then one decoder pass per window that starts at the keyframe
    before the window's first target: frames are decoded once, except at most one GOP per window when
    two windows share a GOP. Only one window's frames are held at a time.
    """
    info, table, tb = _av_table(path, max_pixels, max_duration_s, deadline)
    reader = _AvReader(path, table, tb, threads, max_side, deadline, skip_nonref=True)
    reader.max_pixels = max_pixels
    times_s = (table.ts - table.ts[0]) * tb
    spans, width = segment_windows(info.duration, seconds, max_windows)
    for start, end in spans:
        lo, hi = (int(i) for i in np.searchsorted(times_s, [start - 1e-9, end - 1e-9], side="left"))
        if hi <= lo:
            continue  # a gap in a variable-frame-rate video: no frame starts in this window
        targets = [lo + i for i in pick(times_s[lo:hi], end=end)]
        have: dict[int, tuple[np.ndarray, int, float]] = {}
        try:
            reader.run(targets, have)
        except VideoError as exc:
            if isinstance(exc, DecodeTimeout) or reader.last_ord < 0:
                raise
            log.debug("%s: decoding stopped in the window at %.1f s: %s", path, start, exc)
            return  # damaged from here on: the windows before it stand
        if have:
            out = _collect(have, info, reader, table)
            out.window, out.window_s = (float(start), float(end)), width
            yield out
        if len(have) < len(targets) and reader.last_ord < targets[-1]:
            log.debug("%s: decoding stopped at frame %d of %d", path, reader.last_ord + 1, len(table.ts))
            return  # the file ends early (truncated): later windows have nothing to decode


# --------------------------------------------------------------------------------------------------
# OpenCV fallback
# --------------------------------------------------------------------------------------------------


def _read_cv2(path: str, k: int, max_side: Optional[int], max_pixels: int, max_duration_s: Optional[float],
              deadline: _Deadline, pick: Optional[Callable[..., list[int]]] = None) -> SampledFrames:
    import cv2

    # OpenCV's bundled FFmpeg prints "[mov,mp4,...] moov atom not found" & co. to stderr; the status and
    # message of each video say what failed. Read once, at the first capture (a user's setting wins).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise VideoError("OpenCV cannot open the file")
        if cap.getBackendName() != "FFMPEG":  # e.g. CV_IMAGES reads a lone PNG as a "video"
            raise VideoError(f"not a video (OpenCV backend {cap.getBackendName()})")
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps = fps if 0 < fps < 1000 else 0.0
        info = VideoInfo(path=path, width=w, height=h, fps=fps, frames_source="header", container="opencv")
        _check_caps(info, max_pixels)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        info.header_frames = max(n, 0)
        cap_frames = int(max_duration_s * fps) if (max_duration_s and fps) else None
        if n <= 0 or n > _MAX_TABLE_FRAMES:
            # count by grabbing (no decoding into RGB), then reopen
            n = 0
            while cap.grab():
                n += 1
                deadline.check()
                if cap_frames and n >= cap_frames:
                    break
            cap.release()
            cap = cv2.VideoCapture(path)
            info.frames_source = "decode"
        if cap_frames:
            n = min(n, cap_frames)
        # no timestamps here: frame ordinals are the time line (the even sampler in its integer form)
        targets = sample_indices(n, k) if pick is None else pick(np.arange(n, dtype=np.float64))
        frames, indices = [], []
        want = set(targets)
        i = 0
        scale = 1.0
        while targets and i <= targets[-1]:
            deadline.check()
            if not cap.grab():
                break
            if i in want:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    tw, th, scale = _scaled_size(bgr.shape[1], bgr.shape[0], max_side)
                    if scale != 1.0:
                        bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                    indices.append(i)
            i += 1
        if not frames:
            raise NoFramesError("no frame could be decoded (OpenCV)")
        info.frames = i if i < n else n
        info.duration = info.frames / fps if fps else 0.0
        return SampledFrames(frames=frames, indices=indices,
                             times=[j / fps if fps else 0.0 for j in indices], info=info,
                             scale=scale, backend="cv2", decoded=i)
    finally:
        cap.release()


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def read_frames(
    path: str | os.PathLike,
    k: int,
    *,
    max_side: Optional[int] = 1920,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_duration_s: Optional[float] = None,
    threads: int = 0,
    deadline_s: Optional[float] = None,
    backend: str = "auto",
    skip_nonref: bool = True,
    sampling: str = "even",
    snippet_len: int = 1,
) -> SampledFrames:
    """Read ``k`` frames spread over the whole video (fewer when the video is shorter).

    ``sampling`` names the sampler (``SAMPLERS``): ``even`` (single frames evenly spaced in time) or
    ``snippets`` (``k // snippet_len`` runs of ``snippet_len`` consecutive frames, evenly spaced).
    ``max_side`` down-scales decoded frames (longest side), ``max_pixels`` refuses absurd headers,
    ``max_duration_s`` only considers the first seconds, ``deadline_s`` bounds the wall time,
    ``threads`` is the decoder thread count (0 = automatic). ``backend``: ``auto`` (PyAV, then
    OpenCV when PyAV cannot open the file), ``av`` or ``cv2``. Raises ``VideoError`` subclasses.
    """
    path = os.fspath(path)
    pick = _picker(k, sampling, snippet_len)
    _check_file(path)
    deadline = _Deadline(deadline_s)
    cv2_pick = None if sampling == "even" else pick
    if backend == "cv2":
        return _read_cv2(path, k, max_side, max_pixels, max_duration_s, deadline, cv2_pick)
    try:
        return _read_av(path, pick, max_side, max_pixels, max_duration_s, threads, deadline, skip_nonref)
    except _OpenFailed as exc:
        if backend != "auto" or os.path.getsize(path) == 0:
            raise
        try:
            return _read_cv2(path, k, max_side, max_pixels, max_duration_s, deadline, cv2_pick)
        except VideoError as exc2:
            log.debug("%s: OpenCV fallback failed too: %s", path, exc2)
            raise exc from None
        except Exception as exc2:  # OpenCV's own errors (cv2.error) on hostile input
            log.debug("%s: OpenCV fallback raised %r", path, exc2)
            raise exc from None


def _picker(k: int, sampling: str, snippet_len: int) -> Callable[..., list[int]]:
    """``pick(times, end=None) -> ordinals``: the sampler by name with ``k`` and ``snippet_len`` bound
    (checked here, before any file is opened)."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if sampling not in SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; choose from {', '.join(SAMPLERS)}")
    if sampling == "snippets" and (snippet_len < 1 or k % snippet_len):
        raise ValueError(f"frames ({k}) must be a positive multiple of snippet_len ({snippet_len})")
    return functools.partial(sample_frames, k=k, sampling=sampling, snippet_len=snippet_len)


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoError("file does not exist")
    if os.path.isdir(path):
        raise VideoError("is a directory")
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
        raise VideoError("not a regular file (pipe, device or socket)")


def read_windows(
    path: str | os.PathLike,
    k: int,
    *,
    seconds: float,
    max_windows: int,
    sampling: str = "even",
    snippet_len: int = 1,
    max_side: Optional[int] = 1920,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_duration_s: Optional[float] = None,
    threads: int = 0,
    deadline_s: Optional[float] = None,
) -> Iterator[SampledFrames]:
    """``read_frames`` for each consecutive time window of a long video, one window at a time.

    Why: a short manipulated stretch of a long video is a few frames of an evenly sampled clip and is
    averaged away; scored window by window, it is not. Windows come from ``segment_windows`` (``seconds``
    wide, wider when there would be more than ``max_windows``); each is sampled like a whole clip (``k``
    frames, same sampler) and carries ``window`` and ``window_s``. A window without frames (a gap in a
    variable-frame-rate video) is skipped. Cost: one frame-table pass, then decoding moves forward
    through the file, seeking to each window's keyframe. When only OpenCV can open the file (no cheap
    seeking), the whole video is one window. Raises ``VideoError`` subclasses, like ``read_frames``.
    """
    path = os.fspath(path)
    pick = _picker(k, sampling, snippet_len)
    _check_file(path)
    deadline = _Deadline(deadline_s)
    try:
        windows = _iter_av_windows(path, pick, seconds, max_windows, max_side, max_pixels, max_duration_s,
                                   threads, deadline)
        first = next(windows, None)
    except _OpenFailed:
        one = read_frames(path, k, max_side=max_side, max_pixels=max_pixels, max_duration_s=max_duration_s,
                          deadline_s=deadline_s, sampling=sampling, snippet_len=snippet_len)
        one.window, one.window_s = (0.0, float(one.info.duration)), float(one.info.duration)
        yield one
        return
    if first is None:
        raise NoFramesError("no frame could be decoded")
    yield first
    yield from windows


def even_times(duration: float, k: int) -> list[float]:
    """Target times (seconds) of ``k`` samples over ``duration``: centres of equal segments."""
    if duration <= 0 or k <= 0:
        return []
    return [(2 * j + 1) * duration / (2 * k) for j in range(k)]


__all__ = [
    "VideoInfo",
    "SampledFrames",
    "VideoError",
    "VideoRefused",
    "NoFramesError",
    "DecodeTimeout",
    "probe",
    "read_frames",
    "sample_indices",
    "sample_by_time",
    "sample_snippets",
    "sample_frames",
    "SAMPLERS",
    "segment_windows",
    "read_windows",
    "rotate_upright",
    "normalize_rotation",
    "even_times",
]
