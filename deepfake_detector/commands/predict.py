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
from typing import Optional

HELP = "classify videos as REAL/FAKE with a trained checkpoint (table, CSV/JSON, heat-map strips)"
DESCRIPTION = (
    "Classify videos with a checkpoint written by 'train' (or a reference-implementation state dict with "
    "--legacy). INPUT is a video file, a folder (searched recursively for video files) or a list: a .csv "
    "(column 'path' or 'file', else the first column) or a .txt with one path per line, relative paths "
    "being relative to the list's folder. The checkpoint's own preprocessing (frames, face crops) and "
    "threshold are used. Exit code: 0 when every video got a verdict, 1 when some could not be scored (or, "
    "with --explain, got no explanation), 2 for usage errors."
)

OUTPUT_SUFFIXES = (".csv", ".json")
LIST_SUFFIXES = (".csv", ".txt", ".lst")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by 'train' (or a legacy state dict)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, folders, or .csv/.txt lists of videos")
    p.add_argument("-o", "--output", default=None, help="write the results to this .csv or .json file")
    p.add_argument("--threshold", type=float, default=None,
                   help="FAKE when P(FAKE) >= this (default: the checkpoint's, chosen on validation)")
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
    p.add_argument("--legacy", action="store_true",
                   help="the checkpoint is a reference-implementation state dict (auto-detected with a "
                        "warning)")
    p.add_argument("--legacy-mode", choices=["fixed", "exact"], default="fixed",
                   help="legacy: 'exact' reproduces the reference's numbers, 'fixed' maps onto our model "
                        "(see docs/legacy.md)")
    p.add_argument("--legacy-frames", type=int, default=None,
                   help="legacy: frames per video it was trained with (default: from the file name, else 20)")
    p.add_argument("--legacy-preprocess", choices=["reference", "ours"], default=None,
                   help="legacy: 'reference' = the reference's own preprocessing (first frames, tight "
                        "dlib crops; default with exact), 'ours' = this project's (frames across the whole "
                        "video; default with fixed)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary line, not the table")


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


def _read_list(path: Path) -> list[str]:
    """Paths from a .csv (``path``/``file`` column, else the first) or a .txt/.lst (one per line)."""
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        from ..errors import UserError

        raise UserError(f"cannot read the list {path}: {exc}") from None
    entries: list[str] = []
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        rows = [r for r in rows if r and any(c.strip() for c in r)]
        if not rows:
            return []
        header = [c.strip().lower() for c in rows[0]]
        col = next((header.index(n) for n in ("path", "file", "filename", "video") if n in header), None)
        if col is not None:
            body = rows[1:]
        else:
            col = 0
            first = rows[0][0].strip()
            looks_like_path = is_video_name(first) or os.sep in first or "/" in first
            body = rows if looks_like_path else rows[1:]
        base = _manifest_root(path, header) or base
        entries = [r[col].strip() for r in body if len(r) > col and r[col].strip()]
    else:
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append(line)
    return [e if os.path.isabs(e) else os.fspath(base / e) for e in entries]


def _manifest_root(path: Path, header: list[str]) -> Optional[Path]:
    """A cache manifest's paths are relative to the dataset root recorded next to it."""
    if "status" not in header or "path" not in header:
        return None
    meta = path.parent / "preprocess.json"
    try:
        root = json.loads(meta.read_text(encoding="utf-8")).get("dataset_root")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(root) if root and os.path.isdir(root) else None


def collect_inputs(inputs: list[str]) -> tuple[list[str], list[str]]:
    """Expand INPUT arguments into video paths (deduplicated, in order) and notes on empty inputs.

    Paths that do not exist are kept (they become ``missing`` rows); folders without videos are
    reported in the notes.
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
            paths.extend(listed)
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


def write_results(path: str, preds: list, meta: Optional[dict] = None) -> None:
    """CSV or JSON by extension, written atomically."""
    from ..inference import PREDICTION_FIELDS
    from ..utils import atomic_open

    rows = [p.to_dict() for p in preds]
    if path.lower().endswith(".json"):
        # JSON has no place for undecodable file-name bytes (lone surrogates break strict parsers):
        # write them as \xNN escapes; CSV keeps the exact bytes
        for r in rows:
            for k in ("path", "explanation", "error"):
                if isinstance(r.get(k), str):
                    r[k] = r[k].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        data = {"predictions": rows, **(meta or {})}
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=True, allow_nan=False, default=str)
            fh.write("\n")
        return
    with atomic_open(path, "w", encoding="utf-8", newline="", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=PREDICTION_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in PREDICTION_FIELDS})


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..inference import Detector
    from ..utils import ensure_writable_dir

    if args.output and not args.output.lower().endswith(OUTPUT_SUFFIXES):
        raise UserError(f"--output must end in .csv or .json, got {args.output}")
    if args.output and os.path.isdir(args.output):
        raise UserError(f"--output {args.output} is a folder; give a file name ending in .csv or .json")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError("--threshold must be between 0 and 1")
    if args.legacy_frames is not None and args.legacy_frames < 1:
        raise UserError("--legacy-frames must be >= 1")
    if not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    paths, notes = collect_inputs(list(args.inputs))
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

    t0 = time.perf_counter()
    detector = Detector.from_checkpoint(
        args.checkpoint, device=args.device, threshold=args.threshold, batch_size=args.batch_size,
        workers=args.workers, no_face=args.no_face, legacy=True if args.legacy else None,
        legacy_mode=args.legacy_mode, legacy_frames=args.legacy_frames,
        legacy_preprocess=args.legacy_preprocess, compile=args.compile,
    )
    preds = detector.predict(paths, explain_dir=args.explain, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    digits = score_digits(preds, detector.threshold)
    summary = summary_line(preds, seconds, detector.threshold, digits)
    if not args.quiet:
        err_width = table_error_width(preds, digits)
        print(format_table(preds, digits, err_width))
        print()
        cut = shortened_errors(preds, err_width)
        if cut:
            where = f"in {args.output}" if args.output else "with --output FILE.csv"
            summary += f" ({cut} error message(s) shortened in the table; full text {where})"
    print(summary)
    if args.output:
        info = detector.info()
        meta = {"checkpoint": info.get("checkpoint"), "sha256": info.get("sha256"),
                "threshold": detector.threshold, "legacy": info.get("legacy")}
        try:
            write_results(args.output, preds, meta)
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc}") from None
        print(f"results written to {args.output}")
    missing_explanations = 0
    if args.explain:
        n = sum(1 for p in preds if p.explanation)
        print(f"{n} explanation(s) written to {args.explain}")
        missing_explanations = sum(1 for p in preds if p.p_fake is not None and not p.explanation)
        if missing_explanations:
            print(f"warning: {missing_explanations} scored video(s) got no explanation in {args.explain} "
                  "(see the warnings above); their verdicts stand", file=sys.stderr)
    return 0 if all(p.p_fake is not None for p in preds) and not missing_explanations else 1
