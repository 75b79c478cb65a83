"""Tiny synthetic face-clip caches for the model/training tests (no video decoding needed).

REAL clips are smooth random textures that drift slowly; FAKE clips are the same kind of texture
with an obvious manipulation: a bright square pasted at a fixed place (``kind="square"``) or a
region that flickers between frames (``kind="flicker"``). Each fake shares its ``group`` with one
real clip, like a deepfake and its original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from deepfake_detector.data.cache import CONFIG_NAME, ManifestRow, ManifestWriter, save_clip


def _texture(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    small = rng.integers(40, 200, size=(4, 4, 3)).astype(np.float32)
    import cv2

    base = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    clip = []
    for t in range(frames):
        frame = np.roll(base, t, axis=1) + rng.normal(0, 4, size=base.shape)
        clip.append(frame)
    return np.clip(np.stack(clip), 0, 255).astype(np.uint8)


def make_clip(
    rng: np.random.Generator, fake: bool, frames: int = 6, size: int = 24, kind: str = "square"
) -> np.ndarray:
    clip = _texture(rng, frames, size)
    if fake:
        s = max(4, size // 3)
        y, x = rng.integers(0, size - s, size=2)
        if kind == "square":
            clip[:, y : y + s, x : x + s] = 250
        elif kind == "flicker":
            for t in range(frames):
                if t % 2:
                    clip[t, y : y + s, x : x + s] = 255 - clip[t, y : y + s, x : x + s]
        else:
            raise ValueError(kind)
    return clip


def make_synthetic_cache(
    root: Path,
    n_real: int = 12,
    n_fake: int = 12,
    frames: int = 6,
    size: int = 24,
    seed: int = 0,
    kind: str = "square",
    splits: Optional[dict] = None,
    extra_rows: Optional[list] = None,
    frame_counts: Optional[list] = None,
) -> Path:
    """Write clips + manifest.csv + preprocess.json under ``root``; returns ``root``.

    ``splits`` maps a clip's position (``real-3``/``fake-3``) to a dataset split name.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    writer = ManifestWriter(root)
    for label, n in (("REAL", n_real), ("FAKE", n_fake)):
        for i in range(n):
            key = f"{label.lower()}-{i}"
            t = frame_counts[i % len(frame_counts)] if frame_counts else frames
            clip = make_clip(rng, label == "FAKE", t, size, kind)
            rel = f"videos/{key}.mp4"
            clip_rel = save_clip(root, rel, clip)
            writer.add(
                ManifestRow(
                    path=rel,
                    label=label,
                    split=(splits or {}).get(key, ""),
                    group=f"id{i % max(1, n_real)}",
                    status="ok",
                    frames=t,
                    face_ratio=1.0,
                    clip=clip_rel,
                )
            )
    for row in extra_rows or []:
        writer.add(row)
    writer.flush()
    (root / CONFIG_NAME).write_text(
        json.dumps({"config": {"frames": frames, "size": size, "margin": 0.3, "detector": "center"}})
    )
    return root


# what every finished training run folder holds
RUN_FILES = {
    "config.yaml",
    "metrics.csv",
    "best.pt",
    "last.pt",
    "loss.png",
    "accuracy.png",
    "confusion_matrix.png",
    "roc.png",
    "val_predictions.csv",
    "splits.csv",
}
