"""The one record type every dataset source produces, and label helpers.

Labels are the strings ``REAL``/``FAKE`` at the edges of the program; inside tensors class index
1 means FAKE (``label_to_index``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..constants import CLASS_NAMES, FAKE, LABELS, REAL, SPLITS

__all__ = ["REAL", "FAKE", "LABELS", "CLASS_NAMES", "SPLITS", "normalize_label", "label_to_index",
           "index_to_label", "VideoRecord", "RecordProblem", "LoadResult", "GROUPINGS", "GROUP_DATASET",
           "GROUP_NAMES", "GROUP_PATTERN", "PER_VIDEO"]

# ``LoadResult.grouping``: where the records' groups come from, so a split can say how it kept a fake
# and its original together (or that it could not).
GROUP_DATASET = "dataset"  # the dataset says: group/original columns, DFDC "original", FF++/Celeb-DF ids
GROUP_NAMES = "names"  # inferred from FF++/Celeb-DF style file names (000.mp4 + 000_003.mp4, ...)
GROUP_PATTERN = "group-by"  # the user's --group-by REGEX on the file names
PER_VIDEO = "per-video"  # nothing known: every video is its own group (a fake may meet its original)
GROUPINGS = (GROUP_DATASET, GROUP_NAMES, GROUP_PATTERN, PER_VIDEO)


def normalize_label(value: object) -> Optional[str]:
    """Map ``real``/``Fake``/... to ``REAL``/``FAKE``; None for anything else (numbers included).

    Numeric labels are ambiguous (the known reference maps FAKE=0, REAL=1, DFDC-derived CSVs use
    1=FAKE), so they are only accepted by sources given an explicit mapping.
    """
    if not isinstance(value, str):
        return None
    v = value.strip().upper()
    return v if v in LABELS else None


def label_to_index(label: str) -> int:
    return CLASS_NAMES.index(label)


def index_to_label(index: int) -> str:
    return CLASS_NAMES[int(index)]


@dataclass
class VideoRecord:
    """One input video as a dataset describes it.

    ``path`` is absolute (resolved against the dataset root); ``rel_path`` is the path relative to the
    root, used as the stable key in the cache manifest. ``group`` ties every fake to the original it
    was made from, so splits never put an identity on both sides. ``label`` may be None for unlabelled
    inputs (predict). ``method`` names a FAKE's manipulation method where the dataset says it (FF++'s
    method folder, a ``method`` column...), so evaluation can score each method; "" for REAL videos.
    """

    path: str
    label: Optional[str]
    split: Optional[str] = None
    group: Optional[str] = None
    rel_path: Optional[str] = None
    source: str = ""
    extra: dict = field(default_factory=dict)
    method: str = ""

    def __post_init__(self) -> None:
        if self.label is not None and self.label not in LABELS:
            raise ValueError(f"label must be REAL or FAKE, got {self.label!r}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.rel_path is None:
            self.rel_path = self.path
        if self.group is None:
            self.group = self.rel_path
        self.method = str(self.method or "").strip()[:80] if self.label == FAKE else ""


@dataclass
class RecordProblem:
    """A record a source could not accept (missing file, escapes the root, unknown label...)."""

    where: str  # file and line/key the problem comes from
    reason: str
    path: Optional[str] = None
    # what went wrong, for grouping and manifest status: missing | refused | duplicate | label |
    # malformed | unreadable (see ``deepfake_detector.data.sources.base``); "" when unspecified
    kind: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class LoadResult:
    """What a source returns: good records plus per-record problems (never fatal)."""

    records: list[VideoRecord]
    problems: list[RecordProblem] = field(default_factory=list)
    format: str = ""
    root: str = ""  # absolute dataset root the records' rel_path values are relative to
    grouping: str = PER_VIDEO  # one of GROUPINGS: where ``group`` came from (see docs/preprocess.md)
    grouping_note: str = ""  # one line for people: e.g. how many files a --group-by pattern matched
