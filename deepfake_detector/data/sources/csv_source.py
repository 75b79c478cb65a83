"""``csv`` source: a table of ``file,label`` rows, with or without a header.

- The first non-blank row is a header unless its second field reads as a label (REAL/FAKE in any
  case, a number, or a ``--label-map`` key); a headerless ``label,file`` order is recognised too.
  Header names are matched loosely (``file``/``path``/``video``..., ``label``/``class``...); optional
  ``split``, ``group`` or ``original`` and ``method`` (a FAKE's manipulation method) columns are used
  when present, other columns are ignored.
- Numbers as labels need an explicit ``label_map`` (``--label-map 1=FAKE,0=REAL``).
- Paths are relative to the CSV's folder unless ``data_root`` is given (the dataset root that
  manifest keys are relative to). The list is the user's own: absolute paths and ``..`` are used as
  written (a file outside the root keeps its absolute path as its key); only regular files are taken.
- Without a ``group``/``original`` value in any row, groups come from FF++/Celeb-DF style file names
  when they link videos (``sources.grouping``), else one per video.
- UTF-8 with or without BOM, CRLF, blank lines, quoted fields, ``,`` ``;`` or tab delimiters. Bytes
  that are not UTF-8 are kept (surrogateescape) so non-UTF-8 file names on disk still match.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from ...errors import UserError
from ..records import GROUP_DATASET, LoadResult
from .base import MALFORMED, Collector, normalize_split, read_file_bytes, resolve_label, text_limit

FORMAT = "csv"

FILE_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "file_path", "video", "video_path",
                "videopath", "video_file", "video_name", "name")
LABEL_COLUMNS = ("label", "labels", "class", "target", "ground_truth", "gt")
SPLIT_COLUMNS = ("split", "set", "subset", "partition")
GROUP_COLUMNS = ("group", "group_id", "groupid")
ORIGINAL_COLUMNS = ("original", "original_file", "original_video", "source_video")
METHOD_COLUMNS = ("method", "manipulation", "manipulation_method", "fake_method", "fake_type")


@dataclass
class Row:
    """One data row of a label table, before any path or label check."""

    where: str
    file: str
    label: str
    split: Optional[str] = None
    group: Optional[str] = None
    original: Optional[str] = None
    method: Optional[str] = None
    fields: int = 0  # set when the row is too short to hold a file and a label


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _find(header: list[str], names: tuple[str, ...]) -> Optional[int]:
    normed = [_norm_name(h) for h in header]
    for name in names:
        if name in normed:
            return normed.index(name)
    return None


def _delimiter(line: str) -> str:
    if "," in line:
        return ","
    if "\t" in line:
        return "\t"
    if ";" in line:
        return ";"
    return ","


def read_table(path: str, label_map: Optional[Mapping[str, str]] = None) -> list[Row]:
    """Parse a label table into rows; whole-file problems raise ``UserError`` (one line)."""
    shown = os.fsdecode(path)
    text = read_file_bytes(path, text_limit("a label table")).decode("utf-8-sig", errors="surrogateescape")
    first_line = next((ln for ln in text.splitlines() if ln.strip()), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(first_line))
    name = os.path.basename(shown)
    raw_rows: list[tuple[int, list[str]]] = []
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            raw_rows.append((reader.line_num, fields))
    except csv.Error as exc:
        raise UserError(f"{shown}: line {reader.line_num}: not a readable CSV ({exc})") from exc
    if not raw_rows:
        return []

    first = raw_rows[0][1]
    def is_label(value: str) -> bool:
        label, why = resolve_label(value, label_map)
        return label is not None or why == "numeric"

    has_header, label_first = True, False
    if len(first) >= 2:
        if is_label(first[1]):
            has_header = False
        elif is_label(first[0]) and not is_label(first[1]):  # headerless "label,file"
            has_header, label_first = False, True
    if has_header:
        header = first
        file_i, label_i = _find(header, FILE_COLUMNS), _find(header, LABEL_COLUMNS)
        if file_i is None or label_i is None:
            missing = [c for c, i in (("file", file_i), ("label", label_i)) if i is None]
            found = ", ".join(repr(h.strip()) for h in header[:10])
            hint = ""
            if len(first) >= 2:
                hint = (f" (the first row was read as a header because {first[1].strip()[:40]!r} is not a "
                        "label: REAL/FAKE, or numbers with --label-map)")
            raise UserError(f"{shown}: missing required column(s) {', '.join(missing)}; found {found}{hint}")
        split_i, group_i = _find(header, SPLIT_COLUMNS), _find(header, GROUP_COLUMNS)
        orig_i, method_i = _find(header, ORIGINAL_COLUMNS), _find(header, METHOD_COLUMNS)
        body = raw_rows[1:]
    else:
        file_i, label_i = (1, 0) if label_first else (0, 1)
        split_i = group_i = orig_i = method_i = None
        body = raw_rows

    def cell(fields: list[str], i: Optional[int]) -> Optional[str]:
        if i is None or i >= len(fields):
            return None
        v = fields[i].strip()
        return v or None

    need = max(file_i, label_i) + 1
    rows = []
    for line, fields in body:
        where = f"{name}:{line}"
        if len(fields) < need:
            rows.append(Row(where=where, file="", label="", fields=len(fields) or 1))
            continue
        rows.append(Row(where=where, file=fields[file_i].strip(), label=fields[label_i],
                        split=cell(fields, split_i), group=cell(fields, group_i),
                        original=cell(fields, orig_i), method=cell(fields, method_i)))
    return rows


def _find_csv(root: str) -> str:
    if os.path.isfile(root):
        return root
    if os.path.isdir(root):
        csvs = sorted(e for e in os.listdir(root) if e.lower().endswith(".csv"))
        if len(csvs) == 1:
            return os.path.join(root, csvs[0])
        if csvs:
            raise UserError(f"{root}: {len(csvs)} CSV files ({', '.join(csvs[:5])}); pass the one to use")
        raise UserError(f"{root}: no CSV file found; pass the CSV file itself")
    raise UserError(f"{root}: no such file or folder")


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         data_root: Optional[str | os.PathLike] = None) -> LoadResult:
    """Records from a label CSV (``root`` = the CSV, or a folder holding exactly one CSV)."""
    csv_path = _find_csv(os.fsdecode(root))
    base = os.path.dirname(os.path.abspath(csv_path))
    dataset_root = os.fsdecode(data_root) if data_root is not None else base
    if not os.path.isdir(dataset_root):
        raise UserError(f"dataset root {dataset_root} is not a folder (check --data-root)")
    hint = "" if data_root is not None else f" (relative paths are read from {base}; change with --data-root)"
    col = Collector(dataset_root, FORMAT, label_map, confine=False, missing_hint=hint)
    rows = read_table(csv_path, label_map)
    if any(row.group or row.original for row in rows):
        col.grouping = GROUP_DATASET  # else names may still tell (sources.grouping)
    for row in rows:
        if row.fields:
            col.problem(row.where, f"row has {row.fields} field(s), expected a file and a label", MALFORMED)
            continue
        split = normalize_split(row.split)
        if row.group:
            group = row.group
        elif row.original:
            group = col.group_key(row.original, col.root)
        else:
            group = None
        extra = {"original": col.group_key(row.original, col.root)} if row.original else {}
        rec = col.add(row.file, row.label, row.where, base_dir=col.root, split=split, group=group,
                      extra=extra, method=row.method)
        if rec is not None and row.split and split is None:
            rec.extra["split_raw"] = row.split
    return col.result(FORMAT)
