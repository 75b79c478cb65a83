"""``deepfake-detector evaluate CHECKPOINT CACHE``: metrics, predictions and plots of a trained model."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

HELP = "evaluate a checkpoint on a face-clip cache (metrics.json, predictions.csv, plots)"
DESCRIPTION = (
    "Evaluate a trained checkpoint on the clips of a cache, with the checkpoint's own sequence length and "
    "test transform. --split val re-creates the training run's validation split (same seed and fraction); "
    "test uses the dataset's test split; all uses every usable clip. Writes metrics.json, predictions.csv "
    "(path,label,p_fake,predicted), confusion_matrix.png and roc.png to --out."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by 'train'")
    p.add_argument("cache", help="face-clip cache folder (made by 'preprocess')")
    p.add_argument(
        "--split",
        choices=["auto", "val", "test", "all"],
        default="auto",
        help="which videos: auto = test if the cache has a test split, else val",
    )
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval-SPLIT)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on P(FAKE) (default: the one chosen on validation, in the checkpoint)",
    )
    p.add_argument("--include-no-face", action="store_true", help="also evaluate no_face (centre-crop) clips")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import load_checkpoint, to_builtin
    from ..config import ModelConfig, TrainConfig, from_dict
    from ..data.cache import load_manifest
    from ..data.dataset import split_rows, usable_rows
    from ..device import amp_dtype as autocast_dtype
    from ..device import resolve_device, use_channels_last
    from ..engine.trainer import evaluate_rows, write_predictions_csv
    from ..errors import UserError
    from ..metrics import compute_metrics, format_metrics_table
    from ..models import build_model
    from ..plots import plot_confusion_matrix, plot_roc
    from ..utils import atomic_write_json, ensure_writable_dir

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be between 0 and 1")
    ckpt = load_checkpoint(args.checkpoint)
    config = ckpt.get("config") or {}
    try:
        model_cfg = from_dict(ModelConfig, config.get("model") or {})
        train_cfg = from_dict(
            TrainConfig, {k: v for k, v in (config.get("train") or {}).items() if k != "model"}
        )
    except (TypeError, ValueError) as exc:
        raise UserError(f"{args.checkpoint}: unusable config in checkpoint ({exc})") from exc
    device = resolve_device(args.device)
    try:
        model = build_model(model_cfg, load_weights=False)
        model.load_state_dict(ckpt["model"])
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{args.checkpoint}: weights do not fit the model in its config ({exc})") from exc
    model.to(device).eval()
    if use_channels_last(device):
        model.set_channels_last(True)
    amp_dtype = autocast_dtype(device)

    try:
        rows = load_manifest(args.cache)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    split = args.split
    if split == "auto":
        split = "test" if any(r.split == "test" for r in usable_rows(rows, args.include_no_face)) else "val"
    if split == "all":
        selected = usable_rows(rows, include_no_face=args.include_no_face)
    else:
        selected = split_rows(
            rows,
            train_cfg.val_fraction,
            train_cfg.seed,
            # the split must be made from the same rows as in training to re-create its validation set
            include_no_face=args.include_no_face or train_cfg.include_no_face,
        )[split]
    if not selected:
        raise UserError(f"{args.cache}: no usable labelled clips in split {split!r}")
    _warn_if_preprocessing_differs(config.get("preprocess") or {}, args.cache, args.checkpoint)
    threshold = args.threshold if args.threshold is not None else float(ckpt.get("threshold") or 0.5)
    seq_len = int(train_cfg.seq_len)
    out = ensure_writable_dir(
        Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval-{split}", "output"
    )

    ev = evaluate_rows(
        model,
        args.cache,
        selected,
        seq_len,
        args.batch_size,
        device,
        amp_dtype,
        args.workers,
        desc=f"evaluate {split}",
    )
    metrics = compute_metrics(ev["y_true"], ev["p_fake"], threshold)
    metrics.update(
        split=split, checkpoint=str(args.checkpoint), cache=str(args.cache), seq_len=seq_len, loss=ev["loss"]
    )
    atomic_write_json(out / "metrics.json", to_builtin(metrics))
    write_predictions_csv(out / "predictions.csv", ev["paths"], ev["y_true"], ev["p_fake"], threshold)
    plot_confusion_matrix(
        metrics["confusion_matrix"], out / "confusion_matrix.png", title=f"{split}: threshold {threshold:.3f}"
    )
    plot_roc(ev["y_true"], ev["p_fake"], out / "roc.png", title=f"ROC ({split})")
    print(format_metrics_table(metrics, f"{split} split, {metrics['n']} videos ({args.checkpoint}):"))
    print(f"wrote {out}/metrics.json, predictions.csv, confusion_matrix.png, roc.png")
    return 0


def _warn_if_preprocessing_differs(trained: dict, cache: str, checkpoint: str) -> None:
    """One warning line when the cache's clips were made differently (frames, size, margin, detector...)
    from the clips the checkpoint was trained on: its metrics then say little about the model."""
    import json
    from pathlib import Path

    from ..data.cache import CONFIG_NAME
    from ..data.preprocess import CLIP_KEYS

    path = Path(cache) / CONFIG_NAME
    if not trained or not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        data = data.get("preprocess") or data.get("config") or data
    if not isinstance(data, dict):
        return
    diff = [
        f"{k} {data[k]!r} (trained on {trained[k]!r})"
        for k in CLIP_KEYS
        if k in data and k in trained and data[k] != trained[k]
    ]
    if diff:
        log.warning(
            "%s was preprocessed differently from the clips %s was trained on: %s; these metrics may not "
            "reflect the model (re-run 'preprocess' with the checkpoint's settings)",
            cache,
            checkpoint,
            ", ".join(diff),
        )
