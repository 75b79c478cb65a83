"""Face detectors by name, a one-subject tracker and the square cropper.

Detectors (``get_detector(name, **kw)``):

* ``dlib``: dlib's HOG frontal face detector (``dlib-bin`` wheel, no model file). HOG cost grows with
  the pixel count, so each frame is searched coarse-to-fine: first at a small scale (faces that fill
  a good part of the frame are found in a few ms), then at ``detect_max_side`` with ``upsample``
  passes only when nothing was found. Once a face was found in a video, its size tells the scale to
  use first on the next frames (the face is searched at about 100 px).
* ``haar``: OpenCV's bundled frontal-face Haar cascade (dependency-free fallback, more false
  positives; the tracker removes most).
* ``center``: no detection; the centre square of the frame.
* ``mtcnn``: the MTCNN cascade (``data/mtcnn.py``, torch, imported only when chosen): finds rotated,
  dark, turned and small faces HOG misses, gives five landmarks per face (``Box.landmarks``), and runs
  all of a video's frames through each network at once (``detect_batch``), on CUDA when asked for.
* ``auto`` (the default, resolved once per run by :func:`resolve_detector`): ``mtcnn`` where its weights
  are at hand or can be fetched, else ``dlib`` with a warning; a cache being resumed keeps its detector.
  MTCNN is the default because it found >= 96 % of faces in every condition of ``benchmarks/bench_faces``
  where HOG found 0-71 % (docs/faces.md).

All detectors return ``Box`` es in the coordinates of the frame they were given. Detector objects are
picklable and may be shared between threads: the native detector (dlib's HOG scanner and OpenCV's
cascade keep scratch buffers; two threads in one corrupt the heap) is built lazily once per process
AND per thread, so a detector object cached per process is safe in a server's worker threads.

``FaceCropper`` keeps ONE subject per video by default: boxes are linked across the sampled frames into
tracks (IoU / centre distance), the track with the most detections x size wins (with ``max_faces`` N > 1,
up to N tracks are kept, ranked the same way, in ``CropResult.others``), its boxes are smoothed over
time, frames without a detection get boxes interpolated from their neighbours, and each frame is cut
as a square (``margin`` extra context), padded black at the borders, and resized to ``size``. With
``align`` (and a detector with landmarks) each square is turned so the eyes are level, as DeepfakeBench
aligns its crops; ``CropResult.landmarks`` carries the subject's landmarks either way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class Box:
    """A face box ``[x0, x1) x [y0, y1)`` in pixels with a detector score (higher = more confident)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 0.0
    # [5, 2] x, y of the eyes (image-left, image-right), nose tip and mouth corners; detectors that find
    # landmarks (mtcnn) set it, the others leave None
    landmarks: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @property
    def w(self) -> float:
        return self.x1 - self.x0

    @property
    def h(self) -> float:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def side(self) -> float:
        return max(self.w, self.h)

    def scaled(self, s: float) -> Box:
        marks = None if self.landmarks is None else self.landmarks * np.float32(s)
        return Box(self.x0 * s, self.y0 * s, self.x1 * s, self.y1 * s, self.score, landmarks=marks)

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x1, self.y1], np.float32)


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp)


class FaceDetector:
    """Base class: ``detect(rgb) -> list[Box]`` in the frame's own pixel coordinates."""

    name = "base"

    def detect(self, rgb: np.ndarray, hint: Optional[float] = None) -> list[Box]:
        """Faces in an RGB uint8 frame. ``hint``: expected face side in pixels (speeds up search)."""
        raise NotImplementedError

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_native"] = None  # native detectors are rebuilt lazily in the receiving process
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._native = threading.local()

    def _per_thread(self, build: Callable[[], object]) -> object:
        """The calling thread's own native detector, built on its first use in that thread.

        Native detectors are not thread-safe (shared scratch buffers); one per thread costs one build
        per thread (dlib: ~0.5 s) and nothing per call.
        """
        local = self.__dict__.get("_native")
        if not isinstance(local, threading.local):
            local = self._native = threading.local()
        native = getattr(local, "native", None)
        if native is None:
            native = local.native = build()
        return native


class DlibDetector(FaceDetector):
    """dlib HOG frontal faces, searched coarse-to-fine (see the module docstring)."""

    name = "dlib"
    _WINDOW = 80  # dlib's HOG window: faces smaller than ~80 px need up-sampling
    _TARGET = 100  # with a size hint, scale the frame so the face is about this big

    def __init__(self, detect_max_side: int = 640, upsample: int = 1, coarse_side: int = 320,
                 threshold: float = 0.0) -> None:
        self.detect_max_side = int(detect_max_side)
        self.upsample = int(upsample)
        self.coarse_side = int(min(coarse_side, detect_max_side))
        self.threshold = float(threshold)
        self._native = threading.local()

    @property
    def native(self):
        """This thread's dlib detector."""
        return self._per_thread(self._build)

    @staticmethod
    def _build():
        try:
            import dlib
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the dlib face detector needs the 'dlib-bin' package (pip install dlib-bin); "
                "or use --detector haar"
            ) from exc
        return dlib.get_frontal_face_detector()

    def _run(self, img: np.ndarray, scale: float, upsample: int) -> list[Box]:
        small = img if scale == 1.0 else _resize(img, scale)
        rects, scores, _ = self.native.run(np.ascontiguousarray(small), upsample, self.threshold)
        inv = 1.0 / scale
        return [Box(r.left() * inv, r.top() * inv, (r.right() + 1) * inv, (r.bottom() + 1) * inv, float(s))
                for r, s in zip(rects, scores)]

    def plan(self, shape: Sequence[int], hint: Optional[float] = None) -> list[tuple[float, int]]:
        """The (scale, upsample) passes tried in order for a frame of ``shape``.

        Without a hint: coarse, then ``detect_max_side``, then ``detect_max_side`` up-sampled. With a
        hint (the face size found on an earlier frame of this video) one pass at the scale that makes
        that face ~100 px, then the coarse pass; the expensive passes are skipped because a frame
        without a detection is filled from its neighbours anyway.
        """
        longest = float(max(shape[0], shape[1]))
        full = min(1.0, self.detect_max_side / longest)
        coarse = min(full, self.coarse_side / longest)
        passes: list[tuple[float, int]] = []
        if hint:
            need = self._TARGET / float(hint)
            if need <= full:
                passes.append((max(coarse, need), 0))
            elif self.upsample > 0:
                passes.append((full, self.upsample))
            else:
                passes.append((full, 0))
            passes.append((coarse, 0))
        else:
            passes.append((coarse, 0))
            if full > coarse * 1.15:
                passes.append((full, 0))
            if self.upsample > 0:
                passes.append((full, self.upsample))
        seen, out = set(), []
        for p in passes:
            key = (round(p[0], 3), p[1])
            if key not in seen:
                seen.add(key)
                out.append(p)
        return out

    def detect(self, rgb: np.ndarray, hint: Optional[float] = None) -> list[Box]:
        for scale, up in self.plan(rgb.shape, hint):
            boxes = self._run(rgb, scale, up)
            if boxes:
                return boxes
        return []


class HaarDetector(FaceDetector):
    """OpenCV's bundled frontal-face Haar cascade on a grey, down-scaled frame."""

    name = "haar"

    def __init__(self, detect_max_side: int = 640, scale_factor: float = 1.1, min_neighbors: int = 5,
                 cascade: str = "haarcascade_frontalface_default.xml", **_: object) -> None:
        self.detect_max_side = int(detect_max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.cascade = cascade
        self._native = threading.local()

    @property
    def native(self):
        """This thread's OpenCV cascade classifier."""
        return self._per_thread(self._build)

    def _build(self):
        import cv2

        path = self.cascade
        if not path.startswith("/"):
            path = cv2.data.haarcascades + path
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise RuntimeError(f"cannot load the Haar cascade {path}")
        return clf

    def detect(self, rgb: np.ndarray, hint: Optional[float] = None) -> list[Box]:
        import cv2

        longest = max(rgb.shape[:2])
        scale = min(1.0, self.detect_max_side / float(longest))
        small = rgb if scale == 1.0 else _resize(rgb, scale)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        min_side = max(20, int(min(gray.shape[:2]) * 0.06))
        rects, _, weights = self.native.detectMultiScale3(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side), outputRejectLevels=True,
        )
        inv = 1.0 / scale
        out = []
        for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            out.append(Box(x * inv, y * inv, (x + w) * inv, (y + h) * inv, float(s)))
        return out


class CenterDetector(FaceDetector):
    """No detection: the centre square of the frame (for face-centred footage or debugging)."""

    name = "center"

    def __init__(self, **_: object) -> None:
        self._native = None

    def detect(self, rgb: np.ndarray, hint: Optional[float] = None) -> list[Box]:
        return [center_box(rgb.shape)]


def center_box(shape: Sequence[int]) -> Box:
    """The largest centred square of a frame of ``shape`` (h, w, ...)."""
    h, w = float(shape[0]), float(shape[1])
    s = min(h, w)
    return Box((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2, 0.0)


DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "dlib": DlibDetector,
    "haar": HaarDetector,
    "center": CenterDetector,
}


def _mtcnn(**kw: object) -> FaceDetector:
    """MTCNN (``data/mtcnn.py``), imported on first use: it runs on torch, which decoding workers only
    import when this backend is chosen."""
    from .mtcnn import MTCNNDetector

    return MTCNNDetector(**kw)


DETECTORS["mtcnn"] = _mtcnn


def get_detector(name: str, **kw: object) -> FaceDetector:
    """Build a detector by registry name (``dlib``, ``haar``, ``center``, ``mtcnn``); extra keywords
    configure it (each backend ignores the ones that are not its own)."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}") from None
    if cls is DlibDetector:
        kw = {k: v for k, v in kw.items() if k in ("detect_max_side", "upsample", "coarse_side", "threshold")}
    return cls(**kw)


AUTO = "auto"
AUTO_FALLBACK = "dlib"  # what ``auto`` means where MTCNN cannot run (no weights, offline)


def resolve_detector(cfg: Any, previous: Any = None, fetch: bool = True) -> Any:
    """``cfg`` with detector ``auto`` replaced by the one that runs: ``previous``'s (the config of a cache
    being resumed, so a rerun does not change its clips), else ``mtcnn`` when it can run here (its weights
    named, cached or -- with ``fetch`` -- fetched now), else ``dlib`` with a warning that says why. Other
    names pass through."""
    import dataclasses

    if cfg.detector != AUTO:
        return cfg
    name = getattr(previous, "detector", None)
    if name in (None, AUTO):
        why = detector_available("mtcnn", getattr(cfg, "mtcnn_weights", None), fetch=fetch)
        name = "mtcnn" if why is None else AUTO_FALLBACK
        if why is not None:
            log.warning("face detector: %s, because MTCNN cannot run here (%s)", AUTO_FALLBACK, why)
    try:
        return dataclasses.replace(cfg, detector=name)
    except ValueError as exc:  # e.g. align without landmarks
        raise ValueError(f"detector auto resolved to {name}: {exc}") from None


def detector_from_config(cfg: Any) -> FaceDetector:
    """The detector a ``PreprocessConfig`` names, configured from it (preprocess and predict alike)."""
    cfg = resolve_detector(cfg)
    return get_detector(cfg.detector, detect_max_side=cfg.detect_max_side, upsample=cfg.upsample,
                        weights_dir=getattr(cfg, "mtcnn_weights", None),
                        device=getattr(cfg, "detector_device", "auto"))


def detector_available(name: str, weights_dir: Optional[str] = None, fetch: bool = True) -> Optional[str]:
    """None when detector ``name`` can run here, else a one-line reason.

    For ``mtcnn`` this also makes its weights available (``weights_dir``, or torch hub's cache, fetched
    from the package index once), so a run's workers find them instead of each trying to download.
    """
    if name == AUTO:
        return None  # mtcnn, or dlib where mtcnn cannot run (resolve_detector)
    if name == "mtcnn":
        from .mtcnn import mtcnn_available

        return mtcnn_available(weights_dir, fetch=fetch)
    if name == "dlib":
        try:
            import dlib  # noqa: F401
        except ImportError:
            return "dlib is not installed (pip install dlib-bin), use --detector haar"
    elif name == "haar":
        import cv2

        if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
            return "this OpenCV build has no Haar cascades (use opencv-python-headless<5)"
    elif name not in DETECTORS:
        return f"unknown detector {name!r}"
    return None


# --------------------------------------------------------------------------------------------------
# Tracking, smoothing and cropping
# --------------------------------------------------------------------------------------------------


@dataclass
class CropResult:
    crops: np.ndarray  # uint8 [T, size, size, 3]
    boxes: np.ndarray  # float32 [T, 4] x0,y0,x1,y1 of the square crop in the frames' pixels
    detected: np.ndarray  # bool [T]: the subject was really detected in this frame
    face_ratio: float  # detected.mean()
    found: bool  # any face at all
    # float32 [T, 5, 2] the kept subject's landmarks (Box.landmarks) in the frames' pixels, NaN in frames
    # without a detection; None when the detector gives no landmarks
    landmarks: Optional[np.ndarray] = None
    # with max_faces > 1: the other kept faces' results (tracks 1, 2, ... in rank order); never nested
    others: list[CropResult] = field(default_factory=list)


def _link_tracks(dets: list[list[Box]]) -> list[dict[int, Box]]:
    """Link per-frame boxes into tracks: in each frame the cheapest (box, track) pairs are matched
    first (IoU, centre distance relative to size, similar size); unmatched boxes start new tracks."""
    tracks: list[dict[int, Box]] = []
    last: list[Box] = []  # latest box of each track
    for t, boxes in enumerate(dets):
        pairs = []
        for bi, box in enumerate(boxes):
            for k, lb in enumerate(last):
                ratio = box.side / max(lb.side, 1e-6)
                if not 0.5 <= ratio <= 2.0:
                    continue
                dist = float(np.hypot(box.cx - lb.cx, box.cy - lb.cy)) / max(lb.side, box.side, 1e-6)
                overlap = iou(box, lb)
                if overlap < 0.1 and dist > 1.0:
                    continue
                pairs.append((dist - overlap + abs(np.log(ratio)), bi, k))
        used_b: set[int] = set()
        used_t: set[int] = set()
        for _, bi, k in sorted(pairs):
            if bi in used_b or k in used_t:
                continue
            tracks[k][t] = boxes[bi]
            last[k] = boxes[bi]
            used_b.add(bi)
            used_t.add(k)
        for bi, box in enumerate(boxes):
            if bi not in used_b:
                tracks.append({t: box})
                last.append(box)
    return tracks


def _track_score(track: dict[int, Box]) -> float:
    sides = [b.side for b in track.values()]
    return len(track) * float(np.median(sides))


def _same_face(a: dict[int, Box], b: dict[int, Box]) -> bool:
    """True when two tracks overlap in most of the frames they share (one face split in two tracks)."""
    common = set(a) & set(b)
    return bool(common) and float(np.mean([iou(a[t], b[t]) for t in common])) > 0.3


def rank_tracks(tracks: list[dict[int, Box]], max_faces: int) -> list[dict[int, Box]]:
    """Up to ``max_faces`` tracks, best first (detections x size). Why the filters: a face seen in under
    a third of the main face's frames is more likely a false detection than a person, and a track that
    sits on a kept one is the same face broken in two by the linker."""
    ranked = sorted(tracks, key=_track_score, reverse=True)
    if not ranked:
        return []
    kept = [ranked[0]]
    need = max(1, int(np.ceil(len(ranked[0]) / 3)))
    for tr in ranked[1:]:
        if len(kept) >= max_faces:
            break
        if len(tr) >= need and not any(_same_face(tr, k) for k in kept):
            kept.append(tr)
    return kept


def _fill_and_smooth(track: dict[int, Box], n: int, window: int) -> np.ndarray:
    """[n, 3] (cx, cy, side) for every frame: detections median-smoothed, gaps interpolated."""
    ts = np.array(sorted(track), dtype=np.float64)
    vals = np.array([[track[int(t)].cx, track[int(t)].cy, track[int(t)].side] for t in ts], np.float64)
    if window > 1 and len(ts) >= 3:
        half = window // 2
        sm = vals.copy()
        for i in range(len(ts)):
            lo, hi = max(0, i - half), min(len(ts), i + half + 1)
            sm[i] = np.median(vals[lo:hi], axis=0)
        vals = sm
    grid = np.arange(n, dtype=np.float64)
    # np.interp: linear between detections, nearest value before the first / after the last
    return np.stack([np.interp(grid, ts, vals[:, j]) for j in range(3)], axis=1)


def square_crop(
    img: np.ndarray, cx: float, cy: float, side: float, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a ``side`` square centred on (cx, cy), shifted inside the frame when it fits, padded black
    where it does not, resized to ``size``. Returns the crop and the square's [x0,y0,x1,y1]."""
    import cv2

    h, w = img.shape[:2]
    side = max(2.0, float(side))
    x0 = cx - side / 2
    y0 = cy - side / 2
    # keep the square inside the frame when the frame is big enough (no padding needed)
    if side <= w:
        x0 = min(max(x0, 0.0), w - side)
    if side <= h:
        y0 = min(max(y0, 0.0), h - side)
    ix0, iy0 = int(round(x0)), int(round(y0))
    iside = max(2, int(round(side)))
    ix1, iy1 = ix0 + iside, iy0 + iside
    sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
    if sx1 <= sx0 or sy1 <= sy0:
        patch = np.zeros((iside, iside, 3), np.uint8)
    else:
        patch = img[sy0:sy1, sx0:sx1]
        pads = (sy0 - iy0, iy1 - sy1, sx0 - ix0, ix1 - sx1)
        if any(pads):
            patch = cv2.copyMakeBorder(patch, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if iside > size else cv2.INTER_LINEAR
    crop = cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)
    return crop, np.array([ix0, iy0, ix1, iy1], np.float32)


def _track_landmarks(track: dict[int, Box], n: int) -> Optional[np.ndarray]:
    """[n, 5, 2] landmarks of a track's boxes, NaN where the frame has none; None when no box has any."""
    if not any(b.landmarks is not None for b in track.values()):
        return None
    out = np.full((n, 5, 2), np.nan, np.float32)
    for t, b in track.items():
        if b.landmarks is not None:
            out[t] = np.asarray(b.landmarks, np.float32).reshape(5, 2)
    return out


def eye_angles(landmarks: np.ndarray, window: int = 3) -> np.ndarray:
    """[T] degrees the line from the image-left to the image-right eye is turned (clockwise on screen is
    positive), median-smoothed over ``window`` frames and interpolated where a frame has no landmarks."""
    n = len(landmarks)
    eyes = landmarks[:, :2, :].astype(np.float64)
    ok = ~np.isnan(eyes).any(axis=(1, 2))
    if not ok.any():
        return np.zeros(n)
    ts = np.flatnonzero(ok)
    d = eyes[ts, 1] - eyes[ts, 0]
    ang = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
    if window > 1 and len(ts) >= 3:
        half = window // 2
        ang = np.array([np.median(ang[max(0, i - half):i + half + 1]) for i in range(len(ts))])
    return np.interp(np.arange(n, dtype=np.float64), ts, ang)


def aligned_crop(img: np.ndarray, cx: float, cy: float, side: float, angle: float,
                 size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``side`` square centred on (cx, cy) and turned by ``angle`` degrees (``eye_angles``), so the eyes
    come out level, resized to ``size`` (black outside the frame). Returns the crop and the unturned
    square's [x0,y0,x1,y1]. Small angles (< 0.5 degrees) are cut by ``square_crop``."""
    if abs(angle) < 0.5:
        return square_crop(img, cx, cy, side, size)
    import cv2

    side = max(2.0, float(side))
    big = int(np.ceil(size * 1.5))  # covers the turned square (side * sqrt(2)) at the output's resolution
    patch, pbox = square_crop(img, cx, cy, side * 1.5, big)
    k = big / max(float(pbox[2] - pbox[0]), 1e-6)  # patch pixels per frame pixel
    pcx, pcy = (cx - pbox[0]) * k, (cy - pbox[1]) * k
    m = cv2.getRotationMatrix2D((float(pcx), float(pcy)), float(angle), size / (side * k))
    m[:, 2] += (size / 2 - pcx, size / 2 - pcy)
    crop = cv2.warpAffine(patch, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))
    return crop, np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float32)


class FaceCropper:
    """Detect, track ONE subject (``max_faces`` > 1: up to that many, in ``CropResult.others``), smooth, fill
    gaps and cut square crops from a list of frames.

    ``align``: turn each crop so the eyes are level (needs a detector with landmarks, e.g. ``mtcnn``;
    otherwise crops stay upright).
    """

    def __init__(self, detector: FaceDetector, size: int = 112, margin: float = 0.3, smooth: int = 3,
                 align: bool = False, max_faces: int = 1) -> None:
        self.detector = detector
        self.size = int(size)
        self.margin = float(margin)
        self.smooth = int(smooth)
        self.align = bool(align)
        self.max_faces = max(1, int(max_faces))

    def detect_all(self, frames: Sequence[np.ndarray]) -> list[list[Box]]:
        """Per-frame detections; the size of the last face found guides the search on the next frame.
        A detector with ``detect_batch`` (mtcnn) gets all frames in one call instead."""
        batch = getattr(self.detector, "detect_batch", None)
        if batch is not None:
            return batch(frames)
        out: list[list[Box]] = []
        hint: Optional[float] = None
        for frame in frames:
            boxes = self.detector.detect(frame, hint=hint)
            if boxes:
                hint = max(b.side for b in boxes)
            out.append(boxes)
        return out

    def crop(self, frames: Sequence[np.ndarray], detections: Optional[list[list[Box]]] = None) -> CropResult:
        n = len(frames)
        if n == 0:
            raise ValueError("no frames to crop")
        if detections is None:
            detections = self.detect_all(frames)
        centre_only = isinstance(self.detector, CenterDetector)
        tracks = [] if centre_only else rank_tracks(_link_tracks(detections), self.max_faces)
        if not tracks:
            return self._cut(frames, None, found=centre_only)  # the centre detector never "finds" a face
        main = self._cut(frames, tracks[0], found=True)
        main.others = [self._cut(frames, tr, found=True) for tr in tracks[1:]]
        return main

    def _cut(self, frames: Sequence[np.ndarray], track: Optional[dict[int, Box]], found: bool) -> CropResult:
        """One track's crops (smoothed, gaps filled); ``track`` None: the centre squares."""
        n = len(frames)
        detected = np.zeros(n, bool)
        marks = None
        if track is not None:
            for t in track:
                detected[t] = True
            marks = _track_landmarks(track, n)
            params = _fill_and_smooth(track, n, self.smooth)
            sides = params[:, 2] * (1.0 + self.margin)
            centres = params[:, :2]
        else:
            centres = np.array([[f.shape[1] / 2, f.shape[0] / 2] for f in frames], np.float64)
            sides = np.array([min(f.shape[:2]) for f in frames], np.float64)
        angles = eye_angles(marks, self.smooth) if self.align and marks is not None else None
        crops = np.empty((n, self.size, self.size, 3), np.uint8)
        boxes = np.empty((n, 4), np.float32)
        for i, frame in enumerate(frames):
            if angles is None:
                crops[i], boxes[i] = square_crop(frame, centres[i, 0], centres[i, 1], sides[i], self.size)
            else:
                crops[i], boxes[i] = aligned_crop(frame, centres[i, 0], centres[i, 1], sides[i], angles[i],
                                                  self.size)
        ratio = float(detected.mean()) if n else 0.0
        return CropResult(crops=crops, boxes=boxes, detected=detected, face_ratio=ratio, found=found,
                          landmarks=marks)


__all__ = [
    "Box",
    "FaceDetector",
    "DlibDetector",
    "HaarDetector",
    "CenterDetector",
    "DETECTORS",
    "get_detector",
    "detector_available",
    "FaceCropper",
    "CropResult",
    "aligned_crop",
    "detector_from_config",
    "eye_angles",
    "rank_tracks",
    "square_crop",
    "center_box",
    "iou",
]
