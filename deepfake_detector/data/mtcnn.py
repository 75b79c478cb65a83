"""MTCNN face detector with five landmarks (Zhang et al. 2016, "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks"), batched across frames, on CUDA when asked for.

Why: dlib's HOG detector misses rotated, dark, turned and small faces (issue 16), and alignment needs eye
positions. The cascade, as published:

1. **P-Net** (fully convolutional, 12x12 receptive field, stride 2) runs on an image pyramid (scales
   ``12/min_face * factor**k``); cells scoring >= ``thresholds[0]`` become boxes, non-maximum suppression
   (NMS, IoU 0.5) per scale, then 0.7 over all scales, box regression, boxes made square.
2. **R-Net** scores 24x24 crops of those boxes (>= ``thresholds[1]``), NMS 0.7, regression, square.
3. **O-Net** scores 48x48 crops (>= ``thresholds[2]``), regresses the box and the five landmarks (eyes,
   nose, mouth corners), and a last NMS by intersection over the smaller box (0.7) removes nested boxes.

All frames of a call go through each stage together (one pyramid per frame size, one crop batch per
stage), so a video's sampled frames cost a few network calls, not one cascade per frame.

Weights: the original authors' trained nets as re-published in the ``facenet-pytorch`` wheel (plain state
dicts ``facenet_pytorch/data/{pnet,rnet,onet}.pt``). That package pins torch < 2.3, so it is never installed:
the pinned wheel is downloaded and hash-checked by ``fetch`` (:data:`MTCNN_WEIGHTS`), the three files kept
under torch hub's checkpoint folder, read by ``checkpoint.load_torch_file`` (weights_only) and their keys
mapped onto the modules here (:func:`map_state_dict`). A folder holding the three files can be named
instead (``--mtcnn-weights DIR``) on machines without network.

torch is imported only when a detector is used: this module is importable by the decoding workers, whose
modules must stay torch-free (see ``data/pool.PRELOAD``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import multiprocessing
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import WeightsUnavailableError
from ..fetch import Artefact, fetch_artefact, find_artefact
from .faces import Box, FaceDetector, _resize

log = logging.getLogger(__name__)

WEIGHTS_PACKAGE = "facenet-pytorch==2.6.0"
MTCNN_WEIGHTS = Artefact(
    name="MTCNN weights",
    package=WEIGHTS_PACKAGE,
    files=(
        ("pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
        ("rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
        ("onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"),
    ),
    subdir="mtcnn-facenet-pytorch-2.6.0",
    archive_sha256="ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
)
NETS = ("pnet", "rnet", "onet")

# The published files' parameter names -> this module's (``body``: the convolutional trunk as one
# Sequential, ``fc``: the dense layer + PReLU, then one head per output).
_KEY_MAP = {
    "pnet": {"conv1": "body.0", "prelu1": "body.1", "conv2": "body.3", "prelu2": "body.4", "conv3": "body.5",
             "prelu3": "body.6", "conv4_1": "cls", "conv4_2": "box"},
    "rnet": {"conv1": "body.0", "prelu1": "body.1", "conv2": "body.3", "prelu2": "body.4", "conv3": "body.6",
             "prelu3": "body.7", "dense4": "fc.0", "prelu4": "fc.1", "dense5_1": "cls", "dense5_2": "box"},
    "onet": {"conv1": "body.0", "prelu1": "body.1", "conv2": "body.3", "prelu2": "body.4", "conv3": "body.6",
             "prelu3": "body.7", "conv4": "body.9", "prelu4": "body.10", "dense5": "fc.0", "prelu5": "fc.1",
             "dense6_1": "cls", "dense6_2": "box", "dense6_3": "landmarks"},
}
# The first dense layer of R-Net / O-Net was trained on features flattened as (width, height, channel)
# (the original Caffe models saw transposed images); its columns are reordered to PyTorch's (C, H, W)
# flatten on load, so the modules here are plain NCHW networks: (key, channels, side of the map).
_FLATTEN = {"rnet": ("dense4", 64, 3), "onet": ("dense5", 128, 3)}

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------------------------------
# The three networks
# --------------------------------------------------------------------------------------------------


def build_nets() -> dict[str, Any]:
    """Randomly initialised P-, R- and O-Nets (``nn.ModuleDict`` each, eval mode), keyed by name."""
    from torch import nn

    def conv(cin: int, cout: int, k: int) -> list:
        return [nn.Conv2d(cin, cout, k), nn.PReLU(cout)]

    def pool(k: int) -> nn.Module:
        return nn.MaxPool2d(k, 2, ceil_mode=True)

    pnet = nn.ModuleDict({
        "body": nn.Sequential(*conv(3, 10, 3), pool(2), *conv(10, 16, 3), *conv(16, 32, 3)),
        "cls": nn.Conv2d(32, 2, 1), "box": nn.Conv2d(32, 4, 1)})
    rnet = nn.ModuleDict({
        "body": nn.Sequential(*conv(3, 28, 3), pool(3), *conv(28, 48, 3), pool(3), *conv(48, 64, 2)),
        "fc": nn.Sequential(nn.Linear(576, 128), nn.PReLU(128)),
        "cls": nn.Linear(128, 2), "box": nn.Linear(128, 4)})
    onet = nn.ModuleDict({
        "body": nn.Sequential(*conv(3, 32, 3), pool(3), *conv(32, 64, 3), pool(3), *conv(64, 64, 3), pool(2),
                              *conv(64, 128, 2)),
        "fc": nn.Sequential(nn.Linear(1152, 256), nn.PReLU(256)),
        "cls": nn.Linear(256, 2), "box": nn.Linear(256, 4), "landmarks": nn.Linear(256, 10)})
    return {name: net.eval() for name, net in zip(NETS, (pnet, rnet, onet))}


def map_state_dict(kind: str, state: dict) -> dict:
    """A published ``{pnet,rnet,onet}.pt`` state dict renamed (and its first dense layer reordered) for
    :func:`build_nets`' modules. Unknown keys raise ``WeightsUnavailableError``."""
    names = _KEY_MAP[kind]
    flat = _FLATTEN.get(kind)
    out = {}
    for key, value in state.items():
        prefix, _, param = str(key).rpartition(".")
        if prefix not in names:
            raise WeightsUnavailableError(f"unexpected parameter {key!r} for MTCNN's {kind}")
        if flat and prefix == flat[0] and param == "weight" and getattr(value, "ndim", 0) == 2:
            _, ch, side = flat
            if value.shape[1] == ch * side * side:  # (out, W*H*C) -> (out, C*H*W)
                value = value.reshape(-1, side, side, ch).permute(0, 3, 2, 1).reshape(value.shape[0], -1)
        out[f"{names[prefix]}.{param}"] = value
    return out


def load_nets(folder: PathLike, device: Any = "cpu") -> dict[str, Any]:
    """The three nets with the weights in ``folder`` (``pnet.pt``, ``rnet.pt``, ``onet.pt``) on ``device``."""
    from ..checkpoint import load_torch_file

    nets = build_nets()
    for kind in NETS:
        path = Path(folder) / f"{kind}.pt"
        state = load_torch_file(path, what=f"MTCNN {kind} weights", error=WeightsUnavailableError)
        if not isinstance(state, dict):
            raise WeightsUnavailableError(f"{path}: not a state dict of MTCNN {kind} weights")
        try:
            nets[kind].load_state_dict(map_state_dict(kind, state))
        except (RuntimeError, WeightsUnavailableError) as exc:  # unknown or missing keys, wrong shapes
            detail = str(exc).strip().splitlines()[-1].strip()[:200]
            raise WeightsUnavailableError(f"{path}: not MTCNN {kind} weights ({detail})") from None
    import torch

    return {k: v.to(device, memory_format=torch.channels_last) for k, v in nets.items()}


def offline_hint() -> str:
    """What to do on a machine without access to the package index (one sentence, for error lines)."""
    files = ", ".join(MTCNN_WEIGHTS.file_names)
    return (f"on a machine with network run 'pip download --no-deps {WEIGHTS_PACKAGE}', copy "
            f"facenet_pytorch/data/{{{files}}} out of the wheel (a zip) into a folder and pass "
            "--mtcnn-weights FOLDER (or use --detector dlib)")


def resolve_weights(weights_dir: Optional[PathLike] = None, fetch: bool = True,
                    timeout: float = 300.0) -> Path:
    """The folder holding MTCNN's three weight files: ``weights_dir`` when given, else the hash-checked
    copy in torch hub's cache, fetched from the package index when absent (``fetch``).

    A named folder that lacks the files falls back to the hub cache with a warning (a folder recorded on
    another machine, e.g. in a checkpoint's settings); otherwise one-line ``WeightsUnavailableError``.
    """
    names = MTCNN_WEIGHTS.file_names
    if weights_dir:
        folder = Path(weights_dir)
        missing = [n for n in names if not (folder / n).is_file()]
        if not missing:
            return folder
        cached = find_artefact(MTCNN_WEIGHTS)
        if cached is not None:
            log.warning("MTCNN weights folder %s lacks %s; using the verified copy in %s",
                        folder, ", ".join(missing), cached)
            return cached
        raise WeightsUnavailableError(f"the MTCNN weights folder {folder} has no {', '.join(missing)} "
                                      f"(it needs {', '.join(names)}); {offline_hint()}")
    cached = find_artefact(MTCNN_WEIGHTS)
    if cached is not None:
        return cached
    if not fetch:
        raise WeightsUnavailableError(f"MTCNN weights are not in torch hub's cache; {offline_hint()}")
    try:
        return fetch_artefact(MTCNN_WEIGHTS, timeout=timeout)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(
            f"MTCNN weights could not be fetched ({exc}); {offline_hint()}") from None


# --------------------------------------------------------------------------------------------------
# The cascade (torch tensors; images [B, 3, H, W] float 0..255 on the nets' device)
# --------------------------------------------------------------------------------------------------


def pyramid_scales(h: int, w: int, min_face: float, factor: float) -> list[float]:
    """Scales at which P-Net's 12-px window covers faces from ``min_face`` px up to the whole frame."""
    scales, s = [], 12.0 / float(min_face)
    side = min(h, w) * s
    while side >= 12:
        scales.append(s)
        s *= factor
        side *= factor
    return scales


def _normalise(x: Any) -> Any:
    return (x - 127.5) * 0.0078125


def _square(boxes: Any) -> Any:
    """Boxes [k, 4] grown to squares of side max(w, h) around their centres."""
    import torch

    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def _regress(boxes: Any, reg: Any) -> Any:
    """Apply the nets' box regression (offsets relative to the box's width / height)."""
    import torch

    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return boxes + reg * torch.stack([w, h, w, h], 1)


def vision_ops() -> Any:
    """torchvision's compiled ``nms`` and ``roi_align`` (``torch.ops.torchvision``), loaded without importing
    the ``torchvision`` package where possible.

    Why: ``import torchvision.ops`` pulls in about a thousand modules (torch._dynamo, sympy) and costs
    ~1.5 s in every preprocess worker, while the two kernels live in one shared library next to it. When
    that library cannot be found (an unusual build), the package is imported after all, which loads it.
    """
    import torch

    if not hasattr(torch.ops.torchvision, "nms"):
        spec = importlib.util.find_spec("torchvision")
        folder = Path(spec.origin).parent if spec is not None and spec.origin else None
        for lib in sorted(folder.glob("_C*")) if folder is not None else []:
            if lib.suffix in (".so", ".pyd", ".dylib"):
                with contextlib.suppress(OSError):  # a library of another build: the import below decides
                    torch.ops.load_library(str(lib))
        if not hasattr(torch.ops.torchvision, "nms"):
            import torchvision.ops  # noqa: F401  (registers the kernels, or raises a clear error)
    return torch.ops.torchvision


def _crops(images: Any, boxes: Any, idx: Any, size: int) -> Any:
    """Normalised ``size`` x ``size`` crops of ``boxes`` (black outside the frame), area-like sampling."""
    import torch

    rois = torch.cat([idx[:, None].to(boxes.dtype), boxes], 1)
    # torchvision.ops.roi_align(images, rois, (size, size), spatial_scale=1, sampling_ratio=2, aligned=True)
    patches = vision_ops().roi_align(images, rois, 1.0, size, size, 2, True)
    return _normalise(patches)


def _nms_per_image(boxes: Any, scores: Any, idx: Any, thr: float) -> Any:
    """IoU non-maximum suppression within each image of the batch; indices into ``boxes``, best first
    per image.

    One call per image rather than ``torchvision.ops.batched_nms``' offset trick: that trick moves each
    image's boxes by a large offset, which changes the rounding of IoUs that sit exactly on the threshold
    (P-Net's grid makes many: cells two strides apart overlap by exactly 0.5), so a frame's faces would
    depend on which other frames shared its batch.
    """
    import torch

    if boxes.numel() == 0:
        return idx.new_zeros((0,))
    nms = vision_ops().nms
    keep = []
    for i in torch.unique(idx):
        sel = torch.nonzero(idx == i, as_tuple=True)[0]
        keep.append(sel[nms(boxes[sel], scores[sel], float(thr))])
    return torch.cat(keep)


def _stage1(pnet: Any, images: Any, min_face: float, factor: float, thr: float) -> tuple[Any, Any, Any]:
    """P-Net over the pyramid of every image: (boxes [k, 4], scores [k], image index [k])."""
    import torch
    import torch.nn.functional as F

    _, _, h, w = images.shape
    level = images
    found: list[tuple[Any, Any, Any, Any]] = []
    for k, s in enumerate(pyramid_scales(h, w, min_face, factor)):
        hs, ws = int(math.ceil(h * s)), int(math.ceil(w * s))
        # each level from the previous one (anti-aliased): the pyramid costs about one full-size resize
        level = F.interpolate(level, size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)
        if k == 0:  # normalised after the first (usually much smaller) level: resizing is linear
            level = _normalise(level)
        feats = pnet["body"](level.contiguous(memory_format=torch.channels_last))  # ~15 % faster on CPUs
        prob = torch.softmax(pnet["cls"](feats), 1)[:, 1]
        b, yy, xx = torch.nonzero(prob >= thr, as_tuple=True)
        if b.numel() == 0:
            continue
        sx, sy = ws / w, hs / h  # the resized image's real scale per axis
        x, y = xx.to(prob.dtype), yy.to(prob.dtype)
        boxes = torch.stack([2 * x / sx, 2 * y / sy, (2 * x + 12) / sx, (2 * y + 12) / sy], 1)
        score = prob[b, yy, xx]
        reg = pnet["box"](feats)[b, :, yy, xx]
        keep = _nms_per_image(boxes, score, b, 0.5)
        found.append((boxes[keep], score[keep], b[keep], reg[keep]))
    if not found:
        empty = images.new_zeros((0, 4))
        return empty, images.new_zeros((0,)), torch.zeros(0, dtype=torch.long, device=images.device)
    boxes, score, b, reg = (torch.cat(parts) for parts in zip(*found))
    keep = _nms_per_image(boxes, score, b, 0.7)
    return _square(_regress(boxes[keep], reg[keep])), score[keep], b[keep]


def _stage2(rnet: Any, images: Any, boxes: Any, b: Any, thr: float) -> tuple[Any, Any, Any]:
    """R-Net on 24x24 crops: the candidates that stay, regressed and squared."""
    import torch

    if b.numel() == 0:
        return boxes, boxes.new_zeros((0,)), b
    h = rnet["fc"](rnet["body"](_crops(images, boxes, b, 24)).flatten(1))
    prob = torch.softmax(rnet["cls"](h), 1)[:, 1]
    ok = prob >= thr
    boxes, prob, b, reg = boxes[ok], prob[ok], b[ok], rnet["box"](h)[ok]
    keep = _nms_per_image(boxes, prob, b, 0.7)
    return _square(_regress(boxes[keep], reg[keep])), prob[keep], b[keep]


def _stage3(onet: Any, images: Any, boxes: Any, b: Any, thr: float) -> tuple[Any, Any, Any, Any]:
    """O-Net on 48x48 crops: final boxes, scores, image index and landmarks [k, 5, 2] (x, y)."""
    import torch

    if b.numel() == 0:
        return boxes, boxes.new_zeros((0,)), b, boxes.new_zeros((0, 5, 2))
    h = onet["fc"](onet["body"](_crops(images, boxes, b, 48)).flatten(1))
    prob = torch.softmax(onet["cls"](h), 1)[:, 1]
    ok = prob >= thr
    boxes, prob, b, h = boxes[ok], prob[ok], b[ok], h[ok]
    pts = onet["landmarks"](h)  # x of the 5 points, then y, relative to the input box
    w, hh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    xs = boxes[:, :1] + w[:, None] * pts[:, :5]
    ys = boxes[:, 1:2] + hh[:, None] * pts[:, 5:]
    return _regress(boxes, onet["box"](h)), prob, b, torch.stack([xs, ys], 2)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """Greedy NMS by intersection over the smaller box (removes a box nested in a better one)."""
    # best first; near-equal scores (identical crops, e.g. all outside the frame) ordered by position, so
    # the result does not depend on float noise from which other frames shared the batch
    order = list(np.lexsort((np.round(boxes[:, 1], 2), np.round(boxes[:, 0], 2), -np.round(scores, 6))))
    keep: list[int] = []
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(int(i))
        rest = []
        for j in order:
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, 0.0) * max(ih, 0.0)
            if inter / max(min(area[i], area[j]), 1e-6) <= thr:
                rest.append(j)
        order = rest
    return keep


def run_cascade(nets: dict[str, Any], images: Any, min_face: float = 20.0, factor: float = 0.709,
                thresholds: Sequence[float] = (0.6, 0.7, 0.7)) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in a batch of same-size images ``[B, 3, H, W]`` (float 0..255, on the nets' device).

    Per image: ``(boxes [k, 5] x0, y0, x1, y1, score; landmarks [k, 5, 2])`` as float32 NumPy, best first.
    """
    import torch

    with torch.inference_mode():
        boxes, _, b = _stage1(nets["pnet"], images, min_face, factor, thresholds[0])
        boxes, _, b = _stage2(nets["rnet"], images, boxes, b, thresholds[1])
        boxes, score, b, marks = _stage3(nets["onet"], images, boxes, b, thresholds[2])
        boxes, score, b, marks = (t.float().cpu().numpy() for t in (boxes, score, b, marks))
    out = []
    for i in range(images.shape[0]):
        sel = np.flatnonzero(b == i)
        keep = sel[_nms_min(boxes[sel], score[sel], 0.7)] if len(sel) else sel
        out.append((np.concatenate([boxes[keep], score[keep, None]], 1).astype(np.float32),
                    marks[keep].astype(np.float32)))
    return out


# --------------------------------------------------------------------------------------------------
# The detector backend
# --------------------------------------------------------------------------------------------------

EXPOSURE_TARGET = 230.0  # where an under-exposed frame's brightest 1 % of pixels are lifted to (of 255)
EXPOSURE_MAX_GAIN = 4.0  # at most this brightening: beyond it, noise is all that gets amplified


def expose(frame: np.ndarray) -> np.ndarray:
    """The frame brightened so its 99th-percentile luma reaches :data:`EXPOSURE_TARGET` (at most x4),
    or the frame itself when it is not under-exposed.

    Why: the published nets were trained on well-exposed photos and lose faces in dark footage (21 of 24
    frames at 25 % brightness, 7 of 24 at 15 %); a gain restores them (24/24) without touching normal
    frames. Only the detector sees the brightened frame; crops come from the original pixels.
    """
    rgb = frame[..., :3]
    luma = rgb[::4, ::4].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    gain = min(EXPOSURE_MAX_GAIN, EXPOSURE_TARGET / max(float(np.percentile(luma, 99)), 1.0))
    if gain <= 1.0:
        return frame
    return np.clip(rgb.astype(np.float32) * gain, 0, 255).astype(np.uint8)


FOCUS_RATIO = 0.5  # after the probe frames, search only faces at least this share of the smallest one found
PROBES = 3  # frames per call searched with the full pyramid first


def probe_indices(n: int, k: int = PROBES) -> list[int]:
    """``k`` frame indices spread over ``n`` frames (first, last and between): where the full search runs."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(j * (n - 1) / (k - 1))) for j in range(k)})


_NETS: dict[tuple, dict] = {}  # (weights folder, device) -> nets, once per process
_NETS_LOCK = threading.Lock()


class MTCNNDetector(FaceDetector):
    """MTCNN faces with five landmarks each (``Box.landmarks``), many frames per network call.

    ``device``: ``auto`` (CUDA when there is one), ``cpu`` or ``cuda[:N]``, read by ``device.resolve_device``
    when the nets load (``PreprocessConfig.detector_device``: predict and serve pass the device they were
    given, so ``--device cpu`` keeps MTCNN off the GPU). ``weights_dir``: a folder with
    ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (default: torch hub's cache, fetched once). ``nets``: ready
    networks (tests). Frames are down-scaled to ``detect_max_side`` first, like the other backends; faces
    smaller than ``min_face`` pixels at that scale are not searched for.
    """

    name = "mtcnn"

    def __init__(self, weights_dir: Optional[PathLike] = None, device: str = "auto",
                 detect_max_side: int = 640, min_face: float = 20.0, factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7), max_batch_pixels: int = 16 << 20,
                 nets: Optional[dict[str, Any]] = None, **_: object) -> None:
        self.weights_dir = str(weights_dir) if weights_dir else None
        self.device = str(device or "auto")
        self.detect_max_side = int(detect_max_side)
        self.min_face = float(min_face)
        self.factor = float(factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.max_batch_pixels = int(max_batch_pixels)
        self.nets = nets
        self._native = threading.local()
        if not 0.0 < self.factor < 1.0 or self.min_face < 12 or len(self.thresholds) != 3:
            raise ValueError("mtcnn: factor in (0, 1), min_face >= 12 px and three thresholds required")

    def _nets(self) -> dict[str, Any]:
        """The networks on their device, loaded once per process and setting (shared by threads)."""
        if self.nets is not None:
            return self.nets
        from ..device import resolve_device

        dev = resolve_device(self.device)
        key = (self.weights_dir, str(dev))
        with _NETS_LOCK:
            nets = _NETS.get(key)
            if nets is None:
                if dev.type == "cpu" and multiprocessing.parent_process() is not None:
                    import torch  # a pool worker: the pool is the parallelism, as for cv2 and the decoder

                    torch.set_num_threads(1)
                nets = _NETS[key] = load_nets(resolve_weights(self.weights_dir), dev)
        return nets

    def detect(self, rgb: np.ndarray, hint: Optional[float] = None) -> list[Box]:
        return self.detect_batch([rgb])[0]

    def detect_batch(self, frames: Sequence[np.ndarray]) -> list[list[Box]]:
        """Faces in every frame (same-size frames share each network call); ``Box.landmarks`` set.

        Coarse-to-fine over a video's frames, as the dlib backend does with its size hint: a few probe
        frames spread over the call get the full pyramid (faces down to ``min_face``); when each of them
        holds a face, the other frames search only for faces at least :data:`FOCUS_RATIO` of the smallest
        face seen (P-Net on the big pyramid levels is most of the cost), and any frame that finds nothing
        that way is searched again in full.
        """
        scales = [min(1.0, self.detect_max_side / float(max(f.shape[:2]))) for f in frames]
        small = [expose(f if s == 1.0 else _resize(f, s)) for f, s in zip(frames, scales)]
        probes = probe_indices(len(frames))
        found = self._cascade(small, probes, self.min_face)
        rest = [i for i in range(len(frames)) if i not in found]
        focus = self.min_face
        if all(found[i] for i in probes):
            smallest = min(float(row[2] - row[0]) for i in probes for row, _ in found[i])
            focus = max(self.min_face, FOCUS_RATIO * smallest)
        if rest:
            found.update(self._cascade(small, rest, focus))
            missed = [i for i in rest if not found[i]]
            if missed and focus > self.min_face:
                found.update(self._cascade(small, missed, self.min_face))
        out: list[list[Box]] = []
        for i in range(len(frames)):
            inv = 1.0 / scales[i]
            out.append([Box(float(x0 * inv), float(y0 * inv), float(x1 * inv), float(y1 * inv), float(sc),
                            landmarks=lm * np.float32(inv)) for (x0, y0, x1, y1, sc), lm in found[i]])
        return out

    def _cascade(self, small: Sequence[np.ndarray], idx: Sequence[int], min_face: float) -> dict[int, list]:
        """``{frame index: [(box row [5], landmarks [5, 2]), ...]}`` for ``idx``, in the small frames' pixels;
        same-size frames go through the nets together, in chunks of at most ``max_batch_pixels``."""
        import torch

        nets = self._nets()
        device = next(nets["pnet"].parameters()).device
        groups: dict[tuple, list[int]] = {}
        for i in idx:
            groups.setdefault(small[i].shape[:2], []).append(i)
        out: dict[int, list] = {}
        for (h, w), members in groups.items():
            per = max(1, self.max_batch_pixels // max(1, h * w))
            for k in range(0, len(members), per):
                chunk = members[k:k + per]
                arr = np.stack([np.ascontiguousarray(small[i][..., :3]) for i in chunk])
                # contiguous NCHW once: the crop kernel would otherwise copy the whole batch per stage
                images = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).contiguous().float()
                for i, (boxes, marks) in zip(chunk, run_cascade(nets, images, min_face, self.factor,
                                                                self.thresholds)):
                    out[i] = list(zip(boxes, marks))
        return out


def mtcnn_available(weights_dir: Optional[PathLike] = None, fetch: bool = True) -> Optional[str]:
    """None when MTCNN can run here (torch + torchvision, weights found or fetched now), else why."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:  # pragma: no cover - both are dependencies
        return f"MTCNN needs torch and torchvision ({exc})"
    try:
        resolve_weights(weights_dir, fetch=fetch)
    except WeightsUnavailableError as exc:
        return str(exc)
    return None


__all__ = ["MTCNN_WEIGHTS", "MTCNNDetector", "WEIGHTS_PACKAGE", "build_nets", "expose", "load_nets",
           "map_state_dict", "mtcnn_available", "offline_hint", "pyramid_scales", "resolve_weights",
           "run_cascade"]
