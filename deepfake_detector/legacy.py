"""Checkpoints of the known public reference implementation ("legacy" checkpoints).

Many people trained a ResNeXt-50 + LSTM with the widely copied reference code and have its
``torch.save(model.state_dict())`` files. Their layout and semantics differ from ours:

* keys ``model.*`` (the ResNeXt trunk as ``nn.Sequential(*children[:-2])``), ``lstm.weight_ih_l0``,
  ``lstm.weight_hh_l0`` (the LSTM was built as ``nn.LSTM(latent, hidden, layers, bidirectional)``
  whose 4th positional argument is ``bias``, so: no biases, never bidirectional) and ``linear1.*``;
* class index 1 = REAL (P(FAKE) = softmax[:, 0]); ours is 1 = FAKE;
* the LSTM has no ``batch_first``: with ``x`` of shape ``[B, T, F]`` it runs over dim 0. At inference
  the reference predicted one video at a time (B = 1), so every frame was a separate length-1
  sequence and the "LSTM" acted as a per-frame non-linearity before the mean over frames;
* frames were OpenCV's BGR arrays fed through ``ToPILImage`` as if RGB, then ImageNet-normalised,
  112x112 tight face crops, the FIRST N frames of the video (N = the sequence length trained with).

Two ways to run such a file:

``exact``  :class:`LegacyExactModel` runs the reference forward verbatim (per video, batch 1), so it
           reproduces the reference's numbers for the same input tensor.
``fixed``  :func:`map_legacy_state_dict` maps the weights onto our model (``backbone`` <- ``model``,
           LSTM weights with zero biases, fc rows swapped so index 1 = FAKE). Our LSTM then really
           runs over time, which the weights were never trained for: the numbers DIFFER from the
           reference. Useful as a starting point for fine-tuning, not to reproduce old results.

Loading is always ``checkpoint.load_torch_file`` (``weights_only=True``); a file that needs arbitrary
unpickling (for example a whole model object saved with ``torch.save(model)``) is refused with
:class:`~deepfake_detector.errors.UnsafeFileError`.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import UserError

log = logging.getLogger(__name__)

LEGACY_MODES = ("fixed", "exact")
LEGACY_PREPROCESS = ("reference", "ours")
LEGACY_DEFAULT_FRAMES = 20
LEGACY_SIZE = 112
# The reference fed OpenCV (BGR) frames to ToPILImage as if they were RGB, in training and predict.
LEGACY_CHANNEL_ORDER = "bgr"
REFERENCE_TRUNK = "resnext50_32x4d"


# --------------------------------------------------------------------------------------------------
# Layout detection
# --------------------------------------------------------------------------------------------------


def unwrap_state_dict(obj: Any) -> Optional[dict]:
    """The tensor dict inside ``obj`` (plain, ``{"state_dict": ...}``, ``{"model_state_dict": ...}``),
    with a DataParallel ``module.`` prefix removed; None when ``obj`` holds no state dict."""
    import torch

    if not isinstance(obj, dict):
        return None
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(k, str) for k in obj):
        return None
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = OrderedDict((k[len("module."):], v) for k, v in obj.items())
    return obj


def is_legacy_state_dict(obj: Any) -> bool:
    """True when ``obj`` has the reference implementation's key layout."""
    sd = unwrap_state_dict(obj)
    if sd is None:
        return False
    return (
        "linear1.weight" in sd
        and "lstm.weight_ih_l0" in sd
        and "lstm.weight_hh_l0" in sd
        and any(k.startswith("model.") for k in sd)
    )


@dataclass
class LegacySpec:
    """Shape of a legacy network, read from its state dict."""

    trunk: str  # our backbone name whose key layout matches ``model.*`` (resnext50_32x4d normally)
    latent_dim: int
    hidden_dim: int
    num_layers: int
    has_bias: bool  # the reference has none; tolerated if present


def _trunk_state(sd: dict) -> OrderedDict:
    return OrderedDict((k[len("model."):], v) for k, v in sd.items() if k.startswith("model."))


def _reference_trunk(name: str):
    """The trunk as the reference built it: ``Sequential(*children[:-2])`` of a torchvision model."""
    import torch.nn as nn
    import torchvision

    if name != REFERENCE_TRUNK:
        raise ValueError(name)
    net = torchvision.models.resnext50_32x4d(weights=None)
    return nn.Sequential(*list(net.children())[:-2])


def _our_backbone(name: str):
    from .config import ModelConfig
    from .models import build_backbone

    cfg = ModelConfig(backbone=name, pretrained=False, weights_file=None)
    return build_backbone(cfg, load_weights=False)[0]


def _layout_matches(trunk_sd: dict, module) -> bool:
    ref = module.state_dict()
    if len(ref) != len(trunk_sd):
        return False
    return all(tuple(a.shape) == tuple(b.shape) for a, b in zip(ref.values(), trunk_sd.values()))


def _candidate_trunks() -> list[str]:
    names = [REFERENCE_TRUNK]
    try:
        from . import models

        extra = getattr(models, "BACKBONES", None) or getattr(models, "available_backbones", None)
        if callable(extra):
            extra = extra()
        for n in extra or ("mobilenet_v2", "tiny"):
            if n not in names:
                names.append(n)
    except ImportError:
        pass
    return names


def inspect_legacy(obj: Any) -> LegacySpec:
    """Read the network shape of a legacy state dict; raises ``UserError`` when it is not one."""
    sd = unwrap_state_dict(obj)
    if sd is None or not is_legacy_state_dict(sd):
        raise UserError("not a reference-implementation state dict (needs model.*, lstm.*, linear1.* keys)")
    w_ih = sd["lstm.weight_ih_l0"]
    w_hh = sd["lstm.weight_hh_l0"]
    hidden = int(w_hh.shape[1])
    latent = int(w_ih.shape[1])
    layers = 0
    while f"lstm.weight_ih_l{layers}" in sd:
        layers += 1
    if any("_reverse" in k for k in sd):
        raise UserError("bidirectional legacy LSTMs are not supported (the reference never built one)")
    lin = sd["linear1.weight"]
    if tuple(lin.shape) != (2, hidden):
        raise UserError(f"legacy linear1.weight has shape {tuple(lin.shape)}, expected (2, {hidden})")
    trunk_sd = _trunk_state(sd)
    trunk = None
    import torch

    for name in _candidate_trunks():
        try:
            with torch.device("meta"):  # shapes only: no memory, no initialisation cost
                module = _reference_trunk(name) if name == REFERENCE_TRUNK else _our_backbone(name)
        except Exception as exc:  # a backbone we cannot build here: try the next one
            log.debug("cannot build trunk %s: %s", name, exc)
            continue
        if _layout_matches(trunk_sd, module):
            trunk = name
            break
    if trunk is None:
        raise UserError(
            f"legacy checkpoint: the model.* trunk ({len(trunk_sd)} tensors) matches no known backbone "
            f"(expected torchvision {REFERENCE_TRUNK} without avgpool/fc)"
        )
    return LegacySpec(trunk=trunk, latent_dim=latent, hidden_dim=hidden, num_layers=layers,
                      has_bias="lstm.bias_ih_l0" in sd)


def legacy_frames_from_name(path: str | os.PathLike) -> Optional[int]:
    """Sequence length encoded in reference file names such as ``model_97_acc_100_frames_FF_data.pt``."""
    m = re.search(r"(\d+)[_-]?frames", Path(path).name, flags=re.IGNORECASE)
    if m:
        n = int(m.group(1))
        if 1 <= n <= 1000:
            return n
    return None


def legacy_preprocess_config(frames: int):
    """Our closest equivalent of the reference's preprocessing: 112 px dlib face crops, no margin.

    The reference's dlib-based ``face_recognition`` crop was tight (no margin) and not square; ours
    is square around the same box. Frame sampling follows our pipeline (see docs/legacy.md).
    """
    from .config import PreprocessConfig

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


_DLIB: dict = {}


def _dlib_hog():
    det = _DLIB.get("hog")
    if det is None:
        import dlib

        det = _DLIB["hog"] = dlib.get_frontal_face_detector()
    return det


def reference_extract(path: str | os.PathLike, cfg: ReferencePreprocess) -> Any:
    """A ``ClipResult`` made the way the reference's predict made its input (never raises).

    The clip is returned in RGB order like every ClipResult (the Detector flips it back to the BGR
    the reference fed its network), with ``T <= cfg.frames`` (no padding: the reference ran the
    frames it had).
    """
    import time

    import numpy as np

    from .data import cache
    from .data.preprocess import ClipResult

    t0 = time.perf_counter()
    path = os.fspath(path)
    res = ClipResult(clip=None, status=cache.ERROR)
    try:
        if not os.path.lexists(path):
            res.status, res.error = cache.MISSING, "file does not exist"
            return res
        if not os.path.isfile(path):
            res.status, res.error = cache.UNREADABLE, "not a regular file (folder, broken link or link loop)"
            return res
        if not os.access(path, os.R_OK):
            res.status, res.error = cache.UNREADABLE, "permission denied"
            return res
        import cv2
        import torchvision.transforms.functional as TF

        frames = []
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                res.status, res.error = cache.UNREADABLE, "cannot open the video (OpenCV)"
                return res
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            res.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            res.source_frames = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
            res.width, res.height = w, h
            if w * h > cfg.max_pixels:
                res.status, res.error = cache.REFUSED, f"frame size {w}x{h} exceeds the pixel limit"
                return res
            deadline = t0 + cfg.timeout_s if cfg.timeout_s else None
            while len(frames) < cfg.frames:
                ok, img = cap.read()
                if not ok or img is None:
                    break
                if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] * img.shape[1] > cfg.max_pixels:
                    res.status, res.error = cache.REFUSED, f"unexpected frame shape {img.shape}"
                    return res
                frames.append(img)
                if deadline is not None and time.perf_counter() > deadline:
                    res.status, res.error = cache.ERROR, f"timed out after {cfg.timeout_s:.0f} s"
                    return res
        finally:
            cap.release()
        if not frames:
            res.status, res.error = cache.UNREADABLE, "no decodable video frames"
            return res
        det = _dlib_hog()
        crops, boxes, found = [], [], 0
        for img in frames:
            fh, fw = img.shape[:2]
            rects = det(img, cfg.upsample)  # BGR in, as face_recognition received it
            crop = img
            box = (0.0, 0.0, float(fw), float(fh))
            if len(rects):
                r = rects[0]
                # face_recognition's _rect_to_css + _trim_css_to_bounds
                top, right = max(r.top(), 0), min(r.right(), fw)
                bottom, left = min(r.bottom(), fh), max(r.left(), 0)
                if bottom > top and right > left:
                    crop = img[top:bottom, left:right, :]
                    box = (float(left), float(top), float(right), float(bottom))
                    found += 1
            resized = TF.resize(TF.to_pil_image(np.ascontiguousarray(crop)), [cfg.size, cfg.size])
            crops.append(np.asarray(resized, dtype=np.uint8))
            boxes.append(box)
        res.frames = len(crops)
        res.face_ratio = found / len(crops)
        res.indices = list(range(len(crops)))
        res.boxes = np.asarray(boxes, dtype=np.float32)
        clip = np.ascontiguousarray(np.stack(crops)[..., ::-1])  # to RGB; the Detector flips back
        if found:
            res.status, res.clip = cache.OK, clip
        else:
            res.status = cache.NO_FACE
            res.error = f"no face found in the first {res.frames} frames"
            if cfg.no_face == "center":
                res.clip = clip
                res.error += " (full frames used, as the reference did)"
            else:
                res.frames = 0
    except MemoryError:
        res.status, res.error, res.clip = cache.ERROR, "MemoryError: out of memory reading the video", None
    except Exception as exc:  # a bug or an unexpected library failure: reported per video
        log.debug("reference_extract(%s) failed", path, exc_info=True)
        res.status, res.error, res.clip = cache.ERROR, f"{type(exc).__name__}: {exc}", None
    finally:
        res.seconds = time.perf_counter() - t0
    return res


# --------------------------------------------------------------------------------------------------
# Exact reproduction
# --------------------------------------------------------------------------------------------------


def reference_model_class():
    """The reference ``Model`` class, verbatim except that the trunk can be injected (tests).

    Returned by a function so this module does not import torch at import time.
    """
    global _REFERENCE_CLS
    if _REFERENCE_CLS is not None:
        return _REFERENCE_CLS
    import torch
    import torch.nn as nn

    class ReferenceModel(nn.Module):
        def __init__(self, num_classes: int = 2, latent_dim: int = 2048, lstm_layers: int = 1,
                     hidden_dim: int = 2048, bidirectional: bool = False, trunk: Optional[nn.Module] = None,
                     lstm_bias: bool = False) -> None:
            super().__init__()
            self.model = trunk if trunk is not None else _reference_trunk(REFERENCE_TRUNK)
            # the reference passed ``bidirectional`` as the 4th positional argument, which is ``bias``
            self.lstm = nn.LSTM(latent_dim, hidden_dim, lstm_layers, lstm_bias)
            self.relu = nn.LeakyReLU()
            self.dp = nn.Dropout(0.4)
            self.linear1 = nn.Linear(hidden_dim, num_classes)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.latent_dim = latent_dim

        def forward(self, x):
            batch_size, seq_length, c, h, w = x.shape
            x = x.view(batch_size * seq_length, c, h, w)
            fmap = self.model(x)
            x = self.avgpool(fmap)
            x = x.view(batch_size, seq_length, self.latent_dim)
            x_lstm, _ = self.lstm(x, None)
            return fmap, self.dp(self.linear1(torch.mean(x_lstm, dim=1)))

    _REFERENCE_CLS = ReferenceModel
    return ReferenceModel


_REFERENCE_CLS = None


def build_reference_model(spec: LegacySpec):
    """An untrained reference network with ``spec``'s shape (trunk built without downloading)."""
    trunk = _reference_trunk(spec.trunk) if spec.trunk == REFERENCE_TRUNK else _our_backbone(spec.trunk)
    cls = reference_model_class()
    return cls(2, spec.latent_dim, spec.num_layers, spec.hidden_dim, False, trunk=trunk,
               lstm_bias=spec.has_bias)


def _make_exact_class():
    import torch
    import torch.nn as nn

    class LegacyExactModel(nn.Module):
        """Runs the reference forward verbatim, one video at a time, with OUR output convention.

        ``forward`` returns logits ordered ``[REAL, FAKE]`` (the reference's two outputs swapped),
        so softmax[:, 1] is bit-for-bit the reference's softmax[:, 0]. Exposes ``backbone``,
        ``pool``, ``frame_features`` and ``head`` like our models so explanations work the same.
        """

        def __init__(self, reference: nn.Module) -> None:
            super().__init__()
            self.reference = reference

        @property
        def backbone(self) -> nn.Module:
            return self.reference.model

        @property
        def pool(self) -> nn.Module:
            return self.reference.avgpool

        def reference_forward(self, x: torch.Tensor):
            """The untouched reference output ``(fmap, logits[FAKE, REAL])``."""
            return self.reference(x)

        def frame_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.reference.avgpool(self.reference.model(x)).flatten(1)

        def head(self, feats: torch.Tensor) -> torch.Tensor:
            ref = self.reference
            outs = []
            for b in range(feats.shape[0]):  # batch 1 per video, as the reference's predict ran
                x_lstm, _ = ref.lstm(feats[b:b + 1], None)
                outs.append(ref.dp(ref.linear1(torch.mean(x_lstm, dim=1))))
            return torch.cat(outs, 0)[:, [1, 0]]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outs = [self.reference(x[b:b + 1])[1] for b in range(x.shape[0])]
            return torch.cat(outs, 0)[:, [1, 0]]

    return LegacyExactModel


_EXACT_CLS = None


def build_exact_model(state: dict, spec: Optional[LegacySpec] = None):
    """The reference network loaded with ``state`` and wrapped as :class:`LegacyExactModel`."""
    global _EXACT_CLS
    sd = unwrap_state_dict(state)
    if sd is None:
        raise UserError("legacy checkpoint holds no state dict")
    spec = spec or inspect_legacy(sd)
    ref = build_reference_model(spec)
    _load_strict(ref, sd, "legacy (exact)")
    if _EXACT_CLS is None:
        _EXACT_CLS = _make_exact_class()
    model = _EXACT_CLS(ref)
    model.eval()
    return model


def _load_strict(module, sd: dict, what: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"{what} checkpoint does not fit the network: {' '.join(lines)[:400]}") from None


# --------------------------------------------------------------------------------------------------
# Mapping onto our model ("fixed")
# --------------------------------------------------------------------------------------------------


def legacy_model_config(spec: LegacySpec):
    """Our ModelConfig for a legacy network (weights come from the file: never downloaded)."""
    from .config import ModelConfig

    return ModelConfig(backbone=spec.trunk, pretrained=False, weights_file=None, hidden_size=spec.hidden_dim,
                       num_layers=spec.num_layers, bidirectional=False, dropout=0.4, num_classes=2)


def map_legacy_state_dict(state: dict, target_state: dict) -> OrderedDict:
    """Translate a legacy state dict into our model's key layout.

    ``target_state`` is our freshly built model's ``state_dict()`` (names and shapes to fill).
    The trunk is matched tensor-by-tensor in registration order with a shape check (both come
    from the same torchvision network, whatever the module names), LSTM biases are zero (the
    reference had none) and the fc rows are swapped so index 1 = FAKE.
    """
    import torch

    sd = unwrap_state_dict(state)
    if sd is None:
        raise UserError("legacy checkpoint holds no state dict")
    out: OrderedDict = OrderedDict()
    ours_bb = [k for k in target_state if k.startswith("backbone.")]
    theirs_bb = list(_trunk_state(sd).items())
    if len(ours_bb) != len(theirs_bb):
        raise UserError(f"legacy trunk has {len(theirs_bb)} tensors, our backbone {len(ours_bb)}: "
                        "layouts differ")
    for key, (tkey, tensor) in zip(ours_bb, theirs_bb):
        if tuple(target_state[key].shape) != tuple(tensor.shape):
            raise UserError(f"legacy model.{tkey} {tuple(tensor.shape)} does not fit {key} "
                            f"{tuple(target_state[key].shape)}")
        out[key] = tensor.clone()
    for k, v in target_state.items():
        if not k.startswith("lstm."):
            continue
        src = sd.get(k)
        if src is not None:
            if tuple(src.shape) != tuple(v.shape):
                raise UserError(f"legacy {k} {tuple(src.shape)} does not fit ours {tuple(v.shape)}")
            out[k] = src.clone()
        elif ".bias" in k or k.startswith("lstm.bias"):
            out[k] = torch.zeros_like(v)
        else:
            raise UserError(f"legacy checkpoint lacks {k}")
    fc_w = next((k for k in target_state if k.endswith("weight") and k.startswith("fc")), "fc.weight")
    fc_b = fc_w[: -len("weight")] + "bias"
    out[fc_w] = sd["linear1.weight"][[1, 0]].clone()
    if fc_b in target_state:
        out[fc_b] = sd["linear1.bias"][[1, 0]].clone() if "linear1.bias" in sd else torch.zeros(2)
    missing = [k for k in target_state if k not in out]
    if missing:
        # buffers such as BatchNorm's num_batches_tracked that the reference also had are mapped
        # above; anything else keeps our (untrained) value, which would be silently wrong
        raise UserError(f"legacy checkpoint cannot fill {len(missing)} of our tensors, e.g. {missing[:3]}")
    return out


def build_fixed_model(state: dict, spec: Optional[LegacySpec] = None):
    """Our model (``build_model``) carrying the legacy weights; see the module docstring."""
    from .models import build_model

    sd = unwrap_state_dict(state)
    if sd is None:
        raise UserError("legacy checkpoint holds no state dict")
    spec = spec or inspect_legacy(sd)
    model = build_model(legacy_model_config(spec), load_weights=False)
    mapped = map_legacy_state_dict(sd, model.state_dict())
    _load_strict(model, mapped, "legacy (fixed)")
    model.eval()
    return model
