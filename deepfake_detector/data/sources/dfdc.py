"""``dfdc`` source: every ``metadata.json`` under a root (DFDC's ``dfdc_train_part_N/metadata.json``).

Each JSON maps a file name (relative to the JSON's folder) to ``{"label": "REAL"|"FAKE", "split":
..., "original": <file name of the real video it was made from, or null>, "method": <the FAKE's
manipulation method, optional; "manipulation" is read too>}``. Unknown split values
become None; DFDC's training parts say ``train`` for every video, so the trainer still has to carve a
validation set out of them (group-aware).

Group: a fake's group is the dataset-relative path of its ``original`` (resolved from the same
folder), a real's group is its own path, so a fake and its original always fall on the same side
of any split. ``root`` may also be a single JSON file (its folder is then the dataset root).

The metadata ships with a downloaded dataset, so its entries must stay inside the dataset root
(``data_root`` widens it); the files there may be symlinks to anywhere.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Optional

from ...errors import UserError
from ..records import FAKE, GROUP_DATASET, LoadResult
from .base import MALFORMED, MAX_JSON_BYTES, Collector, normalize_split, read_file_bytes, size_limit

log = logging.getLogger(__name__)

FORMAT = "dfdc"
METADATA_NAME = "metadata.json"
_KNOWN = ("label", "split", "original", "method")
# the manipulation method of a FAKE: ``method``, else the demo's (and some exports') ``manipulation``
METHOD_KEYS = ("method", "manipulation")


def find_metadata(root: str, max_depth: Optional[int] = None, max_dirs: Optional[int] = None) -> list[str]:
    """``metadata.json`` files under ``root`` (sorted, symlinked folders not followed).

    ``max_depth``/``max_dirs`` bound the search (format detection on a huge tree must stay quick).
    """
    found = []
    base_depth = root.rstrip(os.sep).count(os.sep)
    for seen_dirs, (dirpath, dirnames, filenames) in enumerate(os.walk(root, followlinks=False), 1):
        dirnames.sort()
        if METADATA_NAME in filenames:
            found.append(os.path.join(dirpath, METADATA_NAME))
        if max_depth is not None and dirpath.rstrip(os.sep).count(os.sep) - base_depth >= max_depth:
            dirnames[:] = []
        if max_dirs is not None and seen_dirs >= max_dirs:
            break
    return sorted(found)


def read_json(path: str) -> object:
    """Parse a JSON file; unreadable or invalid JSON is one ``UserError`` line."""
    data = read_file_bytes(path, size_limit(MAX_JSON_BYTES, "a JSON metadata file"))
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
                        ) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not valid JSON ({type(exc).__name__}: {exc})") from None


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         data_root: Optional[str | os.PathLike] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    if os.path.isfile(root):
        files = [root]
        dataset_root = os.path.dirname(root)
    elif os.path.isdir(root):
        files = find_metadata(root)
        dataset_root = root
        if not files:
            raise UserError(f"{root}: no {METADATA_NAME} found (DFDC format); pick another --format")
    else:
        raise UserError(f"{root}: no such file or folder")
    if data_root is not None:
        dataset_root = os.path.abspath(os.fsdecode(data_root))
    col = Collector(dataset_root, FORMAT, label_map, confine=True, escape_fix=(
        "a downloaded dataset's metadata.json may only name files inside it (pass --data-root with a "
        "folder that holds them all, or list such files in a CSV)"))
    for meta in files:
        _load_one(meta, col)
    if any("original" in r.extra for r in col.records):
        col.grouping = GROUP_DATASET  # each fake with the original its metadata names
    return col.result(FORMAT)


def _load_one(meta: str, col: Collector) -> None:
    data = read_json(meta)
    if not isinstance(data, dict):
        raise UserError(f"{meta}: expected a JSON object mapping file names to entries, "
                        f"found a {type(data).__name__}")
    folder = os.path.dirname(meta)
    shown = col.rel(meta) if meta.startswith(col.root + os.sep) else meta
    for key, entry in data.items():
        where = f"{shown}[{key!r}]" if len(key) < 200 else f"{shown}[{key[:200]!r}...]"
        if not isinstance(entry, dict):
            col.problem(where, f"entry must be an object with a label, found {type(entry).__name__}",
                        MALFORMED)
            continue
        if "label" not in entry:
            col.problem(where, "entry has no 'label'", MALFORMED)
            continue
        original = entry.get("original")
        if original is not None and not isinstance(original, str):
            col.problem(where, f"'original' must be a file name or null, found {type(original).__name__}",
                        MALFORMED)
            continue
        raw_split = entry.get("split")
        split = normalize_split(raw_split)
        label = col.label(entry.get("label"), where)
        if label is None:
            continue
        group = col.group_key(original, folder) if label == FAKE and original else None
        extra = {k: v if not isinstance(v, str) else v[:200] for k, v in list(entry.items())[:20]
                 if k not in _KNOWN and isinstance(v, (str, int, float, bool))}  # e.g. "manipulation"
        if group:
            extra["original"] = group
        if raw_split is not None and split is None:
            extra["split_raw"] = str(raw_split)[:40]
        method = next((entry[k] for k in METHOD_KEYS if isinstance(entry.get(k), str) and entry[k].strip()),
                      "")
        col.add(key, label, where, base_dir=folder, split=split, group=group, extra=extra,
                label_is_final=True, method=method[:80])
