"""How the public reference implementation read and cropped videos ("legacy" preprocessing).

This module owns the input side of ``predict --legacy`` (see docs/legacy.md):

* ``reference``: :class:`ReferencePreprocess` + :func:`reference_extract` repeat the reference's
  predict-time preprocessing -- the FIRST N frames read with OpenCV (BGR), per frame the first face of
  dlib's HOG detector cut tightly (the whole frame when none), ``ToPILImage`` + ``Resize`` on the BGR
  data, no padding -- so ``exact`` mode sees the reference's input;
* ``ours``: :func:`legacy_preprocess_config`, this project's pipeline with the reference's settings;
* the constants both share (crop size, channel order, default sequence length).

The reference network and its weight mapping live in ``models/legacy.py``. Decoding worker processes
import this module, so torch, OpenCV and dlib are imported inside the functions that use them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..config import PreprocessConfig
from ..constants import ERROR, MISSING, NO_FACE, OK, REFUSED, UNREADABLE
from .preprocess import ClipResult

log = logging.getLogger(__name__)

__all__ = [
    "LEGACY_PREPROCESS",
    "LEGACY_DEFAULT_FRAMES",
    "LEGACY_SIZE",
    "LEGACY_CHANNEL_ORDER",
    "ReferencePreprocess",
    "reference_extract",
    "legacy_preprocess_config",
]

LEGACY_PREPROCESS = ("reference", "ours")
LEGACY_DEFAULT_FRAMES = 20
LEGACY_SIZE = 112
# The reference fed OpenCV (BGR) frames to ToPILImage as if they were RGB, in training and predict.
LEGACY_CHANNEL_ORDER = "bgr"

Box = tuple[float, float, float, float]


def legacy_preprocess_config(frames: int) -> PreprocessConfig:
    """Our closest equivalent of the reference's preprocessing: 112 px dlib face crops, no margin.

    The reference's dlib-based ``face_recognition`` crop was tight (no margin) and not square; ours
    is square around the same box. Frame sampling follows our pipeline (see docs/legacy.md).
    """
    return PreprocessConfig(frames=int(frames), size=LEGACY_SIZE, margin=0.0, detector="dlib")


@dataclass
class ReferencePreprocess:
    """The reference's predict-time preprocessing, reproduced (used with ``exact`` mode).

    The FIRST ``frames`` frames read with OpenCV (BGR); per frame the first face of dlib's HOG
    detector (what ``face_recognition.face_locations`` runs, ``upsample`` times up-sampled) cut
    tightly, or the full frame when none is found; ``ToPILImage`` on the BGR array and
    ``Resize((size, size))`` -- exactly the reference's calls. ``frames`` is the sequence length.
    """

    frames: int = LEGACY_DEFAULT_FRAMES
    size: int = LEGACY_SIZE
    upsample: int = 1
    no_face: str = "center"  # center: classify full frames (status no_face); skip: leave unscored
    max_pixels: int = 4096 * 4096  # frames larger than this are refused (bounded memory)
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if not 16 <= self.size <= 1024:
            raise ValueError("size must be between 16 and 1024 pixels")
        if self.no_face not in ("center", "skip"):
            raise ValueError("no_face must be 'center' or 'skip'")


class _Unusable(Exception):
    """A video the steps below cannot turn into a clip: ends ``reference_extract`` with this status."""

    def __init__(self, status: str, error: str) -> None:
        super().__init__(error)
        self.status, self.error = status, error


#: One dlib HOG detector per thread: dlib's scanner keeps its image pyramid inside the detector object
#: and is not thread-safe, so threads sharing one (``serve --workers N``) corrupted the heap. Per
#: thread, legacy exact mode runs as many videos at once as there are threads, with no lock.
_DLIB = threading.local()


def _dlib_hog() -> Any:
    """This thread's dlib HOG face detector (``face_recognition``'s default), built on first use."""
    det = getattr(_DLIB, "hog", None)
    if det is None:
        import dlib

        det = _DLIB.hog = dlib.get_frontal_face_detector()
    return det


def reference_extract(path: str | os.PathLike, cfg: ReferencePreprocess) -> ClipResult:
    """A ``ClipResult`` made the way the reference's predict made its input (never raises).

    The clip is returned in RGB order like every ClipResult (the Detector flips it back to the BGR
    the reference fed its network), with ``T <= cfg.frames`` (no padding: the reference ran the
    frames it had).
    """
    t0 = time.perf_counter()
    path = os.fspath(path)
    res = ClipResult(clip=None, status=ERROR)
    try:
        _check_file(path)
        deadline = t0 + cfg.timeout_s if cfg.timeout_s else None
        frames = _read_first_frames(path, cfg, res, deadline)
        crops, boxes, found = _crop_faces(frames, cfg)
        _fill_result(res, crops, boxes, found, cfg)
    except _Unusable as stop:
        res.status, res.error = stop.status, stop.error
    except MemoryError:
        res.status, res.error, res.clip = ERROR, "MemoryError: out of memory reading the video", None
    except Exception as exc:  # a bug or an unexpected library failure: reported per video
        log.debug("reference_extract(%s) failed", path, exc_info=True)
        res.status, res.error, res.clip = ERROR, f"{type(exc).__name__}: {exc}", None
    finally:
        res.seconds = time.perf_counter() - t0
    return res


def _check_file(path: str) -> None:
    """Refuse what is not a readable regular file before OpenCV sees it (clear per-video messages)."""
    if not os.path.lexists(path):
        raise _Unusable(MISSING, "file does not exist")
    if not os.path.isfile(path):
        raise _Unusable(UNREADABLE, "not a regular file (folder, broken link or link loop)")
    if not os.access(path, os.R_OK):
        raise _Unusable(UNREADABLE, "permission denied")


def _read_first_frames(path: str, cfg: ReferencePreprocess, res: ClipResult,
                       deadline: Optional[float]) -> list[np.ndarray]:
    """The first ``cfg.frames`` BGR frames, read with OpenCV as the reference did (no sampling).

    Records the video's size, fps and frame count on ``res``; bounded by ``cfg.max_pixels`` per frame
    and by ``deadline`` (a ``time.perf_counter`` value).
    """
    import cv2

    frames: list[np.ndarray] = []
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise _Unusable(UNREADABLE, "cannot open the video (OpenCV)")
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        res.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        res.source_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        res.width, res.height = w, h
        if w * h > cfg.max_pixels:
            raise _Unusable(REFUSED, f"frame size {w}x{h} exceeds the pixel limit")
        while len(frames) < cfg.frames:
            ok, img = cap.read()
            if not ok or img is None:
                break
            if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] * img.shape[1] > cfg.max_pixels:
                raise _Unusable(REFUSED, f"unexpected frame shape {img.shape}")
            frames.append(img)
            if deadline is not None and time.perf_counter() > deadline:
                raise _Unusable(ERROR, f"timed out after {cfg.timeout_s:.0f} s")
    finally:
        cap.release()
    if not frames:
        raise _Unusable(UNREADABLE, "no decodable video frames")
    return frames


def _crop_faces(frames: list[np.ndarray],
                cfg: ReferencePreprocess) -> tuple[list[np.ndarray], list[Box], int]:
    """Per frame: the tight face crop (or whole frame) resized with the reference's torchvision calls.

    Returns the ``cfg.size`` square uint8 BGR crops, the boxes cut (full frame when no face) and how
    many frames had a face.
    """
    import torchvision.transforms.functional as TF

    det = _dlib_hog()
    crops, boxes, found = [], [], 0
    for img in frames:
        crop, box, has_face = _first_face_crop(img, det, cfg.upsample)
        found += has_face
        resized = TF.resize(TF.to_pil_image(np.ascontiguousarray(crop)), [cfg.size, cfg.size])
        crops.append(np.asarray(resized, dtype=np.uint8))
        boxes.append(box)
    return crops, boxes, found


def _first_face_crop(img: np.ndarray, det: Any, upsample: int) -> tuple[np.ndarray, Box, bool]:
    """The first dlib face of ``img`` cut tightly, else the whole frame (where the reference would
    crash on an empty box, it is used too)."""
    fh, fw = img.shape[:2]
    rects = det(img, upsample)  # BGR in, as face_recognition received it
    if len(rects):
        r = rects[0]
        # face_recognition's _rect_to_css + _trim_css_to_bounds
        top, right = max(r.top(), 0), min(r.right(), fw)
        bottom, left = min(r.bottom(), fh), max(r.left(), 0)
        if bottom > top and right > left:
            box = (float(left), float(top), float(right), float(bottom))
            return img[top:bottom, left:right, :], box, True
    return img, (0.0, 0.0, float(fw), float(fh)), False


def _fill_result(res: ClipResult, crops: list[np.ndarray], boxes: list[Box], found: int,
                 cfg: ReferencePreprocess) -> None:
    """Store the clip (RGB, like every ClipResult) and its status; ``cfg.no_face`` decides whether a
    video without any face keeps its full frames (as the reference did) or stays unscored."""
    res.frames = len(crops)
    res.face_ratio = found / len(crops)
    res.indices = list(range(len(crops)))
    res.boxes = np.asarray(boxes, dtype=np.float32)
    clip = np.ascontiguousarray(np.stack(crops)[..., ::-1])  # to RGB; the Detector flips back
    if found:
        res.status, res.clip = OK, clip
        return
    res.status = NO_FACE
    res.error = f"no face found in the first {res.frames} frames"
    if cfg.no_face == "center":
        res.clip = clip
        res.error += " (full frames used, as the reference did)"
    else:
        res.frames = 0
