"""Optional training augmentations (``train --augment base,h264,noise,cutout``) beside the base set.

Each is drawn once per clip from the clip's own random stream (after the base set's draws, so
``--augment base`` alone sees exactly the stream it always saw) and applied to every frame alike:

- ``h264``: a real H.264 round trip of the clip in memory (PyAV: libx264 ``ultrafast``, ``zerolatency``,
  CRF 23-45, one thread), about 3 ms per 112 px frame, so no approximation is needed. It teaches the
  block, ringing and temporal artefacts of heavily compressed uploads (FF++ c40, the study's CRF 40
  protocol) that JPEG re-encoding of single frames does not have.
- ``noise``: Gaussian sensor noise, sigma 2-10 grey levels per clip, fresh per frame as a camera's is.
- ``cutout``: one face part (eyes, nose or mouth band of the canonical crop, jittered) blacked out in
  every frame, like the DFDC winner's landmark cutout: the model must not rely on one region alone.
  Crops carry no landmarks, so the parts are the canonical places of a face centred with margin 0.3.

``shuffle_window`` is not an augmentation but a pseudo-fake (``train --order-fakes P``): a REAL clip
with the frames of a random window (3 frames up to the whole clip) put in a random order, labelled
FAKE. Real video is continuous in time; a model taught that broken order is fake has a prior for
temporal manipulations (frames dropped, repeated, re-ordered, spliced) that training never showed it,
as self-blended images give a spatial prior for blending.
"""

from __future__ import annotations

import fractions

import numpy as np

__all__ = ["EXTRA_AUGMENTS", "apply_extra", "h264_roundtrip", "gaussian_noise", "cutout_face_part",
           "shuffle_window"]

EXTRA_AUGMENTS = ("h264", "noise", "cutout")
# face parts as (top, bottom, left, right) fractions of a face crop centred with margin 0.3
_PARTS = {
    "eyes": (0.30, 0.48, 0.15, 0.85),
    "nose": (0.42, 0.64, 0.36, 0.64),
    "mouth": (0.62, 0.80, 0.28, 0.72),
}


def h264_roundtrip(clip: np.ndarray, crf: int) -> np.ndarray:
    """uint8 ``[T,H,W,3]`` RGB encoded with libx264 at ``crf`` and decoded again, same shape.

    Odd sides are padded by one edge pixel (yuv420p needs even sides) and cropped back."""
    import av

    t, h, w, _ = clip.shape
    padded = np.pad(clip, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = padded.shape[2], padded.shape[1], "yuv420p"
    enc.time_base = fractions.Fraction(1, 25)
    enc.thread_count = 1
    enc.options = {"crf": str(int(crf)), "preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i, frame in enumerate(padded):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = i
        packets += enc.encode(vf)
    packets += enc.encode(None)
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count = 1
    frames = [f.to_ndarray(format="rgb24") for p in packets for f in dec.decode(p)]
    frames += [f.to_ndarray(format="rgb24") for f in dec.decode(None)]
    if len(frames) != t:  # never expected; keep the clip rather than change its length
        return clip
    return np.ascontiguousarray(np.stack(frames)[:, :h, :w])


def gaussian_noise(clip: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of ``sigma`` grey levels, rounded and clipped to uint8."""
    noisy = clip.astype(np.float32) + rng.normal(0.0, sigma, size=clip.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def cutout_face_part(clip: np.ndarray, part: str, shift: tuple[float, float]) -> np.ndarray:
    """``part`` (eyes, nose, mouth) of every frame set to black, its box moved by ``shift`` (fractions)."""
    _, h, w, _ = clip.shape
    top, bottom, left, right = _PARTS[part]
    dy, dx = shift
    y0, y1 = (int(round((v + dy) * h)) for v in (top, bottom))
    x0, x1 = (int(round((v + dx) * w)) for v in (left, right))
    out = np.array(clip, copy=True)
    out[:, max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 0
    return out


def apply_extra(clip: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...]) -> np.ndarray:
    """The optional augmentations named in ``kinds`` (any of ``EXTRA_AUGMENTS``), in a fixed order."""
    out = clip
    if "h264" in kinds and rng.random() < 0.5:
        out = h264_roundtrip(out, int(rng.integers(23, 46)))
    if "noise" in kinds and rng.random() < 0.3:
        out = gaussian_noise(out, float(rng.uniform(2.0, 10.0)), rng)
    if "cutout" in kinds and rng.random() < 0.3:
        part = ("eyes", "nose", "mouth")[int(rng.integers(0, 3))]
        out = cutout_face_part(out, part, tuple(rng.uniform(-0.04, 0.04, size=2)))
    return out


def shuffle_window(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``frames`` (time first: a clip or per-frame features) with one window of >= 3 frames (2 for a
    2-frame clip) put in a random order that differs from the original; None for fewer than 2 frames."""
    t = len(frames)
    if t < 2:
        return None
    length = int(rng.integers(min(3, t), t + 1))
    start = int(rng.integers(0, t - length + 1))
    order = np.arange(length)
    while np.array_equal(order, np.arange(length)):
        order = rng.permutation(length)
    idx = np.arange(t)
    idx[start:start + length] = start + order
    return frames[idx]
