"""``celebdf`` source: Celeb-DF (v1/v2).

    ROOT/Celeb-real/id0_0003.mp4          REAL  (celebrity id0, video 0003)
    ROOT/YouTube-real/00000.mp4           REAL
    ROOT/Celeb-synthesis/id0_id16_0003.mp4 FAKE (video id0_0003 with the face of id16 swapped in)
    ROOT/List_of_testing_videos.txt       "<1 real|0 fake> <folder>/<file>.mp4" per line: the test split

Listed videos get split ``test``; the others split None (training data; the trainer carves its
validation set out of them). ``test_list`` overrides the list's location. List paths are relative to
the dataset root; absolute paths and ``..`` are taken as written, and a listed video outside the three
folders is added with the list's label.

Every FAKE's ``method`` is ``Celeb-synthesis`` (the dataset's one synthesis method). Groups: by the
target identity, the celebrity whose video was manipulated: ``celebdf:id0`` for
``id0_0003.mp4`` and for every ``id0_<src>_<n>.mp4`` made from id0's videos, so a fake and its
original never straddle a split. (Linking source identities too would merge all 59 celebrities into
one group.) Each YouTube-real video is its own group ``celebdf:youtube/<name>``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Optional

from ...errors import UserError
from ..records import FAKE, GROUP_DATASET, REAL, LoadResult
from .base import MALFORMED, MISSING, Collector, find_child, read_file_bytes, text_limit, walk_files

log = logging.getLogger(__name__)

FORMAT = "celebdf"
FOLDERS = (("Celeb-real", REAL), ("YouTube-real", REAL), ("Celeb-synthesis", FAKE))
TEST_LIST = "List_of_testing_videos.txt"
METHOD = "Celeb-synthesis"  # Celeb-DF's fakes come from one (improved) face-swap synthesis method
_REAL = re.compile(r"^(id\d+)_(\d+)$", re.IGNORECASE)
_FAKE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$", re.IGNORECASE)


def parse_test_line(line: str) -> Optional[tuple[str, str]]:
    """``(label, path)`` of one ``List_of_testing_videos.txt`` line (``1`` = real, ``0`` = fake in
    Celeb-DF's own convention), or None when the line is not of that form."""
    parts = line.strip().split(None, 1)
    if len(parts) != 2 or parts[0] not in ("0", "1") or not parts[1].strip():
        return None
    return (REAL if parts[0] == "1" else FAKE), parts[1].strip()


def read_test_list(path: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    """``([(label, path as written, where)], [(where, bad line)])`` of a Celeb-DF list of testing videos."""
    data = read_file_bytes(path, text_limit("a list of testing videos"))
    lines = data.decode("utf-8-sig", errors="surrogateescape").splitlines()
    name = os.path.basename(path)
    entries, bad = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parsed = parse_test_line(line)
        if parsed is None:
            bad.append((f"{name}:{i}", line.strip()[:80]))
        else:
            entries.append((*parsed, f"{name}:{i}"))
    return entries, bad


def _read_test_list(path: str, col: Collector) -> dict[str, tuple[str, str, str]]:
    """Absolute path (case-folded) -> (label, where, path as written) of the testing videos. Paths are
    relative to the dataset root; absolute paths and ``..`` are taken as written (the list may be the
    user's own)."""
    entries, bad = read_test_list(path)
    for where, line in bad:
        col.problem(where, f"expected '<1 real|0 fake> <folder>/<file>.mp4', got {line!r}", MALFORMED)
    out = {}
    for label, raw, where in entries:
        text = raw.replace("\\", "/") if os.sep == "/" else raw  # a list edited on Windows
        out.setdefault(os.path.normcase(col.lexical(text, col.root)).lower(), (label, where, text))
    return out


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         test_list: Optional[str | os.PathLike] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    folders = [(find_child(root, name), label) for name, label in FOLDERS]
    folders = [(f, label) for f, label in folders if f and os.path.isdir(f)]
    if not folders:
        raise UserError(f"{root}: no Celeb-real/, YouTube-real/ or Celeb-synthesis/ folder (Celeb-DF format)")
    col = Collector(root, FORMAT, confine=False)
    col.grouping = GROUP_DATASET  # target identities from Celeb-DF's own names
    list_path = os.fsdecode(test_list) if test_list is not None else find_child(root, TEST_LIST)
    if test_list is not None and not os.path.isfile(list_path):
        raise UserError(f"test list {list_path} not found (check --test-list)")
    tests = _read_test_list(list_path, col) if list_path and os.path.isfile(list_path) else {}
    used: set[str] = set()
    for folder, label in folders:
        youtube = os.path.basename(folder).lower() == "youtube-real"
        for path in walk_files(folder, col):
            key = os.path.normcase(path).lower()
            listed = tests.get(key)
            split = None
            if listed is not None:
                used.add(key)
                split = "test"
                if listed[0] != label:
                    log.warning("Celeb-DF: %s says %s is %s; its folder says %s (kept %s)",
                                listed[1], col.rel(path), listed[0], label, label)
            _add(col, path, label, split, youtube)
    for key, (label, where, raw) in sorted(tests.items()):
        if key in used:
            continue
        lex = col.lexical(raw, col.root)
        if os.path.lexists(lex):  # listed, but outside the three folders: the list's label stands
            _add(col, lex, label, "test", False, where)
        else:
            col.problem(where, f"testing video {raw} not found under {root} (check --test-list and DATA)",
                        MISSING)
    return col.result(FORMAT)


def _add(col: Collector, path: str, label: str, split: Optional[str], youtube: bool,
         where: Optional[str] = None) -> None:
    """One Celeb-DF video, grouped by its target identity (see the module docstring)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if youtube:
        group = f"celebdf:youtube/{stem}"
    else:
        m = (_FAKE if label == FAKE else _REAL).match(stem)
        group = f"celebdf:{m.group(1).lower()}" if m else None
    extra = {}
    if label == FAKE and (m := _FAKE.match(stem)):
        extra["original"] = f"Celeb-real/{m.group(1)}_{m.group(3)}.mp4"
    col.add(path, label, where or col.rel(path), split=split, group=group, extra=extra, label_is_final=True,
            method=METHOD)
