"""``celebdf`` source: Celeb-DF (v1/v2).

    ROOT/Celeb-real/id0_0003.mp4          REAL  (celebrity id0, video 0003)
    ROOT/YouTube-real/00000.mp4           REAL
    ROOT/Celeb-synthesis/id0_id16_0003.mp4 FAKE (video id0_0003 with the face of id16 swapped in)
    ROOT/List_of_testing_videos.txt       "<1 real|0 fake> <folder>/<file>.mp4" per line: the test split

Listed videos get split ``test``; the others split None (training data; the trainer carves its
validation set out of them). ``test_list`` overrides the list's location.

Groups: by the target identity, the celebrity whose video was manipulated: ``celebdf:id0`` for
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
from ..records import FAKE, REAL, LoadResult
from .base import MALFORMED, MISSING, Collector, find_child, read_file_bytes, text_limit, walk_files

log = logging.getLogger(__name__)

FORMAT = "celebdf"
FOLDERS = (("Celeb-real", REAL), ("YouTube-real", REAL), ("Celeb-synthesis", FAKE))
TEST_LIST = "List_of_testing_videos.txt"
_REAL = re.compile(r"^(id\d+)_(\d+)$", re.IGNORECASE)
_FAKE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$", re.IGNORECASE)


def _read_test_list(path: str, col: Collector) -> dict[str, tuple[str, str]]:
    """dataset-relative path (lower case) -> (label, where) of the testing videos."""
    data = read_file_bytes(path, text_limit("a list of testing videos"))
    lines = data.decode("utf-8-sig", errors="surrogateescape").splitlines()
    name = os.path.basename(path)
    out = {}
    for i, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        where = f"{name}:{i}"
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0] not in ("0", "1"):
            col.problem(where, f"expected '<1 real|0 fake> <folder>/<file>.mp4', got {line[:80]!r}",
                        MALFORMED)
            continue
        rel = os.path.normpath(parts[1].strip().replace("\\", "/")).replace(os.sep, "/")
        out[rel.lower()] = (REAL if parts[0] == "1" else FAKE, where)
    return out


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         test_list: Optional[str | os.PathLike] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    folders = [(find_child(root, name), label) for name, label in FOLDERS]
    folders = [(f, label) for f, label in folders if f and os.path.isdir(f)]
    if not folders:
        raise UserError(f"{root}: no Celeb-real/, YouTube-real/ or Celeb-synthesis/ folder (Celeb-DF format)")
    col = Collector(root, FORMAT)
    list_path = os.fsdecode(test_list) if test_list is not None else find_child(root, TEST_LIST)
    if test_list is not None and not os.path.isfile(list_path):
        raise UserError(f"test list {list_path} not found")
    tests = _read_test_list(list_path, col) if list_path and os.path.isfile(list_path) else {}
    used = set()
    for folder, label in folders:
        youtube = os.path.basename(folder).lower() == "youtube-real"
        for path in walk_files(folder, col):
            rel = col.rel(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            listed = tests.get(rel.lower())
            split = None
            if listed is not None:
                used.add(rel.lower())
                split = "test"
                if listed[0] != label:
                    log.warning("Celeb-DF: %s says %s is %s; its folder says %s (kept %s)",
                                listed[1], rel, listed[0], label, label)
            if youtube:
                group = f"celebdf:youtube/{stem}"
            else:
                m = (_FAKE if label == FAKE else _REAL).match(stem)
                group = f"celebdf:{m.group(1).lower()}" if m else None
            extra = {}
            if label == FAKE and (m := _FAKE.match(stem)):
                extra["original"] = f"Celeb-real/{m.group(1)}_{m.group(3)}.mp4"
            col.add(path, label, rel, split=split, group=group, extra=extra, label_is_final=True)
    for rel, (_, where) in sorted(tests.items()):
        if rel not in used:
            col.problem(where, f"testing video {rel} not found under {root}", MISSING)
    return col.result(FORMAT)
