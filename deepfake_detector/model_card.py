"""``MODEL_CARD.md`` for every trained run: what the model is, what it was trained on, how well it
did, what it is for and, above all, where it fails.

A detector's score is easily over-trusted; the card puts the known failure modes (compression,
unseen manipulation methods, no-face videos, demographic skew, the meaning of the threshold) next
to the numbers so whoever deploys the checkpoint reads them together.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from .data.cache import Cache
from .errors import UserError
from .utils import atomic_write_text

__all__ = ["write_model_card", "render_model_card", "MODEL_CARD_NAME"]

MODEL_CARD_NAME = "MODEL_CARD.md"

_METRIC_NAMES = {
    "auc": "ROC AUC", "roc_auc": "ROC AUC", "accuracy": "Accuracy", "acc": "Accuracy", "f1": "F1 (FAKE)",
    "precision": "Precision (FAKE)", "recall": "Recall (FAKE)", "eer": "Equal error rate", "loss": "Log loss",
    "ap": "Average precision", "average_precision": "Average precision",
    "balanced_accuracy": "Balanced accuracy",
    "tpr": "True positive rate", "fpr": "False positive rate", "n": "Videos",
}


def _as_dict(obj: Any) -> dict:
    if obj is None:
        return {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {k: _as_dict(v) if (dataclasses.is_dataclass(v) and not isinstance(v, type)) else v
                for k, v in obj.items()}
    return {}


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}" if v != 0 and abs(v) < 1e-3 else f"{v:.4f}"
    if v is None or v == "":
        return "n/a"
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _flat_scalars(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.extend(_flat_scalars(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out.append((key, v))
    return out


def _metric_rows(metrics: Mapping) -> list[str]:
    rows = []
    for key, v in _flat_scalars(metrics):
        if isinstance(v, str) and len(v) > 60:
            continue
        leaf = key.rsplit(".", 1)[-1]
        split = key.rsplit(".", 1)[0] if "." in key else ""
        if split and leaf.startswith(split.rsplit(".", 1)[-1] + "_"):
            leaf = leaf[len(split.rsplit(".", 1)[-1]) + 1:]
        if not split:
            for pre in ("test_", "val_", "train_"):
                if leaf.startswith(pre):
                    split, leaf = pre[:-1], leaf[len(pre):]
                    break
        name = _METRIC_NAMES.get(leaf.lower(), leaf)
        rows.append(f"| {split or '-'} | {name} | {_fmt(v)} |")
    return rows


def _initialisation(model: Mapping) -> str:
    """Where the backbone's starting weights came from: a weights file wins over ``pretrained``, and a
    backbone without pretrained weights (``tiny``) starts from random ones whatever the flag says."""
    if model.get("weights_file"):
        return f"weights file (`{_fmt(model.get('weights_file'))}`)"
    if not model.get("pretrained"):
        return "random weights"
    try:
        from .models import get_backbone_spec

        if get_backbone_spec(str(model.get("backbone", "resnext50_32x4d"))).weights is None:
            return "random weights (this backbone has no pretrained weights)"
    except (ImportError, ValueError):
        pass
    return "ImageNet weights"


def render_model_card(config: Any, metrics: Optional[Mapping], threshold: Optional[float],
                      data_summary: Optional[Mapping] = None, *, run_name: str = "",
                      checkpoint: str = "", version: str = "") -> str:
    """The card as Markdown (see :func:`write_model_card`)."""
    cfg = _as_dict(config)
    train = _as_dict(cfg.get("train")) or {k: v for k, v in cfg.items() if not isinstance(v, Mapping)}
    model = _as_dict(cfg.get("model")) or _as_dict(train.get("model"))
    pre = _as_dict(cfg.get("preprocess"))
    if not version:
        from . import __version__ as version
    name = run_name or str(train.get("name") or "deepfake-detector model")
    lines = [
        *_header(name, version, checkpoint),
        *_model_section(model, train, pre),
        *_data_section(_as_dict(data_summary), train),
        *_training_section(train, _as_dict(cfg.get("runtime"))),
        *_metrics_section(_as_dict(metrics)),
        *_threshold_section(threshold, train),
        *_USE_SECTION,
        *_LIMITATIONS_SECTION,
        *_EXPLANATIONS_SECTION,
    ]
    return "\n".join(lines)


def _header(name: str, version: str, checkpoint: str) -> list[str]:
    now = _dt.datetime.now(_dt.timezone.utc)
    return [
        f"# Model card: {name}",
        "",
        f"Generated by deepfake-detector {version} on {now:%Y-%m-%d %H:%M UTC}."
        + (f" Checkpoint: `{checkpoint}`." if checkpoint else ""),
        "",
    ]


def _model_section(model: Mapping, train: Mapping, pre: Mapping) -> list[str]:
    """The architecture and the exact input preprocessing (which ``predict`` must repeat)."""
    m = {k: _fmt(model.get(k)) for k in ("hidden_size", "num_layers", "dropout", "weights_file")}
    p = {k: _fmt(pre.get(k)) for k in ("frames", "size", "margin", "detector")}
    return [
        "## Model",
        "",
        f"- Architecture: {_fmt(model.get('backbone', 'resnext50_32x4d'))} CNN per face crop -> LSTM "
        f"(hidden {m['hidden_size']}, layers {m['num_layers']}, bidirectional "
        f"{_fmt(model.get('bidirectional', False))}) -> mean over time -> dropout {m['dropout']} -> "
        "linear layer with 2 outputs (index 1 = FAKE).",
        f"- Backbone initialisation: {_initialisation(model)}.",
        f"- Input: {_fmt(train.get('seq_len', pre.get('frames')))} frames per video, sampled evenly "
        f"across the whole video ({p['frames']} extracted), face crops of {p['size']} px with margin "
        f"{p['margin']}, face detector `{p['detector']}`, ImageNet normalisation.",
        "- `deepfake-detector predict` repeats exactly this preprocessing (it is stored in the checkpoint).",
        "",
    ]


def _data_section(data: Mapping, train: Mapping) -> list[str]:
    lines = ["## Training data", ""]
    if data:
        lines.extend(f"- {key}: {_fmt(v)}" for key, v in _flat_scalars(data))
    else:
        lines.append(f"- Cache: `{_fmt(train.get('cache'))}` (no summary recorded).")
    lines.append("- Train/validation split grouped by source identity where the dataset provides it, so "
                 "fakes of a person never straddle the split.")
    lines.append("")
    return lines


def _training_section(train: Mapping, runtime: Mapping) -> list[str]:
    """The training settings; with ``runtime``, what the run really used (amp asked for on a CPU is
    off, for instance), which then replaces the requested ``amp``."""
    keys = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler", "balance", "monitor",
            "threshold_method", "seed") + (() if runtime else ("amp",))
    lines = ["## Training", ""]
    lines.append(" | ".join(f"{k}: {_fmt(train.get(k))}" for k in keys if k in train) or "n/a")
    if runtime:
        lines.append("")
        lines.append(f"Ran on {_fmt(runtime.get('device'))} x{_fmt(runtime.get('world_size'))}, mixed "
                     f"precision {_fmt(runtime.get('amp'))}, channels_last "
                     f"{_fmt(runtime.get('channels_last'))}, torch {_fmt(runtime.get('torch'))}.")
    lines.append("")
    return lines


def _metrics_section(metrics: Mapping) -> list[str]:
    lines = ["## Metrics", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["| split | metric | value |", "|---|---|---|", *rows]
    else:
        lines.append("No metrics recorded.")
    lines += [
        "",
        "Metrics come from the held-out split(s) above, drawn from the SAME dataset as the training data. "
        "Expect lower numbers on other sources, compressions and manipulation methods.",
        "",
    ]
    return lines


def _threshold_section(threshold: Optional[float], train: Mapping) -> list[str]:
    """What the threshold means, so the score is not read as a calibrated probability."""
    thr = "n/a" if threshold is None else f"{float(threshold):.4f}"
    rule = _fmt(train.get("threshold_method", "eer"))
    return [
        "## Decision threshold",
        "",
        f"A video is labelled FAKE when P(FAKE) >= **{thr}** (chosen on the validation set by the "
        f"`{rule}` rule). P(FAKE) is the model's score, not a calibrated probability of manipulation "
        "in your data: the share of fakes you screen (the base rate) changes what a score means. "
        "Lower the threshold to catch more fakes at the cost of more real videos flagged; "
        "re-choose it on labelled data from your own setting (`predict --threshold`).",
        "",
    ]


_USE_SECTION = (
    "## Intended use",
    "",
    "- Screening and triage of videos showing one clearly visible face, to prioritise human review.",
    "- Research and teaching on face-manipulation detection.",
    "",
    "Not intended for: sole evidence in legal, journalistic, employment or moderation decisions about "
    "a person; identity verification; videos without faces; real-time liveness checks.",
    "",
)

_LIMITATIONS_SECTION = (
    "## Known limitations and failure modes",
    "",
    "- **Compression and re-encoding**: heavy compression (social-media uploads, low bit-rate, resizing) "
    "removes the blending artefacts the model relies on; scores drift towards REAL or become noisy.",
    "- **Unseen manipulation methods**: detectors generalise poorly to generators not in the training "
    "data (new face-swap, reenactment, diffusion or full-synthesis methods). A low score does not "
    "prove a video is real.",
    "- **No face found**: when the detector finds no face the centre of the frame is classified and the "
    "result is marked `status=no_face`; such verdicts are unreliable (`--no-face skip` leaves them "
    "unscored). With several people in a video the crops follow a single face; the others are "
    "not examined.",
    "- **Demographic bias**: public deepfake datasets are not balanced across skin tone, age, gender or "
    "recording conditions; error rates can differ between groups. Measure them on your population "
    "before deployment.",
    "- **Adversarial use**: a motivated forger can evade a known detector (adversarial noise, "
    "post-processing). Treat the detector as one signal among several.",
    "- **Short or low-resolution videos**: fewer frames or tiny faces give less evidence; check the "
    "`frames` and `face_ratio` columns of the prediction output.",
    "",
)

_EXPLANATIONS_SECTION = (
    "## Explanations",
    "",
    "`predict --explain DIR` writes, per video, the face crops with Grad-CAM heat maps and the change "
    "in P(FAKE) due to each frame. They show where the model looked, not proof of manipulation.",
    "",
)


def _summarize_cache(cache: Cache) -> dict:
    """Videos per split and label (usable clips) and per status, read from a cache's manifest."""
    from collections import Counter

    rows = cache.rows()
    usable = Counter((r.split or "unsplit", r.label or "unlabelled") for r in rows
                     if r.status in ("ok", "no_face"))
    out: dict = {"cache": str(cache), "videos in manifest": len(rows)}
    out["status"] = dict(sorted(Counter(r.status for r in rows).items()))
    out["usable clips"] = {f"{split} {label}": n for (split, label), n in sorted(usable.items())}
    return out


def _read_run_config(run_dir: Path) -> dict:
    from .config import read_run_config_dict

    for name in ("config.json", "config.yaml", "config.yml"):
        path = run_dir / name
        if path.is_file():
            return read_run_config_dict(path)
    return {}


def write_model_card(run_dir: str | os.PathLike, config: Any = None, metrics: Optional[Mapping] = None,
                     threshold: Optional[float] = None, data_summary: Optional[Mapping] = None,
                     test_metrics: Optional[Mapping] = None, cache: Optional[Cache] = None,
                     **kw: Any) -> Path:
    """Write ``run_dir/MODEL_CARD.md`` atomically and return its path.

    ``config``: ``{"train", "model", "preprocess"}`` dicts (as stored in checkpoints) or a
    ``TrainConfig`` (default: the run folder's config file); ``metrics``: flat (``val_auc``...) or
    nested (``{"val": {...}}``) numbers; ``test_metrics``: the test split's, shown as ``test``;
    ``data_summary``: counts such as videos per split and label (default: read from the manifest of
    ``cache``, or of the cache folder the config names when it is reachable). Extra keywords:
    ``run_name``, ``checkpoint``, ``version``.
    """
    run_dir = Path(run_dir)
    if config is None:
        config = _read_run_config(run_dir)
    merged: dict = dict(_as_dict(metrics))
    if test_metrics:
        merged["test"] = dict(test_metrics) if isinstance(test_metrics, Mapping) else _as_dict(test_metrics)
    if data_summary is None:
        if cache is None:
            cfg = _as_dict(config)
            folder = (_as_dict(cfg.get("train")) or cfg).get("cache")
            cache = Cache(str(folder)) if folder and os.path.isdir(str(folder)) else None
        if cache is not None:
            try:
                data_summary = _summarize_cache(cache)
            except UserError as exc:
                data_summary = {"cache": str(cache), "note": f"manifest unreadable: {exc}"}
    known = {k: kw.pop(k) for k in ("run_name", "checkpoint", "version") if k in kw}
    path = run_dir / MODEL_CARD_NAME
    atomic_write_text(path, render_model_card(config, merged, threshold, data_summary, **known))
    return path
