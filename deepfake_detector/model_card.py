"""``MODEL_CARD.md`` for every trained run: what the model is, what it was trained on, how well it
did, what it is for and, above all, where it fails.

A detector's score is easily over-trusted; the card puts the known failure modes (compression,
unseen manipulation methods, no-face videos, demographic skew, the meaning of the threshold) next
to the numbers so whoever deploys the checkpoint reads them together. It states what a paper needs:
the dataset (format, manipulation methods, compression), the split policy (grouped or not), video- and
frame-level AUC, TPR at low false-positive rates, per-method results, the calibration, and later
cross-dataset evaluations (``record_cross_dataset``). Paths are shown relative (folder or file names),
never as absolute paths of the machine that trained.
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

__all__ = ["write_model_card", "render_model_card", "record_calibration", "record_cross_dataset",
           "describe_dataset", "MODEL_CARD_NAME"]

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


def _name(path: Any) -> str:
    """The last component of a path (a card never shows where the training machine kept its files)."""
    text = str(path or "").rstrip("/\\")
    return os.path.basename(text) or text


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
        at_half = False
        if not split:
            for pre in ("test_", "val_", "train_"):
                if leaf.startswith(pre):
                    split, leaf = pre[:-1], leaf[len(pre):]
                    # metrics.csv's per-epoch validation verdicts are at 0.5, not at the chosen threshold
                    at_half = pre == "val_" and leaf in _AT_THRESHOLD and "threshold" not in metrics
                    break
        name = _METRIC_NAMES.get(leaf.lower(), leaf) + (" at threshold 0.5" if at_half else "")
        rows.append(f"| {split or '-'} | {name} | {_fmt(v)} |")
    return rows


_AT_THRESHOLD = ("accuracy", "precision", "recall", "f1")


def _initialisation(model: Mapping) -> str:
    """Where the backbone's starting weights came from: a weights file wins over ``pretrained``, and a
    backbone without pretrained weights (``tiny``) starts from random ones whatever the flag says."""
    if model.get("weights_file"):
        return f"weights file (`{_fmt(_name(model.get('weights_file')))}`)"
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
                      checkpoint: str = "", version: str = "", dataset: Optional[Mapping] = None,
                      results: Optional[Mapping] = None, calibration: Optional[Mapping] = None) -> str:
    """The card as Markdown (see :func:`write_model_card`)."""
    cfg = _as_dict(config)
    train = _as_dict(cfg.get("train")) or {k: v for k, v in cfg.items() if not isinstance(v, Mapping)}
    model = _as_dict(cfg.get("model")) or _as_dict(train.get("model"))
    pre = _as_dict(cfg.get("preprocess"))
    if not version:
        from . import __version__ as version
    name = run_name or str(train.get("name") or "deepfake-detector model")
    results = {k: v for k, v in (results or {}).items() if v}
    lines = [
        *_header(name, version, _name(checkpoint)),
        *_model_section(model, train, pre),
        *_data_section(_as_dict(data_summary), train, _as_dict(dataset)),
        *_training_section(train, _as_dict(cfg.get("runtime"))),
        *_results_section(results),
        *_metrics_section(_as_dict(metrics)),
        *_threshold_section(threshold, train, _as_dict(calibration)),
        *_calibration_section(_as_dict(calibration)),
        *_CROSS_DATASET_SECTION,
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


def _data_section(data: Mapping, train: Mapping, dataset: Mapping) -> list[str]:
    lines = ["## Training data", ""]
    if dataset:
        lines.extend(_dataset_lines(dataset))
    if data:
        lines.extend(f"- {key}: {_fmt(v)}" for key, v in _flat_scalars(data))
    elif not dataset:
        lines.append(f"- Cache: `{_fmt(_name(train.get('cache')))}` (no summary recorded).")
    lines.append(f"- Split policy: {_split_policy(dataset, train)}")
    lines.append("")
    return lines


def _dataset_lines(dataset: Mapping) -> list[str]:
    """Dataset name, format, compression and the manipulation methods of its FAKE videos."""
    comp = f", compression {dataset['compression']}" if dataset.get("compression") else ""
    lines = [f"- Dataset: `{_fmt(dataset.get('name'))}`, format `{_fmt(dataset.get('format'))}`{comp}."]
    methods = dataset.get("methods") or {}
    if methods:
        shown = ", ".join(f"{_fmt(m)} ({n})" for m, n in methods.items())
        lines.append(f"- Manipulation methods (FAKE videos with a clip): {shown}.")
    else:
        lines.append("- Manipulation methods: not recorded (the dataset names none; a `method` column in a "
                     "CSV list or a `method` field in metadata.json adds them).")
    return lines


_GROUPING_TEXT = {
    "dataset": "grouped by the dataset's own pairing (original/group columns, DFDC `original`, FF++ and "
               "Celeb-DF identities), so a fake and its original are never on both sides",
    "names": "grouped by FF++/Celeb-DF style file names (`000.mp4` with `000_003.mp4`), so a fake and its "
             "original are never on both sides",
    "group-by": "grouped by the `--group-by` pattern on the file names",
    "per-video": "**not grouped**: the dataset says nothing about which fake came from which original, so "
                 "every video was its own group and a fake and its original may sit on both sides of the "
                 "split; the validation numbers may be optimistic (add an `original`/`group` column or use "
                 "`preprocess --group-by`)",
}


def _split_policy(dataset: Mapping, train: Mapping) -> str:
    grouping = str(dataset.get("grouping") or "")
    text = _GROUPING_TEXT.get(grouping, "grouping not recorded (the cache was made before it was)")
    if dataset.get("grouping_note"):
        text += f" ({_fmt(dataset['grouping_note'])})"
    if dataset.get("validation") == "dataset":
        where = "validation: the dataset's own `val` split"
    else:
        frac = train.get("val_fraction")
        share = f"{float(frac):.0%} " if isinstance(frac, (int, float)) else ""
        where = (f"validation: {share}of the training videos, carved out by label-stratified, group-aware "
                 f"splitting (seed {_fmt(train.get('seed'))})")
    test = ("test: the dataset's own `test` split" if dataset.get("test")
            else "no test split (the dataset names none)")
    return f"{where}; {test}; {text}."


_RESULT_COLUMNS = (("videos", None), ("video AUC", "auc"), ("frame AUC", "frame_auc"), ("AP", "ap"),
                   ("EER", "eer"), ("TPR@FPR 0.1", "0.1"), ("TPR@FPR 0.01", "0.01"),
                   ("TPR@FPR 0.001", "0.001"), ("threshold (rule)", None), ("accuracy", "accuracy"),
                   ("ECE", "ece"), ("Brier", "brier"))


def _result_row(split: str, m: Mapping) -> str:
    tpr = m.get("tpr_at_fpr") or {}
    cells = []
    for column, key in _RESULT_COLUMNS:
        if column == "videos":
            n = m.get("n_total", m.get("n"))
            cells.append(f"{_fmt(n)} ({_fmt(m.get('n_scored', n))} scored)")
        elif column == "threshold (rule)":
            cells.append(f"{_fmt(m.get('threshold'))} ({_fmt(m.get('threshold_method'))})")
        else:
            cells.append(_fmt(tpr.get(key) if key.startswith("0.") else m.get(key)))
    return f"| {split} | " + " | ".join(cells) + " |"


def _results_section(results: Mapping) -> list[str]:
    """Video- and frame-level results per split, then each manipulation method against all reals."""
    if not results:
        return []
    lines = ["## Results", "", "| split | " + " | ".join(c for c, _ in _RESULT_COLUMNS) + " |",
             "|---" * (len(_RESULT_COLUMNS) + 1) + "|"]
    lines += [_result_row(split, _as_dict(m)) for split, m in results.items()]
    lines += ["", "Video AUC scores each video once; frame AUC scores every sampled frame alone (as a "
              "one-frame clip) against its video's label, the way frame-based detectors are compared. "
              "Accuracy is at the decision threshold below; videos without a face or clip are counted "
              "(scored as `metrics.json` says), not dropped.", ""]
    per_method = [(split, method, _as_dict(v)) for split, m in results.items()
                  for method, v in (_as_dict(m).get("by_manipulation") or {}).items()]
    if per_method:
        lines += ["### Per manipulation method (its FAKE videos against all REAL videos of the split)", "",
                  "| split | method | AUC | TPR@FPR 0.01 | FAKE | REAL |", "|---|---|---|---|---|---|"]
        lines += [f"| {split} | {_fmt(method)} | {_fmt(v.get('auc'))} | "
                  f"{_fmt((v.get('tpr_at_fpr') or {}).get('0.01'))} | {_fmt(v.get('n_fake'))} | "
                  f"{_fmt(v.get('n_real'))} |" for split, method, v in per_method]
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


_NOT_IN_TABLE = ("by_manipulation", "tpr_at_fpr", "calibration", "by_status", "cross_dataset", "notes")


def _metrics_section(metrics: Mapping) -> list[str]:
    lines = ["## Metrics", ""]
    rows = _metric_rows(_without(metrics, _NOT_IN_TABLE))
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


def _without(d: Mapping, keys: tuple) -> dict:
    """``d`` without ``keys``, also inside nested sections (``{"test": {...}}``)."""
    return {k: _without(v, keys) if isinstance(v, Mapping) else v for k, v in d.items() if k not in keys}


def _threshold_section(threshold: Optional[float], train: Mapping, calibration: Mapping) -> list[str]:
    """What the threshold means, so the score is not read as a calibrated probability."""
    thr = "n/a" if threshold is None else f"{float(threshold):.4f}"
    rule = _fmt(train.get("threshold_method", "eer"))
    if calibration.get("threshold") is not None:
        where = (f"the model's raw score >= **{thr}**, that is calibrated P(FAKE) >= "
                 f"**{float(calibration['threshold']):.4f}**")
        meaning = ("The calibrated P(FAKE) is a probability on data like the validation split; the share of "
                   "fakes you screen (the base rate) still changes what a score means in your data.")
    else:
        where = f"its score >= **{thr}**"
        meaning = ("The score is the model's output, not a calibrated probability of manipulation in your "
                   "data: the share of fakes you screen (the base rate) changes what a score means.")
    return [
        "## Decision threshold",
        "",
        f"A video is labelled FAKE when {where} (chosen on the validation set by the `{rule}` rule). "
        f"{meaning} Lower the threshold to catch more fakes at the cost of more real videos flagged; "
        "re-choose it on labelled data from your own setting (`evaluate --threshold-at-fpr 0.01` on your "
        "own real videos, then `predict --threshold`).",
        "",
    ]


def _calibration_section(calibration: Mapping) -> list[str]:
    if not calibration:
        return ["## Calibration", "", "None: the scores are uncalibrated (`deepfake-detector calibrate "
                "CHECKPOINT CACHE` fits a temperature on labelled videos later, without retraining).", ""]
    fitted = _as_dict(calibration.get("fitted_on"))
    where = f"the {_fmt(fitted.get('split'))} split of `{_fmt(_name(fitted.get('cache')))}`"
    return [
        "## Calibration",
        "",
        f"Temperature scaling: T = {_fmt(calibration.get('temperature'))}, fitted on {where} "
        f"({_fmt(fitted.get('n'))} videos: {_fmt(fitted.get('n_real'))} REAL, {_fmt(fitted.get('n_fake'))} "
        f"FAKE). Expected calibration error {_fmt(calibration.get('ece_before'))} before, "
        f"{_fmt(calibration.get('ece_after'))} after; Brier {_fmt(calibration.get('brier_before'))} -> "
        f"{_fmt(calibration.get('brier_after'))} (on the videos it was fitted on). It changes no ranking, "
        "AUC or verdict; `predict`, `serve` and `evaluate` apply it (`--no-calibration` shows raw scores); "
        "`calibration.png` is the reliability diagram.",
        "",
    ]


CROSS_BEGIN = "<!-- cross-dataset:begin -->"
CROSS_END = "<!-- cross-dataset:end -->"
_CROSS_HEADER = ("| evaluated on | split | videos | video AUC | frame AUC | TPR@FPR 0.01 | EER |",
                 "|---|---|---|---|---|---|---|")
_CROSS_DATASET_SECTION = (
    "## Cross-dataset evaluation",
    "",
    "Trained on one dataset, tested on another: the numbers that say how the detector generalises. "
    "`deepfake-detector evaluate best.pt OTHER_CACHE` adds a row.",
    "",
    CROSS_BEGIN,
    "None yet.",
    CROSS_END,
    "",
)


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
    out: dict = {"cache": _name(os.fspath(cache)), "videos in manifest": len(rows)}
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


def describe_dataset(cache: Cache) -> dict:
    """What the card says about the training dataset: its folder name, format, compression, grouping, the
    manipulation methods of its FAKE clips (with counts) and whether it has its own val / test splits."""
    from collections import Counter

    info = cache.dataset_info()
    rows = [r for r in cache.rows() if r.status in ("ok", "no_face") and r.clip]
    methods = Counter(r.method for r in rows if r.label == "FAKE" and r.method)
    return {
        "name": _name(cache.dataset_root) or _name(os.fspath(cache)), "format": info.get("format", ""),
        "compression": info.get("compression", ""), "grouping": info.get("grouping", ""),
        "grouping_note": info.get("grouping_note", ""), "methods": dict(sorted(methods.items())),
        "validation": "dataset" if any(r.split == "val" for r in rows) else "carved",
        "test": any(r.split == "test" for r in rows),
    }


def write_model_card(run_dir: str | os.PathLike, config: Any = None, metrics: Optional[Mapping] = None,
                     threshold: Optional[float] = None, data_summary: Optional[Mapping] = None,
                     test_metrics: Optional[Mapping] = None, cache: Optional[Cache] = None,
                     val_metrics: Optional[Mapping] = None, calibration: Optional[Mapping] = None,
                     **kw: Any) -> Path:
    """Write ``run_dir/MODEL_CARD.md`` atomically and return its path.

    ``config``: ``{"train", "model", "preprocess"}`` dicts (as stored in checkpoints) or a
    ``TrainConfig`` (default: the run folder's config file); ``metrics``: flat (``val_auc``...) or
    nested (``{"val": {...}}``) numbers; ``test_metrics`` / ``val_metrics``: ``evaluate``'s metrics of
    those splits (the results tables; ``test`` also joins the metrics table); ``calibration``: the
    checkpoint's; ``data_summary``: counts such as videos per split and label (default: read from the
    manifest of ``cache``, or of the cache folder the config names when it is reachable). Extra
    keywords: ``run_name``, ``checkpoint``, ``version``.
    """
    run_dir = Path(run_dir)
    if config is None:
        config = _read_run_config(run_dir)
    merged: dict = dict(_as_dict(metrics))
    if test_metrics:
        merged["test"] = dict(test_metrics) if isinstance(test_metrics, Mapping) else _as_dict(test_metrics)
    if cache is None:
        cfg = _as_dict(config)
        folder = (_as_dict(cfg.get("train")) or cfg).get("cache")
        cache = Cache(str(folder)) if folder and os.path.isdir(str(folder)) else None
    dataset = None
    if cache is not None:
        try:
            dataset = describe_dataset(cache)
            if data_summary is None:
                data_summary = _summarize_cache(cache)
        except UserError as exc:
            if data_summary is None:
                data_summary = {"cache": _name(os.fspath(cache)), "note": f"manifest unreadable: {exc}"}
    known = {k: kw.pop(k) for k in ("run_name", "checkpoint", "version") if k in kw}
    path = run_dir / MODEL_CARD_NAME
    results = {"validation": val_metrics, "test": test_metrics}
    atomic_write_text(path, render_model_card(config, merged, threshold, data_summary, dataset=dataset,
                                              results=results, calibration=calibration, **known))
    return path


def record_calibration(card: str | os.PathLike, calibration: Mapping) -> bool:
    """Replace a card's calibration section with ``calibration`` (after ``calibrate`` refits it); False
    when the card has no such section."""
    path = Path(card)
    text = path.read_text(encoding="utf-8")
    start = text.find("\n## Calibration\n")
    if start < 0:
        return False
    end = text.find("\n## ", start + 1)
    section = "\n".join(_calibration_section(_as_dict(calibration))).rstrip("\n")
    atomic_write_text(path, text[: start + 1] + section + "\n" + (text[end:] if end >= 0 else ""))
    return True


def record_cross_dataset(card: str | os.PathLike, metrics: Mapping, split: str) -> None:
    """Add (or replace) the row of one cross-dataset evaluation in a card's cross-dataset table."""
    cross = _as_dict(metrics.get("cross_dataset"))
    where = _fmt(cross.get("evaluated_on"))
    row = (f"| {where} | {_fmt(split)} | {_fmt(metrics.get('n_total', metrics.get('n')))} | "
           f"{_fmt(metrics.get('auc'))} | {_fmt(metrics.get('frame_auc'))} | "
           f"{_fmt((metrics.get('tpr_at_fpr') or {}).get('0.01'))} | {_fmt(metrics.get('eer'))} |")
    path = Path(card)
    text = path.read_text(encoding="utf-8")
    if CROSS_BEGIN not in text or CROSS_END not in text:  # a card from before the section existed
        text = text.rstrip("\n") + "\n\n" + "\n".join(_CROSS_DATASET_SECTION) + "\n"
    head, rest = text.split(CROSS_BEGIN, 1)
    body, tail = rest.split(CROSS_END, 1)
    rows = [ln for ln in body.strip().splitlines() if ln.startswith("| ") and ln not in _CROSS_HEADER]
    rows = [r for r in rows if not r.startswith(f"| {where} | {_fmt(split)} |")] + [row]
    table = "\n".join((*_CROSS_HEADER, *rows))
    atomic_write_text(path, f"{head}{CROSS_BEGIN}\n{table}\n{CROSS_END}{tail}")
