"""Why did the model say FAKE? Heat-map strips of the sampled face crops.

For one video the strip shows every face crop the model saw, with:

* a **Grad-CAM heat map** over each crop: the backbone's last convolutional feature map, each
  channel weighted by the gradient of the FAKE log-odds (FAKE logit minus REAL logit, which is what
  moves P(FAKE)) averaged over the map, summed and clipped at zero. Our head is LSTM + FC, so the
  reference's "fc weights of the FAKE class times the feature map" CAM does not apply directly;
  Grad-CAM is its generalisation to any differentiable head. Maps are scaled by the strongest
  activation in the whole clip so frames can be compared with one another.
* a **per-frame contribution** bar under each crop: how much P(FAKE) drops when that frame is left
  out (leave-one-frame-out through the LSTM head; red = the frame pushes towards FAKE, blue =
  towards REAL). Only the cheap head is rerun, the CNN features are computed once.
* a title with the verdict, P(FAKE) and the threshold.

With several face tracks per video (``--max-faces N``) each scored face gets its own strip
(``explanation_filename(..., face=k)``); a video with one face keeps the one strip and its name.

Rendering uses Matplotlib's Agg backend only, written atomically under a safe file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .utils import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["Explanation", "explain_clip", "render_strip", "explanation_filename", "explain_video"]

MAX_COLUMNS = 10
_CUDNN_LOCK = threading.Lock()


@dataclass
class Explanation:
    """Per-frame evidence for one clip (arrays aligned with the model's input frames)."""

    p_fake: float
    cams: np.ndarray  # float32 [T, H, W] in 0..1 (one scale for the whole clip)
    contributions: np.ndarray  # float [T]: P(FAKE) - P(FAKE without this frame)
    p_without: np.ndarray  # float [T]: P(FAKE) with the frame left out


def explanation_filename(video_path: str, suffix: str = ".png", face: Optional[int] = None) -> str:
    """``<sanitized stem>-<hash>.png``: safe on every OS, unique per input path, stable across runs.

    ``face``: the face track of a video explained face by face (``<stem>-<hash>_face<k>.png``; k as in
    ``Prediction.faces[i]["track"]``, 0 = the main face); None for one strip per video.
    """
    raw = os.fsencode(video_path) if isinstance(video_path, str) else bytes(video_path)
    digest = hashlib.sha1(raw).hexdigest()[:12]
    stem = Path(os.fsdecode(raw)).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:60] or "video"
    tail = "" if face is None else f"_face{int(face)}"
    return f"{stem}-{digest}{tail}{suffix}"


def _feature_map(model: Any, frames: Any) -> Any:
    if hasattr(model, "feature_map"):
        return model.feature_map(frames)
    return model.backbone(frames)


def explain_clip(model: Any, x: Any, device: Any = "cpu") -> Explanation:
    """Grad-CAM maps and leave-one-frame-out contributions for one clip ``x`` [T,3,H,W].

    Runs in float32 without autocast (gradients of a half-precision map are noisy) and needs the
    model to expose ``backbone``/``feature_map``, ``pool`` and ``head`` (ours and the legacy one do).
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    frames = x.to(device=device, dtype=torch.float32)
    t, _, h, w = frames.shape
    with torch.no_grad():
        fmap = _feature_map(model, frames).float()
    # cuDNN's LSTM cannot run backward in eval mode; the native kernels can. The switch is global, so
    # it is held only around the (small) head, under a lock, and only on CUDA.
    on_cuda = fmap.device.type == "cuda"
    with torch.enable_grad(), (_CUDNN_LOCK if on_cuda else contextlib.nullcontext()), \
            (torch.backends.cudnn.flags(enabled=False) if on_cuda else contextlib.nullcontext()):
        fmap = fmap.detach().clone().contiguous().requires_grad_(True)
        feats = torch.flatten(model.pool(fmap), 1)
        logits = model.head(feats.unsqueeze(0)).float()
        log_odds = logits[0, 1] - logits[0, 0]
        (grad,) = torch.autograd.grad(log_odds, fmap)
    p_fake = float(torch.softmax(logits.detach(), dim=1)[0, 1])
    with torch.no_grad():
        alpha = grad.mean(dim=(2, 3), keepdim=True)  # [T, C, 1, 1]
        cam = torch.relu((alpha * fmap.detach()).sum(dim=1, keepdim=True))  # [T, 1, h', w']
        cam = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        peak = float(cam.max())
        cam = cam / peak if peak > 0 and np.isfinite(peak) else torch.zeros_like(cam)
        feats = feats.detach()
        p_without = np.zeros(t, dtype=np.float64)
        if t > 1:
            for i in range(t):
                keep = torch.cat([feats[:i], feats[i + 1:]], 0).unsqueeze(0)
                p_without[i] = float(torch.softmax(model.head(keep).float(), dim=1)[0, 1])
        else:
            p_without[:] = p_fake
    return Explanation(p_fake=p_fake, cams=cam.cpu().numpy().astype(np.float32),
                       contributions=p_fake - p_without, p_without=p_without)


def render_strip(out_path: str | os.PathLike, crops: np.ndarray, expl: Explanation, *, title: str,
                 subtitle: str = "", label: str = "", frame_numbers: Optional[Sequence[int]] = None) -> Path:
    """Draw the crops with heat maps and contribution bars into a PNG (atomic write)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

    crops = np.asarray(crops)
    t = int(crops.shape[0])
    nrows = int(np.ceil(t / MAX_COLUMNS))
    ncols = int(np.ceil(t / nrows))  # balanced rows: 12 frames -> 2 x 6, not 10 + 2
    cell = 1.55
    height = nrows * cell * 1.45 + 1.5  # inches: rows of (crop + bar) plus title and footer
    fig = Figure(figsize=(max(ncols * cell, 6.5), height), dpi=100)
    FigureCanvasAgg(fig)  # Agg only: no GUI backend, no pyplot global state
    gs = GridSpec(nrows * 2, ncols, figure=fig, height_ratios=[4, 1.15] * nrows, hspace=0.25, wspace=0.06,
                  top=1 - 1.05 / height, bottom=0.55 / height, left=0.02, right=0.98)
    colour = {"FAKE": "#c0392b", "REAL": "#1e8449"}.get(label, "#333333")
    fig.suptitle(title, fontsize=13, fontweight="bold", color=colour, y=0.995)
    if subtitle:
        fig.text(0.5, 1 - 0.62 / height, subtitle, ha="center", va="center", fontsize=8.5, color="#444444")
    contrib = np.asarray(expl.contributions, dtype=np.float64)
    finite = contrib[np.isfinite(contrib)]
    scale = max(float(np.abs(finite).max()) if finite.size else 0.0, 0.01)
    for i in range(t):
        r, c = divmod(i, ncols)
        ax = fig.add_subplot(gs[2 * r, c])
        ax.imshow(crops[i], interpolation="bilinear")
        cam = np.nan_to_num(np.asarray(expl.cams[i], dtype=np.float32))
        ax.imshow(cam, cmap="jet", alpha=0.45 * (0.2 + 0.8 * cam), vmin=0, vmax=1, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        name = f"frame {frame_numbers[i]}" if frame_numbers is not None else f"#{i + 1}"
        ax.set_title(name, fontsize=7, pad=2)
        bx = fig.add_subplot(gs[2 * r + 1, c])
        v = float(contrib[i]) if np.isfinite(contrib[i]) else 0.0
        tone = "#c0392b" if v > 0 else "#2e86c1"
        bx.axhspan(-0.75, 0.05, xmin=0.0, xmax=1.0, color="#f2f2f2", zorder=0)
        bx.barh([-0.35], [v], color=tone, height=0.7, zorder=2)
        bx.axvline(0, ymin=0.1, ymax=0.55, color="#555555", linewidth=0.8, zorder=3)
        bx.set_xlim(-scale * 1.05, scale * 1.05)
        bx.set_ylim(-0.8, 1.0)
        bx.set_xticks([])
        bx.set_yticks([])
        for side in ("top", "right", "left", "bottom"):
            bx.spines[side].set_visible(False)
        pts = v * 100
        text = f"{pts:+.1f} pts" if abs(pts) >= 0.1 or pts == 0 else f"{pts:+.2f} pts"
        bx.text(0.0, 0.55, text, ha="center", va="center", fontsize=7, color=tone, zorder=4)
    fig.text(0.5, 0.012,
             "Heat: regions that raised the FAKE score (Grad-CAM, last conv layer, one scale per video).  "
             f"Bars: change in P(FAKE) due to each frame (leave-one-out; red = towards FAKE, "
             f"blue = towards REAL; full width = {scale * 100:.1f} pts).",
             ha="center", va="bottom", fontsize=7, color="#444444", wrap=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out = Path(out_path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def explain_video(model: Any, x: Any, res: Any, pred: Any, explain_dir: str | os.PathLike, *,
                  threshold: float, seq_len: int, channel_order: str = "rgb", device: Any = "cpu",
                  face: Optional[int] = None, frame_indices: Optional[Sequence[int]] = None) -> Path:
    """Explain one scored video (``x`` = the model input [T,3,H,W]) and write its PNG strip.

    ``res`` is the video's ClipResult (its crops and sampled frame numbers are shown); ``pred`` its
    Prediction (verdict, P(FAKE), frames, face ratio). One face of several: ``face`` is its track
    (named in the title and the file name), ``res`` that track's ClipResult, ``pred`` carries that
    face's verdict, score and face ratio, and ``frame_indices`` the video's sampled frame numbers
    (the tracks share them; default ``res.indices``).
    """
    from .data.dataset import IMAGENET_MEAN, IMAGENET_STD, fit_length

    expl = explain_clip(model, x, device=device)
    seq_len = int(x.shape[0])  # what the model saw (a short clip may not have been padded)
    clip = getattr(res, "clip", None)
    if clip is not None:
        crops = fit_length(np.asarray(clip), seq_len)
    else:  # undo the normalisation of the model input
        arr = x.detach().cpu().numpy().transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN
        crops = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if channel_order == "bgr":
            crops = crops[..., ::-1]
    numbers = None
    indices = list(frame_indices if frame_indices is not None else getattr(res, "indices", None) or [])
    if clip is not None and len(indices) == len(clip):
        numbers = [int(v) for v in fit_length(np.asarray(indices), seq_len)]
    p = pred.p_fake if pred.p_fake is not None else expl.p_fake
    verdict = pred.label or "?"
    title = f"{verdict}   P(FAKE) = {p:.3f}   (threshold {threshold:.2f})"
    if face is not None:
        title = f"face {face}:   {title}"
    found = f"face found in {pred.face_ratio * 100:.0f}% of sampled frames"
    status = "" if pred.status == "ok" else f"  |  status: {pred.status}"
    # file names need not be UTF-8 (surrogate escapes): fonts can only draw real text
    name = os.fsencode(os.path.basename(pred.path)).decode("utf-8", "replace")
    subtitle = f"{name}  |  {len(crops)} frames to the model  |  {found}{status}"
    out = Path(explain_dir) / explanation_filename(pred.path, face=face)
    return render_strip(out, crops, expl, title=title, subtitle=subtitle, label=pred.label,
                        frame_numbers=numbers)
