"""Groups from file names: FF++ / Celeb-DF naming conventions, and the user's ``--group-by REGEX``.

A split must keep a fake and the original it was made from on the same side, or validation measures
memory instead of detection. Datasets that say which video a fake came from (a ``group``/``original``
column, DFDC metadata, the FF++ and Celeb-DF layouts) are grouped by their sources. Lists and folders
that say nothing often still carry the answer in their file names; this module reads it:

- FF++ names (``000.mp4`` real, ``000_003.mp4`` fake of target 000 with source 003): the ids a fake
  links are joined (union-find), group ``ffpp:<smallest id>``, exactly as the ``ffpp`` source does;
  DeepFakeDetection names (``01__scene.mp4``, ``01_02__scene__ABC.mp4``) by target actor
  ``ffpp-dfd:<actor>``;
- Celeb-DF names (``id0_0003.mp4``, ``id0_id16_0003.mp4``) by target identity ``celebdf:id0``.

Names are used only when they link at least two records (otherwise they say nothing). A ``--group-by``
pattern is the user's own rule and wins over every other source for the files it matches: the first
capture group (or the whole match) is the group. It is searched in the file name, or, when the pattern
contains ``/``, in the path relative to the dataset root.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Optional

from ...errors import UserError
from ..records import GROUP_NAMES, GROUP_PATTERN, PER_VIDEO, LoadResult, VideoRecord

log = logging.getLogger(__name__)

FFPP_REAL = re.compile(r"^(\d+)$")
FFPP_FAKE = re.compile(r"^(\d+)_(\d+)$")
DFD_REAL = re.compile(r"^(\d+)__(.+)$")
DFD_FAKE = re.compile(r"^(\d+)_(\d+)__(.+)$")
CELEB_REAL = re.compile(r"^(id\d+)_(\d+)$", re.IGNORECASE)
CELEB_FAKE = re.compile(r"^(id\d+)_(id\d+)_(\d+)$", re.IGNORECASE)

# formats whose layout says nothing about groups, so file names are the only clue
NAME_FORMATS = ("csv", "legacy", "folders")


class UnionFind:
    """Sets of ids; the smallest id names a set, so group names do not depend on reading order."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


def _stem(rec: VideoRecord) -> str:
    return os.path.splitext(os.path.basename(rec.rel_path or rec.path))[0]


def _name_key(stem: str, uf: UnionFind) -> Optional[tuple[str, str]]:
    """``(scheme, id)`` a file name belongs to (FF++ ids are joined in ``uf``), or None."""
    if m := FFPP_REAL.match(stem):
        return "ffpp", m.group(1)
    if m := FFPP_FAKE.match(stem):
        uf.union(m.group(1), m.group(2))
        return "ffpp", m.group(1)
    if m := DFD_FAKE.match(stem) or DFD_REAL.match(stem):
        return "ffpp-dfd", m.group(1)
    if m := CELEB_FAKE.match(stem) or CELEB_REAL.match(stem):
        return "celebdf", m.group(1).lower()
    return None


def name_groups(records: Sequence[VideoRecord]) -> int:
    """Group ``records`` by FF++ / Celeb-DF style names; returns how many were regrouped (0 when the
    names link no two records, in which case nothing changes)."""
    uf = UnionFind()
    keys = [(rec, _name_key(_stem(rec), uf)) for rec in records]  # every union made before any find
    named = []
    for rec, key in keys:
        if key is not None:
            scheme, ident = key
            named.append((rec, f"{scheme}:{uf.find(ident) if scheme == 'ffpp' else ident}"))
    sizes = Counter(group for _, group in named)
    if not sizes or max(sizes.values()) < 2:
        return 0
    for rec, group in named:
        rec.group = group
    return len(named)


def compile_group_by(pattern: Optional[str]) -> Optional[re.Pattern]:
    """The ``--group-by`` regular expression, or a ``UserError`` saying what is wrong with it."""
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern.strip():
        raise UserError("--group-by needs a regular expression, e.g. --group-by '^(\\d+)' (the first "
                        "capture group, or the whole match, of each file name is its group)")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--group-by {pattern!r} is not a valid regular expression ({exc})") from None


def pattern_groups(records: Sequence[VideoRecord], regex: re.Pattern) -> int:
    """Set the group of every record whose name matches ``regex``; returns how many matched."""
    on_path = "/" in regex.pattern
    matched = 0
    for rec in records:
        rel = rec.rel_path or rec.path
        m = regex.search(rel if on_path else rel.rsplit("/", 1)[-1])
        value = (m.group(1) if regex.groups else m.group(0)) if m else None
        if value:
            rec.group = value
            matched += 1
    return matched


def apply_grouping(result: LoadResult, fmt: str, group_by: Optional[re.Pattern] = None) -> None:
    """Fill in groups the format did not give: from names (list and folder formats), then from the
    user's pattern; ``result.grouping``/``grouping_note`` say which applied."""
    records = result.records
    if result.grouping == PER_VIDEO and fmt in NAME_FORMATS:
        n = name_groups(records)
        if n:
            result.grouping = GROUP_NAMES
            result.grouping_note = (f"{n} of {len(records)} video(s) grouped by FF++/Celeb-DF style file "
                                    "names (a fake with its original)")
    if group_by is None or not records:
        return
    fallback = result.grouping
    n = pattern_groups(records, group_by)
    if n == 0:
        shown = ", ".join(repr(r.rel_path.rsplit("/", 1)[-1]) for r in records[:3])
        where = "path relative to the dataset root" if "/" in group_by.pattern else "file name"
        raise UserError(f"--group-by {group_by.pattern!r} matched none of the {len(records)} video(s) "
                        f"(e.g. {shown}); it is searched in each {where}")
    result.grouping = GROUP_PATTERN
    result.grouping_note = f"--group-by {group_by.pattern!r} matched {n} of {len(records)} video(s)"
    if n < len(records):
        result.grouping_note += f"; the others are grouped {_describe(fallback)}"
        log.warning("%s", result.grouping_note)


def _describe(grouping: str) -> str:
    return {PER_VIDEO: "one per video", GROUP_NAMES: "by FF++/Celeb-DF style names"}.get(
        grouping, "as the dataset says")
