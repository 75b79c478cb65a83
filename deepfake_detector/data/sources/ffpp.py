"""``ffpp`` source: FaceForensics++ as its download script lays it out.

    ROOT/original_sequences/youtube/<comp>/videos/000.mp4                      REAL
    ROOT/original_sequences/actors/<comp>/videos/01__walking_down_street.mp4   REAL (DeepFakeDetection)
    ROOT/manipulated_sequences/<method>/<comp>/videos/000_003.mp4              FAKE (<target>_<source>)
    ROOT/manipulated_sequences/DeepFakeDetection/<comp>/videos/01_02__walking_down_street__ABC.mp4

A fake's ``method`` is its method folder's name (``Deepfakes``, ``Face2Face``...). ``<comp>`` is
``raw`` (also called c0), ``c23`` or ``c40``. One compression is used for every folder
(mixing them would let a model learn compression instead of manipulation): the one asked for, else
c23, else c40, else raw. ``methods`` keeps only some manipulation methods.

Splits: the official ``train.json``/``val.json``/``test.json`` (lists of ``[a, b]`` id pairs) from
``splits`` (a folder or a list of the files), else from ROOT, ROOT/splits or ROOT/dataset/splits. A
real ``a.mp4`` takes the split of ``a``; fakes ``a_b``/``b_a`` take the split of their pair.

Groups: a fake ``a_b`` shows ``a``'s scene with ``b``'s face (swaps) or ``b``'s expressions (reenactment),
so it links both ids. YouTube ids linked by any fake (or paired in a split file) form one group,
named ``ffpp:<smallest id>``; in FF++ the pairs are disjoint, so a group is one pair: both originals
and every fake made from them. DeepFakeDetection actors appear in many pairs (linking would merge them
all), so those are grouped by the target actor: ``ffpp-dfd:<actor>`` for ``01__*.mp4`` and ``01_02__*.mp4``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Optional, Union

from ...errors import UserError
from ..records import FAKE, GROUP_DATASET, REAL, LoadResult, VideoRecord
from .base import MALFORMED, Collector, find_child, normalize_split, walk_files
from .dfdc import read_json
from .grouping import DFD_FAKE, DFD_REAL, FFPP_FAKE, FFPP_REAL
from .grouping import UnionFind as _UnionFind

log = logging.getLogger(__name__)

FORMAT = "ffpp"
ORIGINALS = "original_sequences"
MANIPULATED = "manipulated_sequences"
METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures", "FaceShifter", "DeepFakeDetection")
DFD = "DeepFakeDetection"
_COMP_DIRS = {"raw": "raw", "c0": "raw", "c23": "c23", "c40": "c40"}
_COMP_PREFERENCE = ("c23", "c40", "raw")

_YT_REAL, _YT_FAKE, _DFD_REAL, _DFD_FAKE = FFPP_REAL, FFPP_FAKE, DFD_REAL, DFD_FAKE


def _comp_dirs(seq_dir: str) -> dict[str, str]:
    """Compression name (raw/c23/c40) -> its ``videos`` folder inside one sequence folder."""
    out = {}
    try:
        entries = sorted(os.listdir(seq_dir))
    except OSError:
        return out
    for entry in entries:
        comp = _COMP_DIRS.get(entry.lower())
        videos = find_child(os.path.join(seq_dir, entry), "videos")
        if comp and videos and os.path.isdir(videos):
            out.setdefault(comp, videos)
    return out


def _subdirs(folder: str) -> list[str]:
    try:
        return sorted(e for e in os.listdir(folder) if os.path.isdir(os.path.join(folder, e)))
    except OSError:
        return []


def _split_files(root: str, splits: Union[str, os.PathLike, Iterable, None]) -> dict[str, str]:
    """Split name -> JSON file of the official split lists that exist."""
    if splits is not None and not isinstance(splits, (str, bytes, os.PathLike)):
        files = {}
        for f in splits:
            f = os.fsdecode(f)
            name = normalize_split(os.path.splitext(os.path.basename(f))[0])
            if name is None:
                raise UserError(f"split file {f}: name must be train.json, val.json or test.json")
            files[name] = f
        return files
    if splits is not None:
        cands = [os.fsdecode(splits)]
        if not os.path.isdir(cands[0]):
            raise UserError(f"--splits {cands[0]}: not a folder with train.json/val.json/test.json")
    else:
        cands = [root, os.path.join(root, "splits"), os.path.join(root, "dataset", "splits")]
    for folder in cands:
        files = {s: os.path.join(folder, f"{s}.json") for s in ("train", "val", "test")}
        files = {s: f for s, f in files.items() if os.path.isfile(f)}
        if files:
            return files
    if splits is not None:
        raise UserError(f"--splits {cands[0]}: no train.json, val.json or test.json in it")
    return {}


def _read_splits(files: dict[str, str], col: Collector, uf: _UnionFind) -> dict[str, str]:
    split_of: dict[str, str] = {}
    for split, path in sorted(files.items()):
        data = read_json(path)
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a list of [id, id] pairs, found a {type(data).__name__}")
        for i, pair in enumerate(data):
            where = f"{os.path.basename(path)}[{i}]"
            if (not isinstance(pair, (list, tuple)) or not pair
                    or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in pair)):
                col.problem(where, f"expected a pair of ids like [\"000\", \"003\"], got {pair!r}"[:200],
                            MALFORMED)
                continue
            ids = [x if isinstance(x, str) else f"{x:03d}" for x in pair]
            for vid in ids:
                prev = split_of.setdefault(vid, split)
                if prev != split:
                    col.problem(where, f"id {vid} is in both {prev} and {split}; kept {prev}", MALFORMED)
            for vid in ids[1:]:
                uf.union(ids[0], vid)
    return split_of


def _methods(root: str, methods: Union[str, Iterable[str], None]) -> list[tuple[str, str]]:
    """(name, folder) of the manipulation methods to load."""
    man = find_child(root, MANIPULATED)
    present = [(d, os.path.join(man, d)) for d in _subdirs(man)] if man else []
    if methods is None:
        return present
    wanted = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    by_lower = {d.lower(): (d, p) for d, p in present}
    out = []
    for m in wanted:
        if m.lower() not in by_lower:
            have = ", ".join(d for d, _ in present) or "none"
            raise UserError(f"FF++ method {m!r} not found under {MANIPULATED}/ (present: {have})")
        out.append(by_lower[m.lower()])
    return out


def load(root: str | os.PathLike, label_map: Optional[Mapping[str, str]] = None,
         compression: Optional[str] = None, methods: Union[str, Iterable[str], None] = None,
         splits: Union[str, os.PathLike, Iterable, None] = None) -> LoadResult:
    root = os.path.abspath(os.fsdecode(root))
    if not os.path.isdir(root):
        raise UserError(f"{root}: not a folder")
    orig = find_child(root, ORIGINALS)
    method_dirs = _methods(root, methods)
    seqs: list[tuple[str, str, str]] = []  # (kind, label, folder); kind: youtube | actors | method name
    if orig:
        for kind in _subdirs(orig):
            seqs.append((kind, REAL, os.path.join(orig, kind)))
    has_dfd = any(name.lower() == DFD.lower() for name, _ in method_dirs)
    man = find_child(root, MANIPULATED)
    dfd_present = bool(man) and any(d.lower() == DFD.lower() for d in _subdirs(man))
    if dfd_present and not has_dfd:  # the DFD actors are only the reals of DeepFakeDetection
        seqs = [s for s in seqs if s[0].lower() != "actors"]
    seqs.extend((name, FAKE, folder) for name, folder in method_dirs)
    if not seqs:
        raise UserError(f"{root}: no {ORIGINALS}/ or {MANIPULATED}/ folders (FaceForensics++ format)")

    comps = {s[2]: _comp_dirs(s[2]) for s in seqs}
    if compression is not None:
        comp = _COMP_DIRS.get(str(compression).strip().lower())
        if comp is None:
            raise UserError(f"--compression {compression!r}: expected c0 (raw), c23 or c40")
    else:  # the compression most folders have; ties go to c23, then c40, then raw
        have = {c: sum(c in d for d in comps.values()) for c in _COMP_PREFERENCE}
        comp = max(_COMP_PREFERENCE, key=lambda c: (have[c], -_COMP_PREFERENCE.index(c)))
        if not have[comp]:
            raise UserError(f"{root}: no <compression>/videos folders (raw, c23 or c40) found")
    for _, _, folder in seqs:
        if comp not in comps[folder]:
            have = ", ".join(sorted(comps[folder])) or "none"
            log.warning("FF++: %s has no %s videos (has: %s); skipped (choose with --compression)",
                        os.path.relpath(folder, root), comp, have)

    col = Collector(root, FORMAT)
    col.grouping = GROUP_DATASET  # the ids in FF++'s own names, joined as the dataset defines them
    uf = _UnionFind()
    split_of = _read_splits(_split_files(root, splits), col, uf)
    keyed: list[tuple[VideoRecord, Optional[str], Optional[str]]] = []  # record, yt id, dfd group
    for kind, label, folder in seqs:
        videos = comps[folder].get(comp)
        if videos is None:
            continue
        is_dfd = kind.lower() in ("actors", DFD.lower())
        for path in walk_files(videos, col):
            stem = os.path.splitext(os.path.basename(path))[0]
            yt_id = dfd_group = split = None
            if is_dfd:
                m = (_DFD_FAKE if label == FAKE else _DFD_REAL).match(stem)
                if m:
                    dfd_group = f"ffpp-dfd:{m.group(1)}"
            elif label == REAL and _YT_REAL.match(stem):
                yt_id = stem
                split = split_of.get(stem)
            elif label == FAKE and _YT_FAKE.match(stem):
                a, b = _YT_FAKE.match(stem).groups()
                uf.union(a, b)
                yt_id = a
                split = split_of.get(a) or split_of.get(b)
            if yt_id is None and dfd_group is None:
                log.debug("FF++: %s: name not recognised; its own group", path)
            rec = col.add(path, label, col.rel(path), split=split, label_is_final=True,
                          extra={"method": kind, "compression": comp}, method=kind)
            if rec is not None:
                keyed.append((rec, yt_id, dfd_group))
    for rec, yt_id, dfd_group in keyed:
        if yt_id is not None:
            rec.group = f"ffpp:{uf.find(yt_id)}"
        elif dfd_group is not None:
            rec.group = dfd_group
    return col.result(FORMAT)
