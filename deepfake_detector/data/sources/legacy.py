"""``legacy`` source: the known reference implementation's layout.

    ROOT/Models/video_files.pkl     pickled list of video paths (often absolute paths of the machine
                                    that made it, e.g. /content/dataset/xyz.mp4)
    ROOT/Data/Gobal_metadata.csv    no header, ``file,label`` with a bare file name (sic: "Gobal")

Entries are matched to the metadata by file name. A path that exists (absolute, or relative to the
dataset root, ``..`` included: the list is the user's own) is used as is; otherwise the file is looked
up by name under the root (an index built once), so a pickle made on Colab works on the user's
machine. ``metadata``, ``video_list`` and ``video_dir`` override the three locations (``video_dir``
is then the folder searched by name). Groups: an ``original`` column in the metadata when it has a
header with one, else FF++/Celeb-DF style names (the reference's data is mostly FF++: ``000.mp4``,
``000_003.mp4``), else one per video (``sources.grouping``).

The pickle is untrusted input: ``SafeListUnpickler`` refuses every global and persistent id, so a
payload can never import or call anything, and the result must be a flat list/tuple of strings.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections.abc import Mapping
from typing import Optional

from ...errors import UnsafeFileError, UserError
from ..records import GROUP_DATASET, LoadResult
from .base import (
    BAD_LABEL,
    MALFORMED,
    MAX_PICKLE_BYTES,
    MISSING,
    Collector,
    find_child,
    read_file_bytes,
    resolve_label,
    size_limit,
    walk_files,
)
from .csv_source import read_table

log = logging.getLogger(__name__)

FORMAT = "legacy"
VIDEO_LIST = os.path.join("Models", "video_files.pkl")
METADATA = os.path.join("Data", "Gobal_metadata.csv")


class SafeListUnpickler(pickle.Unpickler):
    """An unpickler that can only build builtin containers and strings.

    Lists, tuples and strings are native pickle opcodes; everything that could run code (classes,
    functions, ``__reduce__`` payloads, extension codes, persistent ids) goes through ``find_class``
    or ``persistent_load``, which refuse.
    """

    def find_class(self, module: str, name: str):  # noqa: ANN201 - signature fixed by pickle
        raise UnsafeFileError(
            f"refused to load a pickle that references {module}.{name}: the video list must be a plain "
            "list of path strings; nothing from the file was executed")

    def persistent_load(self, pid: object):  # noqa: ANN201
        raise UnsafeFileError("refused to load a pickle with persistent ids: the video list must be a "
                              "plain list of path strings; nothing from the file was executed")


def load_video_list(path: str | os.PathLike) -> list[str]:
    """Read a pickled list of paths safely (see ``SafeListUnpickler``)."""
    shown = os.fsdecode(path)
    data = read_file_bytes(path, size_limit(MAX_PICKLE_BYTES, "a pickled list of video paths",
                                            UnsafeFileError))
    try:
        obj = SafeListUnpickler(io.BytesIO(data), encoding="utf-8", errors="surrogateescape").load()
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{shown}: {exc}") from None
    except RecursionError:
        raise UnsafeFileError(f"{shown}: refused: nested too deeply to be a list of paths") from None
    except Exception as exc:  # corrupt/truncated pickles raise many types; none may escape as a crash
        raise UserError(f"{shown}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, (list, tuple)):
        raise UnsafeFileError(f"{shown}: refused: expected a list of video paths, found a "
                              f"{type(obj).__name__}")
    out = []
    for i, item in enumerate(obj):
        if isinstance(item, bytes):
            item = os.fsdecode(item)
        if not isinstance(item, str):
            raise UnsafeFileError(f"{shown}: refused: item {i} is a {type(item).__name__}, expected a "
                                  "path string")
        out.append(item)
    return out


def _exists(path: str) -> bool:
    try:
        return os.path.lexists(path)
    except (OSError, ValueError):
        return False


def _parts(path: str) -> list[str]:
    """Path components, accepting the ``/`` and ``\\`` of whichever machine wrote the pickle."""
    return [p for p in path.replace("\\", "/").split("/") if p]


class _NameIndex:
    """Files under the dataset root by base name, built on first use."""

    def __init__(self, root: str, collector: Collector) -> None:
        self.root, self.collector = root, collector
        self._index: Optional[dict[str, list[str]]] = None

    def find(self, entry: str) -> tuple[Optional[str], str]:
        if self._index is None:
            self._index = {}
            for path in walk_files(self.root, self.collector):
                self._index.setdefault(os.path.basename(path), []).append(path)
        parts = _parts(entry)
        cands = self._index.get(parts[-1], []) if parts else []
        if not cands:
            return None, (f"no file of that name under {self.root} (point --video-dir at the folder "
                          "that holds the videos)")
        if len(cands) == 1:
            return cands[0], ""

        def common_suffix(p: str) -> int:
            cp = _parts(os.path.relpath(p, self.root))
            n = 0
            while n < min(len(cp), len(parts)) and cp[-1 - n] == parts[-1 - n]:
                n += 1
            return n

        scores = sorted(((common_suffix(c), c) for c in cands), reverse=True)
        if scores[0][0] > scores[1][0]:
            return scores[0][1], ""
        return None, (f"{len(cands)} files of that name under {self.root}; cannot tell which (point "
                      "--video-dir at the folder that holds the right one)")


_Labels = dict[str, tuple[str, str, Optional[str]]]  # file name -> (label, where, original)


def _locate(root: str, metadata: Optional[str | os.PathLike], video_list: Optional[str | os.PathLike],
            video_dir: Optional[str | os.PathLike]) -> tuple[str, str, str]:
    """``(video list, metadata CSV, folder the videos are searched in)``; a missing one is a UserError
    naming the flag that gives it."""
    list_path = os.fsdecode(video_list) if video_list is not None else os.path.join(root, VIDEO_LIST)
    if metadata is not None:
        meta_path = os.fsdecode(metadata)
    else:  # the reference's spelling first, then the corrected one, in any case
        data_dir = find_child(root, "Data") or os.path.join(root, "Data")
        meta_path = (find_child(data_dir, "Gobal_metadata.csv") or find_child(data_dir, "Global_metadata.csv")
                     or os.path.join(root, METADATA))
    for what, p, flag in (("video list", list_path, "--video-list"), ("metadata", meta_path, "--metadata")):
        if not os.path.isfile(p):
            raise UserError(f"legacy layout: {what} {p} not found (give it with {flag})")
    data_root = os.path.abspath(os.fsdecode(video_dir)) if video_dir is not None else root
    if not os.path.isdir(data_root):
        raise UserError(f"video folder {data_root} is not a folder (check --video-dir)")
    return list_path, meta_path, data_root


def _read_labels(meta_path: str, label_map: Optional[Mapping[str, str]], col: Collector) -> _Labels:
    """Labels (and originals) by file name from the metadata CSV; bad rows become problems."""
    labels: _Labels = {}
    for row in read_table(meta_path, label_map):
        if row.fields:
            col.problem(row.where, "metadata row needs a file and a label", MALFORMED)
            continue
        parts = _parts(row.file)
        if not parts:
            col.problem(row.where, "empty file name", MALFORMED)
            continue
        label, why = resolve_label(row.label, label_map)
        if label is None and why != "numeric":
            col.problem(row.where, why, BAD_LABEL)
            continue
        name = parts[-1]
        if name in labels and labels[name][0] != (label or row.label):
            col.problem(row.where, f"{name} is labelled {labels[name][0]} at {labels[name][1]} and "
                        f"{label or row.label} here; kept the first", BAD_LABEL)
            continue
        # numeric labels are stored raw and reported once (summarised) when a video uses them
        labels.setdefault(name, (label or row.label, row.where, row.original))
    return labels


def _match(entries: list[str], labels: _Labels, list_name: str, meta_name: str, data_root: str,
           col: Collector) -> list[tuple[str, tuple[str, str, Optional[str]], str]]:
    """``(path, label entry, where)`` per usable list entry: the path as written when it exists (the
    list is the user's own), else the file of that name under ``data_root``."""
    index = _NameIndex(data_root, col)
    pending = []
    for i, entry in enumerate(entries):
        where = f"{list_name}[{i}]"
        parts = _parts(entry)
        if not parts:
            col.problem(where, "empty path in the video list", MALFORMED)
            continue
        meta = labels.get(parts[-1])
        if meta is None:
            col.problem(where, f"{parts[-1]}: no label for it in {meta_name}", BAD_LABEL, entry)
            continue
        direct = col.lexical(entry, data_root) if "\x00" not in entry else None
        if direct is not None and _exists(direct):
            path = direct  # regular or not: ``col.add`` refuses what is no regular file
        else:
            path, why = index.find(entry)
            if path is None:
                col.problem(where, f"{entry}: {why}", MISSING, entry)
                continue
        pending.append((path, meta, where))
    return pending


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         metadata: Optional[str | os.PathLike] = None, video_list: Optional[str | os.PathLike] = None,
         video_dir: Optional[str | os.PathLike] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    list_path, meta_path, data_root = _locate(root, metadata, video_list, video_dir)
    entries = load_video_list(list_path)
    col = Collector(data_root, FORMAT, label_map, confine=False)
    labels = _read_labels(meta_path, label_map, col)
    pending = _match(entries, labels, os.path.basename(list_path), os.path.basename(meta_path), data_root,
                     col)
    by_name: dict[str, str] = {}
    added = []
    for path, (label, _, original), where in pending:
        rec = col.add(path, label, where)
        if rec is not None:
            by_name.setdefault(os.path.basename(rec.rel_path), rec.rel_path)
            added.append((rec, original))
    if any(original for _, original in added):
        col.grouping = GROUP_DATASET
    for rec, original in added:
        if original:
            oname = _parts(original)[-1] if _parts(original) else original
            rec.group = by_name.get(oname, oname)
            rec.extra["original"] = rec.group
    return col.result(FORMAT)
