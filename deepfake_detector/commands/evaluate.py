"""``deepfake-detector evaluate CHECKPOINT CACHE``: metrics, predictions and plots of a trained model."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint on a face-clip cache (metrics.json, predictions.csv, plots)"
DESCRIPTION = (
    "Evaluate a trained checkpoint on the videos of a cache, with the checkpoint's own sequence length and "
    "test transform. --split val / test use the training run's split (its splits.csv next to the checkpoint, "
    "else re-created with the same seed and fraction); all uses every labelled video. Every video of the "
    "split counts: one without a face is scored on its centre crops (or 0.5 with --no-face-score 0.5), one "
    "that could not be read gets 0.5, and metrics.json counts them; --scored-only leaves them out. A cache "
    "made from another dataset than the training cache is a cross-dataset evaluation (default split: all), "
    "said so in metrics.json and in the run's MODEL_CARD.md. Writes metrics.json, predictions.csv "
    "(path,label,p_fake,predicted,status,method) and plots (confusion matrix, ROC with the operating point, "
    "PR curve, score histograms, reliability diagram, ROC per manipulation) to --out."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by 'train' (or its run folder)")
    p.add_argument("cache", help="face-clip cache folder (made by 'preprocess'); another dataset's cache "
                                 "is a cross-dataset evaluation")
    p.add_argument(
        "--split",
        choices=["auto", "val", "test", "all"],
        default="auto",
        help="which videos: auto = test if the cache has a test split, else val (all for another dataset)",
    )
    p.add_argument("--out", default=None, help="output folder (default: next to the checkpoint, eval-SPLIT)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold on P(FAKE) (default: the one chosen on validation, in the checkpoint)",
    )
    g.add_argument(
        "--threshold-at-fpr", type=float, default=None, metavar="FPR",
        help="set the threshold at this false-positive rate on the split's own REAL videos (e.g. 0.01)",
    )
    p.add_argument("--no-face-score", choices=["centre", "0.5"], default="centre",
                   help="a video without a face: the model's score on its centre crops, or 0.5 (the DFDC "
                        "convention)")
    p.add_argument("--scored-only", action="store_true",
                   help="leave out the videos without a face clip (no face, unreadable): never silent, the "
                        "summary and metrics.json say how many were left out")
    p.add_argument("--no-calibration", action="store_true",
                   help="report the model's raw scores, not the checkpoint's calibrated ones")
    p.add_argument("--include-no-face", action="store_true", help=argparse.SUPPRESS)  # now the default


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
    prepared = prepare_evaluation(
        args.checkpoint, args.cache, args.split, threshold=args.threshold,
        threshold_at_fpr=args.threshold_at_fpr, device=args.device, include_no_face=args.include_no_face,
        scored_only=args.scored_only, no_face_score=args.no_face_score, calibration=not args.no_calibration,
    )
    split = prepared.split
    out = ensure_writable_dir(
        Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"eval-{split}", "output"
    )
    left_out = _left_out(prepared) if args.scored_only else None
    result = prepared.run(args.batch_size, args.workers)
    extra = {"left_out": left_out} if left_out is not None else {}
    metrics = result.report(split=split, checkpoint=str(args.checkpoint), cache=str(args.cache),
                            seq_len=result.seq_len, loss=result.loss, **extra)
    written = result.write(out, metrics)
    print(format_metrics_table(metrics, _summary_line(metrics, split, args.checkpoint)))
    if metrics.get("cross_dataset"):
        _record_cross_dataset(args.checkpoint, metrics, split)
    print(f"wrote {out}/: {', '.join(written)}")
    return 0


def _left_out(prepared) -> dict:
    """What ``--scored-only`` leaves out of the split: counted, never silent."""
    from collections import Counter

    from ..engine.evaluate import select_rows

    _, every = select_rows(prepared.cache, prepared.split, prepared.checkpoint.train_config(),
                           scored_only=False)
    kept = {r.path for r in prepared.rows}
    return dict(sorted(Counter(r.status for r in every if r.path not in kept).items()))


def _summary_line(metrics: dict, split: str, checkpoint: str) -> str:
    """``test split, 128 videos: 89 with a face, 39 without (scored on centre crops), 0 unreadable``."""
    n, no_face, bad = metrics["n_total"], metrics["n_no_face"], metrics["n_unreadable"]
    how = "scored on centre crops" if metrics["no_face_score"] == "centre-crop" else "scored 0.5"
    line = (f"{split} split, {n} videos ({checkpoint}): {n - no_face - bad} with a face, {no_face} without "
            f"({how}), {bad} unreadable (scored 0.5)")
    if metrics.get("left_out"):
        line += f"; left out by --scored-only: {sum(metrics['left_out'].values())} ({metrics['left_out']})"
    score = metrics.get("score") or "uncalibrated score"
    return f"{line}; P(FAKE) is {'a' if score.startswith('calibrated') else 'an'} {score}:"


def _record_cross_dataset(checkpoint: str, metrics: dict, split: str) -> None:
    """Add the cross-dataset result to the run's MODEL_CARD.md (when the checkpoint has one beside it)."""
    from pathlib import Path

    from ..checkpoint import resolve_checkpoint_path
    from ..model_card import MODEL_CARD_NAME, record_cross_dataset

    card = resolve_checkpoint_path(checkpoint).resolve().parent / MODEL_CARD_NAME
    if Path(card).is_file():
        record_cross_dataset(card, metrics, split)
        print(f"cross-dataset result added to {card}")
