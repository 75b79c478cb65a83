"""Dataset sources: whatever layout a dataset has on disk -> ``VideoRecord`` objects.

One module per format (``FORMATS``); ``load_records(root, format="auto")`` picks one with
``detect_format`` unless told. Every source reports bad entries (missing files, paths escaping the
root, duplicates, unknown labels, malformed entries) as ``RecordProblem`` lines in the result and
raises ``UserError`` only for whole-file problems (unreadable metadata, missing columns, an unsafe
pickle). Sources never open videos.

Lists the user wrote (CSV, the legacy pickled list, Celeb-DF's test list, text lists) may name files
anywhere (absolute paths, ``..``); symlinks to regular files are followed; metadata that ships with a
downloaded dataset (DFDC) stays inside its root. Special files and ``/proc``/``/sys`` are refused
everywhere (see ``base``). Groups the dataset does not give come from names or ``group_by``
(``grouping``); ``LoadResult.grouping`` says which.

Options by format (``None`` means "not given" and is accepted by every format):

- every format: ``group_by`` (a regular expression: groups from file names, see ``grouping``)
- csv: ``label_map``, ``data_root`` (relative paths are read from it; default the CSV's folder)
- legacy: ``label_map``, ``metadata``, ``video_list``, ``video_dir``
- dfdc: ``label_map``, ``data_root``
- ffpp: ``compression`` (c0/raw, c23, c40), ``methods`` (list or comma-separated), ``splits``
- celebdf: ``test_list``
- folders: none
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from ...errors import UserError
from ..records import FAKE, GROUPINGS, REAL, SPLITS, LoadResult, VideoRecord
from .base import (
    PROBLEM_KINDS,
    VIDEO_EXTENSIONS,
    check_label_map,
    is_video_name,
    normalize_split,
    parse_label_map,
    resolve_label,
    summarize_problems,
)
from .grouping import apply_grouping, compile_group_by
from .lists import ListedVideo, read_video_list

log = logging.getLogger(__name__)

FORMATS = ("csv", "legacy", "dfdc", "ffpp", "celebdf", "folders")
_MODULES = {
    "csv": "csv_source",
    "legacy": "legacy",
    "dfdc": "dfdc",
    "ffpp": "ffpp",
    "celebdf": "celebdf",
    "folders": "folders",
}
UNSPLIT = "unsplit"  # count_by_split key for records without a dataset split
DETECT_MAX_DEPTH = 3
DETECT_MAX_DIRS = 2000

__all__ = [
    "FORMATS", "GROUPINGS", "PROBLEM_KINDS", "UNSPLIT", "VIDEO_EXTENSIONS", "ListedVideo", "count_by_split",
    "dataset_summary", "describe_problems", "detect_format", "format_counts_table", "is_video_name",
    "load_records", "normalize_split", "parse_label_map", "read_video_list", "resolve_label",
    "summarize_problems",
]


def _has_child(folder: str, *names: str) -> bool:
    try:
        entries = {e.lower() for e in os.listdir(folder)}
    except OSError:
        return False
    return any(n.lower() in entries for n in names)


def detect_format(root: str | os.PathLike) -> str:
    """Guess the format of a dataset path (``--format auto``); ``UserError`` when nothing fits."""
    path = os.path.abspath(os.fsdecode(root))
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext == ".json":
            return "dfdc"
        if ext in (".csv", ".tsv", ".txt"):
            return "csv"
        raise UserError(f"{path}: cannot tell the dataset format of a {ext or 'extension-less'} file; "
                        f"give a CSV, a DFDC metadata.json or a folder, or choose with --format "
                        f"({', '.join(FORMATS)})")
    if os.path.isfile(os.path.join(path, "Models", "video_files.pkl")):
        return "legacy"
    if _has_child(path, "original_sequences", "manipulated_sequences"):
        return "ffpp"
    if _has_child(path, "Celeb-real", "Celeb-synthesis", "YouTube-real"):
        return "celebdf"
    from .dfdc import find_metadata
    from .folders import layout

    if find_metadata(path, max_depth=DETECT_MAX_DEPTH, max_dirs=DETECT_MAX_DIRS):
        return "dfdc"
    if layout(path):
        return "folders"
    try:
        csvs = [e for e in os.listdir(path) if e.lower().endswith(".csv")]
    except OSError as exc:
        raise UserError(f"{path}: cannot list: {exc.strerror or exc}") from exc
    if len(csvs) == 1:
        return "csv"
    found = f" ({len(csvs)} CSV files there: pass the one to use)" if csvs else ""
    raise UserError(
        f"{path}: cannot tell the dataset format{found}. Known formats: csv (file,label table), legacy "
        "(Models/video_files.pkl + Data/Gobal_metadata.csv), dfdc (metadata.json files), ffpp "
        "(original_sequences/, manipulated_sequences/), celebdf (Celeb-real/, Celeb-synthesis/), folders "
        "(real/ and fake/ subfolders). Choose one with --format.")


def load_records(root: str | os.PathLike, format: str = "auto",
                 label_map: Union[Mapping[str, str], str, None] = None, group_by: Optional[str] = None,
                 **opts: Any) -> LoadResult:
    """Read a dataset's records. ``root`` is a folder, or a CSV/JSON file for csv/dfdc.

    ``label_map`` (dict or ``"1=FAKE,0=REAL"`` text) says what numeric or other non-standard labels
    mean. ``group_by`` (a regular expression) derives groups from file names: the first capture group,
    or the whole match; it wins over the dataset's groups for the files it matches (``grouping``).
    Format-specific options are listed in this module's docstring; a non-None option that the chosen
    format does not take is a ``UserError``.
    """
    pattern = compile_group_by(group_by)  # a bad pattern fails before the dataset is read
    fmt = (format or "auto").strip().lower()
    if fmt == "auto":
        fmt = detect_format(root)
        log.info("dataset format: %s (detected)", fmt)
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {format!r}; choose one of auto, {', '.join(FORMATS)}")
    mod = importlib.import_module(f".{_MODULES[fmt]}", __name__)
    params = inspect.signature(mod.load).parameters
    kwargs = {k: v for k, v in opts.items() if v is not None}
    unknown = sorted(k for k in kwargs if k not in params or k in ("root", "label_map"))
    if unknown:
        raise UserError(f"option(s) {', '.join(unknown)} do not apply to the {fmt} format")
    lm = check_label_map(label_map)
    if lm and fmt in ("ffpp", "celebdf", "folders"):
        log.warning("--label-map is ignored by the %s format (labels come from its folders)", fmt)
    result = mod.load(root, label_map=lm, **kwargs)
    result.format = fmt
    apply_grouping(result, fmt, pattern)
    log.info("%s: %d record(s), %d problem(s), groups: %s", fmt, len(result.records), len(result.problems),
             result.grouping)
    return result


def count_by_split(records: Iterable[VideoRecord]) -> dict[str, dict[str, int]]:
    """``{split: {"REAL": n, "FAKE": n}}`` in train/val/test order; records without a split
    are counted under ``"unsplit"``. (The reference's ``number_of_real_and_fake_videos``.)"""
    counts: dict[str, dict[str, int]] = {}
    for rec in records:
        if rec.label not in (REAL, FAKE):
            continue
        key = rec.split or UNSPLIT
        counts.setdefault(key, {REAL: 0, FAKE: 0})[rec.label] += 1
    order = {s: i for i, s in enumerate((*SPLITS, UNSPLIT))}
    return dict(sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def format_counts_table(counts: Union[Mapping[str, Mapping[str, int]], Iterable[VideoRecord]]) -> str:
    """A small aligned table of REAL/FAKE per split plus totals, for the CLI to print."""
    if not isinstance(counts, Mapping):
        counts = count_by_split(counts)
    rows = [(split, c.get(REAL, 0), c.get(FAKE, 0)) for split, c in counts.items()]
    total = ("total", sum(r[1] for r in rows), sum(r[2] for r in rows))
    lines = [f"{'split':<9}{'REAL':>9}{'FAKE':>9}{'total':>9}{'FAKE %':>9}"]
    for name, real, fake in [*rows, total] if len(rows) != 1 else rows:
        n = real + fake
        pct = f"{100.0 * fake / n:.1f}" if n else "-"
        lines.append(f"{name:<9}{real:>9}{fake:>9}{n:>9}{pct:>9}")
    return "\n".join(lines)


def dataset_summary(result: LoadResult) -> dict[str, str]:
    """What a cache records about its dataset (``run_preprocess(dataset=...)``): where the groups came
    from (``grouping``, ``grouping_note``) and the compression the source chose (FF++), for the
    training warning and the model card."""
    comps = sorted({str(r.extra["compression"]) for r in result.records if r.extra.get("compression")})
    return {"grouping": result.grouping, "grouping_note": result.grouping_note,
            "compression": ",".join(comps)}


def describe_problems(result: LoadResult, per_kind: int = 10) -> Optional[str]:
    """Problem summary lines joined for printing, or None when there were none."""
    if not result.problems:
        return None
    return "\n".join(summarize_problems(result.problems, per_kind))
