"""``folders`` source: one folder per label.

    ROOT/real/**.mp4   ROOT/fake/**.mp4            (folder names in any case: Real, FAKE, ...)
    ROOT/train/real/...  ROOT/val/fake/...  ROOT/test/...   (optional split level above the labels)

Videos are found recursively by extension. Symlinked files are followed wherever they point (a folder
of links into shared storage is common on clusters); symlinked folders below the label folders are
not (no loops). The layout says nothing about which fake came from which real: FF++/Celeb-DF style
names group them (``sources.grouping``), else each video is its own group.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional

from ...errors import UserError
from ..records import FAKE, REAL, LoadResult
from .base import Collector, normalize_split, walk_files

FORMAT = "folders"
_LABEL_DIRS = {"real": REAL, "fake": FAKE}


def _label_dirs(folder: str) -> list[tuple[str, str]]:
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    out = []
    for entry in entries:
        label = _LABEL_DIRS.get(entry.lower())
        if label and os.path.isdir(os.path.join(folder, entry)):
            out.append((os.path.join(folder, entry), label))
    return out


def layout(root: str) -> list[tuple[str, str, Optional[str]]]:
    """``(folder, label, split)`` triples of a folders-format root; empty when it is not one."""
    found = [(d, lab, None) for d, lab in _label_dirs(root)]
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return found
    for entry in entries:
        split = normalize_split(entry)
        path = os.path.join(root, entry)
        if split and os.path.isdir(path):
            found.extend((d, lab, split) for d, lab in _label_dirs(path))
    return found


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    dirs = layout(root)
    if not dirs:
        raise UserError(f"{root}: no real/ or fake/ folder found (folders format)")
    col = Collector(root, FORMAT, confine=False)
    for folder, label, split in dirs:
        for path in walk_files(folder, col):
            col.add(path, label, col.rel(path), split=split, label_is_final=True)
    return col.result(FORMAT)
