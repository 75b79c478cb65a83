"""Shared machinery for dataset sources: path safety, labels, splits, problems.

Every source turns what a dataset says ("this file is FAKE, made from that one") into
``VideoRecord`` objects through one ``Collector``, so every format gets the same guarantees:

- lists the user wrote (a CSV, the legacy pickled list, a text list) may name any regular file:
  absolute paths and ``..`` are theirs to use, and symlinks to regular files are followed everywhere
  (clusters keep datasets as links). Metadata that ships with a downloaded dataset (``confine=True``:
  DFDC ``metadata.json``) may not name a path lexically outside its root; such an entry is refused,
  never opened, with the flag that widens the root;
- only regular files become records: a directory, FIFO, device or socket in place of a video, and any
  file under the ``/proc`` and ``/sys`` pseudo-filesystems, is refused wherever it comes from;
- a missing file, a symlink loop, an unknown label, a malformed entry or a second mention of the same
  file is one ``RecordProblem`` line, never fatal, and every refusal names its fix;
- numeric labels are refused unless the user gave an explicit mapping (the known reference maps
  FAKE=0, REAL=1 while DFDC-derived CSVs use 1=FAKE), reported once for all rows, not per row.

Sources never open or decode videos; they only ``stat`` them.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Optional

from ...constants import VIDEO_EXTENSIONS
from ...errors import UserError
from ..records import FAKE, LABELS, PER_VIDEO, REAL, LoadResult, RecordProblem, VideoRecord

log = logging.getLogger(__name__)


# RecordProblem.kind values. ``missing`` and ``refused`` match manifest statuses of the same name.
MISSING = "missing"  # the file does not exist
REFUSED = "refused"  # escapes the dataset root, or is not a regular file
UNREADABLE = "unreadable"  # stat failed: permission denied, symlink loop, ...
DUPLICATE = "duplicate"  # the same file listed twice (the first is kept)
BAD_LABEL = "label"  # unknown or ambiguous (numeric without --label-map) label
MALFORMED = "malformed"  # an entry with wrong types or missing fields
PROBLEM_KINDS = (MISSING, REFUSED, UNREADABLE, DUPLICATE, BAD_LABEL, MALFORMED)

_SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}
_NUMERIC = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_NUMERIC_EXPLANATION = (
    "numeric labels are ambiguous (the known reference used 0=FAKE,1=REAL, DFDC-derived CSVs use "
    "1=FAKE,0=REAL); say which with --label-map, e.g. --label-map 1=FAKE,0=REAL"
)


# Size caps on metadata files, checked before a byte is read: a hostile or mistaken multi-GB "list"
# never reaches memory. Generous for real datasets (DFDC's 120k-video metadata is ~10 MB).
MAX_TEXT_BYTES = 256 << 20  # CSV label tables, Celeb-DF's List_of_testing_videos.txt
MAX_JSON_BYTES = 1 << 30  # DFDC metadata.json, FF++ split files
MAX_PICKLE_BYTES = 512 << 20  # the legacy pickled video list


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n >= 1 << 20 else f"{n} bytes"


def size_limit(max_bytes: int, what: str, error: Callable[[str], Exception] = UserError
               ) -> tuple[int, Callable[[str, int], Exception]]:
    """The ``limit`` argument of ``read_file_bytes``: files over ``max_bytes`` raise ``error(message)``
    with one line that names the file, its size and the limit."""

    def too_big(shown: str, size: int) -> Exception:
        return error(f"{shown}: is {_mb(size)}, larger than the limit of {_mb(max_bytes)} for {what}; "
                     "refused (is this the right file?)")

    return max_bytes, too_big


def text_limit(what: str) -> tuple[int, Callable[[str, int], Exception]]:
    """``size_limit`` for a text list or table (``MAX_TEXT_BYTES``, read when called)."""
    return size_limit(MAX_TEXT_BYTES, what)


def read_file_bytes(path: str | os.PathLike,
                    limit: Optional[tuple[int, Callable[[str, int], Exception]]] = None) -> bytes:
    """A whole metadata file as bytes; an OS error is one ``UserError`` line.

    ``limit=(max_bytes, too_big)`` (see ``size_limit``) refuses a larger file before it is read,
    raising ``too_big(shown_path, size)``, so a hostile multi-GB "list" never reaches memory. The
    read itself stops one byte past the limit, so a file that grows (or a size that lied) while it
    is read is refused too. A pipe or device in place of the file is refused instead of blocking.
    """
    shown = os.fsdecode(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise UserError(f"{shown}: not a regular file (pipe, device or socket); refused (save the "
                            "metadata to a regular file and give that)")
        if limit is not None and st.st_size > limit[0]:
            raise limit[1](shown, st.st_size)
        with open(path, "rb") as fh:
            if limit is None:
                return fh.read()
            data = fh.read(limit[0] + 1)
        if len(data) > limit[0]:
            raise limit[1](shown, len(data))
        return data
    except OSError as exc:
        raise UserError(f"{shown}: cannot read: {exc.strerror or exc}") from exc


def is_video_name(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS)


def normalize_split(value: object) -> Optional[str]:
    """``train``/``val``/``test`` from common spellings; None for anything else (unknown splits)."""
    if not isinstance(value, str):
        return None
    return _SPLIT_ALIASES.get(value.strip().lower())


def parse_label_map(text: Optional[str]) -> Optional[dict[str, str]]:
    """Parse the CLI's ``--label-map 1=FAKE,0=REAL`` into ``{"1": "FAKE", "0": "REAL"}``."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise UserError(f"--label-map must be text like 1=FAKE,0=REAL, got {text!r}")
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip().upper()
        if not sep or not key or value not in LABELS:
            raise UserError(f"--label-map: cannot read {part!r}; expected VALUE=REAL or VALUE=FAKE pairs "
                            "separated by commas, e.g. 1=FAKE,0=REAL")
        if key.upper() in {k.upper() for k in out}:
            raise UserError(f"--label-map: {key!r} is mapped twice")
        out[key] = value
    if not out:
        raise UserError("--label-map is empty; expected e.g. 1=FAKE,0=REAL")
    return out


def check_label_map(label_map: Optional[Mapping[str, str] | str]) -> Optional[dict[str, str]]:
    """Accept a parsed dict or the CLI text; validate values; keys compared case-insensitively."""
    if label_map is None or isinstance(label_map, str):
        return parse_label_map(label_map)
    if not isinstance(label_map, Mapping):
        raise UserError(f"label_map must be a mapping like {{'1': 'FAKE'}}, got {type(label_map).__name__}")
    out = {}
    for key, value in label_map.items():
        norm = value.strip().upper() if isinstance(value, str) else None
        if norm not in LABELS:
            raise UserError(f"label_map: {key!r} maps to {value!r}; values must be REAL or FAKE")
        out[str(key).strip()] = norm
    return out


def _label_key(value: object) -> Optional[str]:
    """Text form of a raw label used to look it up in a label map (1, 1.0 and '1' all give '1')."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        v = value.strip()
        if _NUMERIC.match(v):
            try:
                f = float(v)
            except ValueError:  # pragma: no cover - the regex admits only numbers
                return v
            return str(int(f)) if f.is_integer() else v
        return v
    return None


def resolve_label(value: object, label_map: Optional[Mapping[str, str]] = None
                  ) -> tuple[Optional[str], str]:
    """Return ``(label, "")`` or ``(None, why)``; ``why == "numeric"`` for numbers without a map."""
    key = _label_key(value)
    if label_map and key is not None:
        for k, v in label_map.items():
            if k.upper() == key.upper():
                return v, ""
    if isinstance(value, str):
        norm = value.strip().upper()
        if norm in LABELS:
            return norm, ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return None, "numeric"
    if isinstance(value, str) and _NUMERIC.match(value.strip()):
        return None, "numeric"
    shown = value if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    if label_map:
        expected = "REAL, FAKE or one of the --label-map values " + ", ".join(map(repr, label_map))
    else:
        expected = "REAL or FAKE"
    return None, f"unknown label {_clip(shown)!r}, expected {expected}"


def _clip(value: object, n: int = 80) -> str:
    s = str(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def to_posix(rel: str) -> str:
    return rel.replace(os.sep, "/") if os.sep != "/" else rel


# Pseudo-filesystems whose "regular files" are kernel interfaces, never videos (``/proc/self/environ``
# stats as a regular file). ``/dev`` is not listed: its devices are refused as special files, and its
# regular files (``/dev/shm``) are real files people stage data in.
SYSTEM_DIRS = ("/proc", "/sys") if os.name == "posix" else ()


def system_dir(path: str) -> Optional[str]:
    """The pseudo-filesystem (``/proc``, ``/sys``) ``path`` lies in, or None."""
    return next((d for d in SYSTEM_DIRS if lexically_within(path, d)), None)


def lexically_within(path: str, root: str) -> bool:
    """``path`` (absolute, normalised) is ``root`` or below it, without touching the disk."""
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


class Collector:
    """Builds records for one source, checking every path and collecting problems.

    ``root`` is the dataset root: a record's ``rel_path`` (the manifest key) is relative to it, with
    ``/`` separators; a file outside it (named by a user's list) keeps its absolute path as
    ``rel_path``. ``confine=True`` (metadata shipped with a downloaded dataset) refuses entries that
    lexically leave the root, naming ``escape_fix`` as the way out. ``missing_hint`` is appended to
    "file not found" lines (e.g. which folder relative paths were read from, and the flag to change it).
    """

    def __init__(self, root: str | os.PathLike, source: str,
                 label_map: Optional[Mapping[str, str]] = None, *, confine: bool = True,
                 escape_fix: str = "", missing_hint: str = "") -> None:
        self.root = os.path.normpath(os.path.abspath(os.fsdecode(root)))
        self._prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        self.source = source
        self.label_map = label_map
        self.confine = confine
        self.escape_fix = escape_fix or "move the file under the dataset root, or list it in a CSV"
        self.missing_hint = missing_hint
        self.records: list[VideoRecord] = []
        self.problems: list[RecordProblem] = []
        self.grouping = PER_VIDEO  # what the records' groups come from; sources that know say so
        self._seen: dict[str, str] = {}  # resolved path -> where it was first listed
        self._dir_real: dict[str, str] = {}
        self._numeric: list[str] = []  # wheres of numeric labels without a map

    # -- problems -----------------------------------------------------------------------------
    def problem(self, where: str, reason: str, kind: str, path: Optional[str] = None) -> None:
        self.problems.append(RecordProblem(where=where, reason=reason, path=path, kind=kind))

    # -- labels -------------------------------------------------------------------------------
    def label(self, value: object, where: str, path: Optional[str] = None) -> Optional[str]:
        label, why = resolve_label(value, self.label_map)
        if label is None:
            if why == "numeric":
                self._numeric.append(where)
            else:
                self.problem(where, why, BAD_LABEL, path)
        return label

    # -- paths --------------------------------------------------------------------------------
    def lexical(self, raw: str, base_dir: Optional[str] = None) -> str:
        """Absolute normalised path of ``raw`` (relative paths are taken from ``base_dir``)."""
        if os.path.isabs(raw):
            return os.path.normpath(raw)
        base = self.root if base_dir is None else os.path.abspath(base_dir)
        return os.path.normpath(os.path.join(base, raw))

    def rel(self, lexical: str) -> str:
        """``lexical`` (absolute, normalised) relative to the root with ``/`` separators; a path
        outside the root stays absolute (``os.path.join(root, rel)`` still names it)."""
        if lexical != self.root and lexically_within(lexical, self.root):
            return to_posix(lexical[len(self._prefix):])
        return to_posix(lexical)

    def group_key(self, raw: object, base_dir: Optional[str] = None) -> Optional[str]:
        """The group name of a file another entry refers to (e.g. DFDC ``original``): its ``rel``.

        Purely lexical: the file need not exist; it only names a group.
        """
        if not isinstance(raw, str) or not raw.strip():
            return None
        return self.rel(self.lexical(raw.strip(), base_dir))

    def _resolved(self, lex: str) -> str:
        """``os.path.realpath`` with the directory part cached (a dataset has few folders)."""
        d, name = os.path.split(lex)
        rd = self._dir_real.get(d)
        if rd is None:
            rd = self._dir_real[d] = os.path.realpath(d)
        if stat.S_ISLNK(os.lstat(lex).st_mode):
            return os.path.realpath(lex)
        return os.path.join(rd, name)

    def _text(self, raw: object, where: str) -> Optional[str]:
        """The entry as a usable path string, or None after reporting why it is not one."""
        if isinstance(raw, bytes):
            raw = os.fsdecode(raw)
        if not isinstance(raw, str):
            self.problem(where, f"file name must be text, got {type(raw).__name__}", MALFORMED)
            return None
        text = raw.strip()
        if not text:
            self.problem(where, "empty file name", MALFORMED)
            return None
        if "\x00" in text:
            self.problem(where, "file name contains a NUL byte", MALFORMED, _clip(repr(text)))
            return None
        return text

    def _stat(self, text: str, lex: str, rel: str, where: str) -> Optional[os.stat_result]:
        """``os.stat`` of an entry, or None after reporting a missing or unreadable file."""
        try:
            return os.stat(lex)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                self.problem(where, f"file not found: {rel}{self.missing_hint}", MISSING, lex)
            elif exc.errno == errno.ELOOP:
                self.problem(where, f"symlink loop: {rel} (fix or remove the link)", UNREADABLE, lex)
            else:
                self.problem(where, f"cannot access {rel}: {exc.strerror or exc}", UNREADABLE, lex)
        except ValueError as exc:  # e.g. a name the OS cannot represent
            self.problem(where, f"bad file name {_clip(repr(text))}: {exc}", MALFORMED)
        return None

    def check_path(self, raw: object, where: str, base_dir: Optional[str] = None
                   ) -> Optional[tuple[str, str, str]]:
        """Return ``(path, rel_path, resolved)`` for an existing regular file, else report a problem."""
        text = self._text(raw, where)
        if text is None:
            return None
        lex = self.lexical(text, base_dir)
        if lex == self.root:
            self.problem(where, f"refused: {_clip(text)!r} is the dataset root folder, not a video (list "
                         "the video files themselves)", REFUSED, text)
            return None
        if self.confine and not lexically_within(lex, self.root):
            self.problem(where, f"refused: {_clip(text)!r} points outside the dataset root {self.root}; "
                         f"{self.escape_fix}", REFUSED, text)
            return None
        rel = self.rel(lex)
        if "\\" in text and os.sep == "/" and not os.path.lexists(lex):  # a list written on Windows
            return self.check_path(text.replace("\\", "/"), where, base_dir)
        st = self._stat(text, lex, rel, where)
        if st is None:
            return None
        try:
            resolved = self._resolved(lex)
        except OSError as exc:
            self.problem(where, f"cannot resolve {rel}: {exc.strerror or exc}", UNREADABLE, lex)
            return None
        if not self._regular(st, rel, lex, resolved, where):
            return None
        first = self._seen.get(resolved)
        if first is not None:
            self.problem(where, f"duplicate: {rel} is the same file as {first} (kept the first)",
                         DUPLICATE, lex)
            return None
        self._seen[resolved] = where
        return lex, rel, resolved

    def _regular(self, st: os.stat_result, rel: str, lex: str, resolved: str, where: str) -> bool:
        """True for a regular file outside the pseudo-filesystems; else report the refusal and its fix."""
        if stat.S_ISDIR(st.st_mode):
            reason = (f"refused: {rel} is a directory, not a video file (list the videos in it, or read "
                      "the folder with --format folders)")
        elif not stat.S_ISREG(st.st_mode):
            reason = (f"refused: {rel} is not a regular file (a pipe, device or socket); copy the video "
                      "to a regular file and list that")
        elif system_dir(lex) or system_dir(resolved):
            top = system_dir(lex) or system_dir(resolved)
            reason = (f"refused: {rel} is in {top}, a system pseudo-filesystem, not a video file (list "
                      "the video file itself)")
        else:
            return True
        self.problem(where, reason, REFUSED, lex)
        return False

    # -- records ------------------------------------------------------------------------------
    def add(self, raw: object, label: object, where: str, *, base_dir: Optional[str] = None,
            split: Optional[str] = None, group: Optional[str] = None,
            extra: Optional[dict[str, Any]] = None, label_is_final: bool = False,
            method: Optional[str] = None) -> Optional[VideoRecord]:
        """Check one entry and append its record; on any problem report it and return None.

        ``label`` is a raw value (resolved with the label map) unless ``label_is_final``; ``method`` is
        a FAKE's manipulation method when the dataset names it (ignored for REAL videos).
        """
        if label_is_final:
            final = label if label in (REAL, FAKE) else None
            if final is None:
                self.problem(where, f"unknown label {label!r}", BAD_LABEL)
                return None
        else:
            final = self.label(label, where)
            if final is None:
                return None
        checked = self.check_path(raw, where, base_dir)
        if checked is None:
            return None
        path, rel, _ = checked
        rec = VideoRecord(path=path, label=final, split=split, group=group or rel, rel_path=rel,
                          source=self.source, extra=dict(extra or {}), method=method or "")
        self.records.append(rec)
        return rec

    def result(self, fmt: Optional[str] = None) -> LoadResult:
        if self._numeric:
            n = len(self._numeric)
            more = f" (and {n - 1} more rows)" if n > 1 else ""
            self.problems.append(RecordProblem(
                where=f"{self._numeric[0]}{more}",
                reason=f"{n} record(s) skipped: {_NUMERIC_EXPLANATION}", kind=BAD_LABEL))
            self._numeric = []
        return LoadResult(records=self.records, problems=self.problems, format=fmt or self.source,
                          root=self.root, grouping=self.grouping)


def walk_files(top: str, collector: Optional[Collector] = None,
               exts: Iterable[str] = VIDEO_EXTENSIONS) -> Iterator[str]:
    """Yield video files under ``top`` in a stable (sorted) order.

    Symlinked directories are not followed (no loops, no escapes through them); symlinked files are
    yielded and then checked by the collector like any other path. Unreadable folders are reported.
    """
    exts = tuple(e.lower() for e in exts)

    def onerror(exc: OSError) -> None:
        where = os.fsdecode(getattr(exc, "filename", None) or top)
        if collector is not None:
            collector.problem(where, f"cannot list folder: {exc.strerror or exc}", UNREADABLE, where)
        else:
            log.warning("cannot list %s: %s", where, exc)

    for dirpath, dirnames, filenames in os.walk(os.fsdecode(top), onerror=onerror, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if name.lower().endswith(exts) and not name.startswith("._"):  # skip macOS AppleDouble
                yield os.path.join(dirpath, name)


def find_child(parent: str, name: str) -> Optional[str]:
    """The entry of ``parent`` named ``name`` ignoring case (exact match preferred), or None."""
    exact = os.path.join(parent, name)
    if os.path.exists(exact):
        return exact
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return None
    for entry in entries:
        if entry.lower() == name.lower():
            return os.path.join(parent, entry)
    return None


def summarize_problems(problems: Iterable[RecordProblem], per_kind: int = 10) -> list[str]:
    """Printable lines: up to ``per_kind`` problems of each kind, then one ``... and N more`` line.

    For the CLI: 50 000 missing files should not print 50 000 lines.
    """
    by_kind: OrderedDict[str, list[RecordProblem]] = OrderedDict()
    for p in problems:
        by_kind.setdefault(p.kind or "problem", []).append(p)
    lines = []
    for kind, items in by_kind.items():
        lines.extend(str(p) for p in items[:per_kind])
        if len(items) > per_kind:
            lines.append(f"... and {len(items) - per_kind} more problem(s) of kind '{kind}'")
    return lines
