"""``deepfake-detector calibrate CHECKPOINT CACHE``: fit a checkpoint's calibration on labelled videos."""

from __future__ import annotations

import argparse

HELP = "fit a temperature calibration of a checkpoint's scores on labelled videos (no retraining)"
DESCRIPTION = (
    "Fit temperature scaling on the labelled videos of a cache (your own data, or the training cache's "
    "validation split) and store it in the checkpoint, so predict, serve and evaluate report calibrated "
    "probabilities. The weights do not change and neither does any verdict: the checkpoint's decision "
    "threshold is mapped through the same monotonic function. Default split: val on the training cache, all "
    "on another dataset's. Writes the checkpoint (in place, atomically, unless --out) and calibration.png "
    "(reliability diagram before and after) beside it."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt written by 'train' (or its run folder)")
    p.add_argument("cache", help="face-clip cache of labelled videos (made by 'preprocess')")
    p.add_argument("--split", choices=["auto", "val", "test", "all"], default="auto",
                   help="which videos: auto = val on the training cache, all on another dataset's cache")
    p.add_argument("--out", default=None, help="write the calibrated checkpoint here (default: in place)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def run(args: argparse.Namespace) -> int:
    from ..engine.calibrate import calibrate_checkpoint
    from ..errors import UserError

    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    done = calibrate_checkpoint(args.checkpoint, args.cache, args.split, out=args.out, device=args.device,
                                batch_size=args.batch_size, workers=args.workers)
    cal = done.calibration
    fitted = cal.fitted_on
    print(f"calibrated on the {done.split} split: {fitted['n']} videos ({fitted['n_real']} REAL, "
          f"{fitted['n_fake']} FAKE); {done.note}")
    print(f"  ECE   {cal.ece_before:.4f} -> {cal.ece_after:.4f}")
    print(f"  Brier {cal.brier_before:.4f} -> {cal.brier_after:.4f}")
    if cal.raw_threshold is not None:
        print(f"  threshold {cal.raw_threshold:.4f} on raw scores = {cal.threshold:.4f} on calibrated ones "
              "(verdicts unchanged)")
    if done.replaced:
        print(f"  replaced the previous calibration (temperature {done.replaced.get('temperature')})")
    print(f"wrote {done.checkpoint}" + (f" and {done.plot}" if done.plot else ""))
    return 0
