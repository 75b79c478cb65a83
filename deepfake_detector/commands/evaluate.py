"""``deepfake-detector evaluate CHECKPOINT CACHE``: metrics, predictions and plots of a trained model."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint on a face-clip cache (metrics.json, predictions.csv, plots)"
DESCRIPTION = (
    "Evaluate a trained checkpoint on the clips of a cache, with the checkpoint's own sequence length and "
    "test transform. --split val / test use the training run's split (its splits.csv next to the checkpoint, "
    "else re-created with the same seed and fraction); all uses every usable clip. Writes metrics.json, "
    "predictions.csv (path,label,p_fake,predicted), confusion_matrix.png and roc.png to --out."
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

    from ..engine.evaluate import prepare_evaluation
    from ..errors import UserError
    from ..metrics import format_metrics_table
    from ..utils import ensure_writable_dir

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be between 0 and 1")
    prepared = prepare_evaluation(args.checkpoint, args.cache, args.split, threshold=args.threshold,
                                  device=args.device, include_no_face=args.include_no_face)
    split = prepared.split
    out = ensure_writable_dir(
        Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval-{split}", "output"
    )
    result = prepared.run(args.batch_size, args.workers)
    metrics = result.report(split=split, checkpoint=str(args.checkpoint), cache=str(args.cache),
                            seq_len=result.seq_len, loss=result.loss)
    result.write(out, metrics)
    print(format_metrics_table(metrics, f"{split} split, {metrics['n']} videos ({args.checkpoint}):"))
    print(f"wrote {out}/metrics.json, predictions.csv, confusion_matrix.png, roc.png")
    return 0
