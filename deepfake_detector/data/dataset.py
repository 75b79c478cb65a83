"""``ClipDataset`` over the face-clip cache, clip transforms and the train/val/test split.

Augmentations are sampled ONCE per clip and applied identically to all its frames (same flip, affine,
colour, blur and JPEG quality): per-frame random augmentation would itself create the temporal
flicker that betrays many deepfakes, teaching the model that real videos flicker. The random stream
of a clip depends only on ``(seed, epoch, index)``, so results do not depend on the number of
DataLoader workers and a resumed run sees exactly the augmentations an uninterrupted run would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .cache import NO_FACE, OK, Cache, ManifestRow
from .records import label_to_index, normalize_label

log = logging.getLogger(__name__)

__all__ = [
    "ClipDataset",
    "clips_to_device",
    "eval_clip",
    "eval_transform",
    "normalize_clip",
    "train_transform",
    "fit_length",
    "split_rows",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "usable_rows",
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def fit_length_indices(t: int, seq_len: int) -> np.ndarray:
    """The frame indices ``fit_length`` takes from a clip of ``t`` frames (evaluation uses them to score
    each distinct frame once)."""
    if t == seq_len:
        return np.arange(t, dtype=np.int64)
    idx = (
        np.floor(np.linspace(0, t, seq_len, endpoint=False) + 1e-9).astype(np.int64)
        if t < seq_len
        else np.round(np.linspace(0, t - 1, seq_len)).astype(np.int64)
    )
    return np.clip(idx, 0, t - 1)


def fit_length(clip: np.ndarray, seq_len: int) -> np.ndarray:
    """Exactly ``seq_len`` frames: evenly subsample a long clip, stretch a short one by repetition.

    Short clips repeat each frame in place (0,0,1,1,2,2...) rather than looping (0,1,2,0,1,2): a loop
    inserts a jump back in time that looks like the temporal inconsistency of a fake.
    """
    t = clip.shape[0]
    if t == 0:
        raise ValueError("empty clip")
    if t == seq_len:
        return clip
    return clip[fit_length_indices(t, seq_len)]


def uint8_tensor(clip: np.ndarray) -> torch.Tensor:
    """A writable uint8 tensor copy of ``clip`` (cached clips are read-only memory maps)."""
    return torch.from_numpy(np.array(clip, dtype=np.uint8, copy=True))


def normalize_clip(clip_uint8: np.ndarray) -> torch.Tensor:
    """uint8 ``[T,H,W,3]`` RGB -> float ``[T,3,H,W]``, ImageNet-normalised: ``clips_to_device`` on the CPU."""
    return clips_to_device(uint8_tensor(clip_uint8).unsqueeze(0), "cpu")[0]


def eval_clip(clip_uint8: np.ndarray, seq_len: int) -> np.ndarray:
    """Test-time clip before normalisation: checked uint8 ``[seq_len,H,W,3]`` (length fit only)."""
    clip = np.asarray(clip_uint8)
    if clip.dtype != np.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be uint8 [T,H,W,3], got {clip.dtype} {clip.shape}")
    return fit_length(clip, seq_len)


def eval_transform(clip_uint8: np.ndarray, seq_len: int) -> torch.Tensor:
    """Test-time transform shared by evaluate and predict: length fit + ImageNet normalisation only."""
    return normalize_clip(eval_clip(clip_uint8, seq_len))


_STATS: dict = {}


def clips_to_device(x: torch.Tensor, device: torch.device | str, non_blocking: bool = True) -> torch.Tensor:
    """Model input on ``device``: float ``[B,T,3,H,W]``, ImageNet-normalised.

    Accepts the raw uint8 batches of ``ClipDataset(raw=True)`` (``[B,T,H,W,3]`` RGB), which cross to
    the accelerator at a quarter of the bytes of float32 and are normalised there (the same
    arithmetic as ``eval_transform``, so CPU results are bit-identical), or float batches that are
    already normalised (moved as they are).
    """
    if x.is_floating_point():
        return x.to(device, non_blocking=non_blocking)
    if x.dtype != torch.uint8 or x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"raw clips must be uint8 [B,T,H,W,3], got {x.dtype} {tuple(x.shape)}")
    x = x.to(device, non_blocking=non_blocking)
    key = (x.device.type, x.device.index)
    stats = _STATS.get(key)
    if stats is None:
        stats = _STATS[key] = (
            torch.from_numpy(IMAGENET_MEAN).to(x.device),
            torch.from_numpy(IMAGENET_STD).to(x.device),
        )
    y = (x.float().div_(255.0) - stats[0]) / stats[1]
    return y.permute(0, 1, 4, 2, 3).contiguous()


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def _colour_jitter(clip: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness (x*b), contrast (about the frame's mean) and saturation (about its grey value), in one
    pass per frame. The three are linear, so together they are ``A*x + B*grey(x) + C``: one 3x4 colour
    matrix (``cv2.transform``, rounded and clipped to uint8) instead of several float passes over the clip.
    """
    import cv2

    a = saturation * brightness * contrast
    b = (1.0 - saturation) * brightness * contrast
    m = a * np.eye(3) + b * np.tile(_GRAY, (3, 1))
    out = np.empty_like(clip)
    for t, frame in enumerate(clip):
        c = (1.0 - contrast) * brightness * float(frame.mean())  # the frame mean, scaled by brightness
        cv2.transform(np.ascontiguousarray(frame), np.hstack([m, np.full((3, 1), c)]), dst=out[t])
    return out


def _augment(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Deepfake-relevant augmentation, one parameter draw per clip, applied to every frame alike."""
    import cv2

    t, h, w, _ = clip.shape
    out = np.array(clip, dtype=np.uint8, copy=True)
    if rng.random() < 0.5:  # horizontal flip
        out = out[:, :, ::-1]
    if rng.random() < 0.5:  # small affine: rotation, scale, shift (face crops are already aligned-ish)
        angle = rng.uniform(-10, 10)
        scale = rng.uniform(0.92, 1.08)
        tx, ty = rng.uniform(-0.05, 0.05, size=2) * (w, h)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        m[:, 2] += (tx, ty)
        out = np.stack(
            [
                cv2.warpAffine(
                    np.ascontiguousarray(f),
                    m,
                    (w, h),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REFLECT101,
                )
                for f in out
            ]
        )
    if rng.random() < 0.8:  # colour jitter: brightness, contrast, saturation
        out = _colour_jitter(out, rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2))
    if rng.random() < 0.25:  # Gaussian blur (defocus, low-quality uploads)
        sigma = rng.uniform(0.3, 1.5)
        out = np.stack([cv2.GaussianBlur(np.ascontiguousarray(f), (0, 0), sigma) for f in out])
    if rng.random() < 0.5:  # JPEG re-encoding at a random quality (compression hides blending artefacts)
        quality = int(rng.integers(40, 96))
        frames = []
        for f in out:
            ok, buf = cv2.imencode(
                ".jpg", np.ascontiguousarray(f[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
            frames.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else f)
        out = np.stack(frames)
    return np.ascontiguousarray(out)


def train_transform(
    clip_uint8: np.ndarray, seq_len: int, rng: np.random.Generator, augment: str = "base"
) -> torch.Tensor:
    """Training transform: length fit, clip-consistent augmentation, ImageNet normalisation."""
    return normalize_clip(train_clip(clip_uint8, seq_len, rng, augment))


def train_clip(
    clip_uint8: np.ndarray, seq_len: int, rng: np.random.Generator, augment: str = "base"
) -> np.ndarray:
    """Training clip before normalisation: length fit and clip-consistent augmentation, uint8.

    ``augment`` names the sets (``TrainConfig.augment``): ``base`` (flip, affine, colour, blur, JPEG) and
    the optional ``h264``, ``noise``, ``cutout`` of ``data/augment.py``, drawn after the base set."""
    from ..config import parse_augment
    from .augment import apply_extra

    kinds = parse_augment(augment)
    out = fit_length(np.asarray(clip_uint8), seq_len)
    if "base" in kinds:
        out = _augment(out, rng)
    if len(kinds) > ("base" in kinds):
        out = np.ascontiguousarray(apply_extra(out, rng, kinds))
    return out


def order_fake(frames: np.ndarray, label: int, rng: np.random.Generator, p: float) -> tuple[np.ndarray, int]:
    """With probability ``p``, a REAL clip (or its features) turned into an order pseudo-fake labelled
    FAKE (``augment.shuffle_window``); anything else as it was. Draws nothing when ``p`` is 0, so runs
    without pseudo-fakes keep their augmentation stream."""
    from .augment import shuffle_window

    if p <= 0 or label != 0 or not rng.random() < p:
        return frames, label
    shuffled = shuffle_window(frames, rng)
    return (frames, label) if shuffled is None else (shuffled, 1)


def usable_rows(rows: Sequence[ManifestRow], include_no_face: bool = False) -> list[ManifestRow]:
    """Videos (their main face's row) with a clip file and a REAL/FAKE label (``no_face`` centre-crop
    clips only when asked). Splits are made of videos; :func:`video_tracks` adds their other faces."""
    ok_status = (OK, NO_FACE) if include_no_face else (OK,)
    return [r for r in rows if r.status in ok_status and r.clip and not r.track
            and normalize_label(r.label) is not None]


# --------------------------------------------------------------------------------------------------
# Face tracks (preprocess --max-faces): rows -> samples
# --------------------------------------------------------------------------------------------------

FAKE_TRACKS = ("largest", "all")


def tracks_by_video(rows: Sequence[ManifestRow]) -> dict[str, list[ManifestRow]]:
    """Each video's rows with a clip, main face first (one entry per path for single-face caches)."""
    out: dict[str, list[ManifestRow]] = {}
    for r in sorted(rows, key=lambda r: (r.path, r.track)):
        if r.clip:
            out.setdefault(r.path, []).append(r)
    return out


def video_tracks(videos: Sequence[ManifestRow], rows: Sequence[ManifestRow]) -> tuple[list, list[int]]:
    """Every face track of ``videos`` (from all of the cache's ``rows``) and, per track, the index of its
    video: evaluation scores each track and takes the maximum per video."""
    by_video = tracks_by_video(rows)
    out: list[ManifestRow] = []
    owner: list[int] = []
    for k, v in enumerate(videos):
        tracks = [t for t in by_video.get(v.path, []) if t.track] if v.tracks > 1 else []
        out.extend([v, *tracks])
        owner.extend([k] * (1 + len(tracks)))
    return out, owner


def _clip_distance(cache: Cache, a: ManifestRow, b: ManifestRow) -> float:
    """Mean absolute pixel difference of two clips over the frames both have (same sampled frames)."""
    x, y = cache.load_clip(a.clip), cache.load_clip(b.clip)
    n = min(len(x), len(y))
    if n == 0 or x.shape[1:] != y.shape[1:]:
        return float("inf")
    return float(np.abs(x[:n].astype(np.int16) - y[:n].astype(np.int16)).mean())


def swapped_track(cache: Cache, fake: list[ManifestRow], originals: list[ManifestRow]) -> ManifestRow:
    """The fake's track whose crops differ most from the original's at the same frames: an untouched
    face matches one of the original's tracks almost pixel for pixel, the swapped one matches none (how
    the DFDC winner labelled its training faces)."""
    gaps = [min((_clip_distance(cache, t, o) for o in originals), default=0.0) for t in fake]
    return fake[int(np.argmax(gaps))]


def training_rows(cache: Cache, videos: Sequence[ManifestRow], rows: Sequence[ManifestRow],
                  fake_tracks: str = "largest") -> list[ManifestRow]:
    """The training samples of ``videos``: every face of a REAL video is a negative; a FAKE contributes
    its swapped face when the cache holds its original (a REAL of the same group, as DFDC and FF++
    name it), else its largest face (``fake_tracks="largest"``) or every face (``"all"``)."""
    if fake_tracks not in FAKE_TRACKS:
        raise UserError(f"fake_tracks must be one of {', '.join(FAKE_TRACKS)}, not {fake_tracks!r}")
    by_video = tracks_by_video(rows)
    reals: dict[str, list[ManifestRow]] = {}
    for r in usable_rows(rows):
        if normalize_label(r.label) == "REAL":
            reals.setdefault(r.group or r.path, []).extend(by_video.get(r.path, [r]))
    out: list[ManifestRow] = []
    for v in videos:
        tracks = by_video.get(v.path, [v]) if v.tracks > 1 else [v]
        if len(tracks) == 1 or normalize_label(v.label) == "REAL":
            out.extend(tracks)
            continue
        originals = reals.get(v.group or "", [])
        if originals:
            out.append(swapped_track(cache, tracks, originals))
        else:
            out.extend(tracks if fake_tracks == "all" else tracks[:1])
    return out


class ClipDataset(Dataset):
    """Face clips from the cache: ``ds[i] -> (clip float [T,3,H,W], label int)`` (1 = FAKE).

    With ``return_index=True`` items are ``(clip, label, i)`` so a training loop can name the videos
    of a bad batch (``ds.paths[i]``). ``set_epoch`` changes the augmentation stream per epoch.
    With ``raw=True`` clips stay uint8 ``[T,H,W,3]`` (augmented, length-fitted) and the consumer
    normalises them on its device with ``clips_to_device``: a quarter of the bytes through pinned
    memory and the host-to-device copy, and less float work in the loader processes.
    """

    def __init__(
        self,
        cache: Cache | str | os.PathLike,
        rows: Sequence[ManifestRow],
        seq_len: int,
        train: bool,
        seed: int = 0,
        return_index: bool = False,
        raw: bool = False,
        augment: str = "base",
        order_fakes: float = 0.0,
    ) -> None:
        self.cache = Cache.of(cache)
        self.order_fakes = float(order_fakes)  # share of REAL training clips made order pseudo-fakes
        self.raw = bool(raw)
        self.augment = augment  # training augmentation sets (TrainConfig.augment); unused when not train
        self.rows = list(rows)
        self.seq_len = int(seq_len)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.return_index = return_index
        self.paths = [r.path for r in self.rows]
        self.labels = [label_to_index(normalize_label(r.label) or "") for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load(self, i: int) -> np.ndarray:
        row = self.rows[i]
        try:
            return self.cache.load_clip(row.clip)
        except (OSError, ValueError) as exc:
            raise UserError(
                f"cache clip for {row.path} ({row.clip}) is unreadable: {exc}. "
                "Re-run preprocess on this cache."
            ) from exc

    def __getitem__(self, key: int | tuple[int, int]):
        """``ds[i]``, or ``ds[(i, epoch)]`` from a sampler that carries the epoch (persistent workers)."""
        i, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        clip, label = self.load(i), self.labels[i]
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, int(i)])
            arr = train_clip(clip, self.seq_len, rng, self.augment)
            arr, label = order_fake(arr, label, rng, self.order_fakes)
        else:
            arr = eval_clip(clip, self.seq_len)
        if self.raw:
            x = uint8_tensor(arr)
        else:
            x = normalize_clip(arr)
        if self.return_index:
            return x, label, i
        return x, label


def _split_train_val(rows: list[ManifestRow], val_fraction: float, seed: int) -> tuple[list, list]:
    """Stratified by label, grouped (a fake and its original stay on one side), seeded."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    if len(rows) < 2:
        raise UserError(f"need at least 2 usable videos to make a validation split, got {len(rows)}")
    y = np.array([label_to_index(normalize_label(r.label) or "") for r in rows])
    groups = np.array([r.group or r.path for r in rows])
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise UserError(
            "all usable videos belong to one group (original + its fakes): cannot make a "
            "validation split without leaking; give the dataset's own split or more videos"
        )
    n_splits = max(2, round(1.0 / val_fraction))
    idx = np.arange(len(rows))
    val_idx: Optional[np.ndarray] = None
    min_class_groups = min(len(np.unique(groups[y == c])) for c in np.unique(y))
    if len(np.unique(y)) == 2 and min_class_groups >= n_splits:
        skf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, val_idx = next(iter(skf.split(idx, y, groups)))
    if val_idx is None or len(val_idx) == 0:
        log.warning(
            "few groups per class (%d): using a grouped random split (not stratified)", min_class_groups
        )
        gss = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        _, val_idx = next(iter(gss.split(idx, y, groups)))
    val_set = set(val_idx.tolist())
    train = [r for i, r in enumerate(rows) if i not in val_set]
    val = [r for i, r in enumerate(rows) if i in val_set]
    if not train:
        raise UserError("split left no training videos; add videos or lower --val-fraction")
    return train, val


def split_rows(
    rows: Sequence[ManifestRow], val_fraction: float = 0.2, seed: int = 0, include_no_face: bool = False
) -> dict[str, list[ManifestRow]]:
    """``{"train": [...], "val": [...], "test": [...]}`` over the usable rows.

    The dataset's own split column wins: ``test`` rows are only ever test; if the dataset names ``val``
    rows they are the validation set and unsplit rows train. Otherwise validation is carved out of the
    non-test rows, stratified by label and grouped so no identity straddles train and validation.
    """
    rows = usable_rows(rows, include_no_face=include_no_face)
    test = [r for r in rows if r.split == "test"]
    val = [r for r in rows if r.split == "val"]
    rest = [r for r in rows if r.split not in ("test", "val")]
    rest.sort(key=lambda r: r.path)  # manifest order must not change the split
    if val:
        train = rest
    else:
        train, val = _split_train_val(rest, val_fraction, seed) if rest else ([], [])
    return {"train": train, "val": val, "test": test}
