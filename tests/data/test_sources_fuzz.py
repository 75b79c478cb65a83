"""Property tests: whatever a metadata file contains, a source returns records/problems or raises
one ``UserError`` line; it never crashes, never accepts a special file, never lets shipped metadata
(DFDC, FF++) name a path outside the root, and never runs code."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepfake_detector.data.records import LABELS, LoadResult
from deepfake_detector.data.sources import load_records, parse_label_map, read_video_list
from deepfake_detector.data.sources.base import resolve_label
from deepfake_detector.data.sources.legacy import load_video_list
from deepfake_detector.errors import UserError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["a.mp4", "b.mp4", "sub/c.mp4", "../x.mp4", "/etc/passwd", "a.mp4", "", " ", "sub", "ü ñ.mp4",
         "..", "./a.mp4", "sub/../a.mp4", "nul\x00.mp4", "C:\\x.mp4", "/proc/self/status", "/dev/null",
         "/sys/kernel/mm/transparent_hugepage/enabled", "/proc/self/fd/0"]
LABEL_VALUES = ["REAL", "fake", "Fake ", "0", "1", "2.5", "", "maybe", "-1", "1e3"]


class _Tree:
    """A fresh tiny dataset folder per example (hypothesis forbids function-scoped tmp_path reuse)."""

    def __enter__(self) -> Path:
        self.dir = Path(tempfile.mkdtemp(prefix="dfd-fuzz-"))
        root = self.dir / "ds"
        for name in ("a.mp4", "b.mp4", "sub/c.mp4", "ü ñ.mp4"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")
        (self.dir / "x.mp4").write_bytes(b"")
        return root

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def check_result(res: LoadResult, root: Path, confined: bool = True) -> None:
    """Records are distinct existing regular files, never kernel pseudo-files; ``confined`` (metadata
    shipped with a dataset) also keeps them inside the root, while a user's list may name any file."""
    seen = set()
    for rec in res.records:
        assert rec.label in LABELS
        real = os.path.realpath(rec.path)
        assert os.path.isfile(rec.path) and not real.startswith(("/proc/", "/sys/")), rec.path
        assert real not in seen  # no duplicates
        seen.add(real)
        if confined:
            assert os.path.normpath(rec.path).startswith(str(root) + os.sep), rec.path  # never outside
            assert not rec.rel_path.startswith("..") and not os.path.isabs(rec.rel_path)
        else:  # inside the root: a relative key; outside: its absolute path
            assert os.path.isabs(rec.rel_path) or not rec.rel_path.startswith("..")
            assert os.path.join(str(root), rec.rel_path) == rec.path
    for p in res.problems:
        assert str(p)


csv_cell = st.one_of(st.sampled_from(NAMES + LABEL_VALUES), st.text(max_size=12))
csv_rows = st.lists(st.lists(csv_cell, min_size=0, max_size=4), max_size=8)


@SETTINGS
@given(header=st.sampled_from([None, ["file", "label"], ["label", "path", "split"], ["x", "y"]]),
       rows=csv_rows, sep=st.sampled_from([",", ";", "\t"]), newline=st.sampled_from(["\n", "\r\n"]),
       bom=st.booleans(), label_map=st.sampled_from([None, "1=FAKE,0=REAL"]))
def test_csv_never_crashes(header, rows, sep, newline, bom, label_map):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=sep, lineterminator=newline)
    if header:
        writer.writerow(header)
    for row in rows:
        writer.writerow(row)
    with _Tree() as root:
        (root / "t.csv").write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
        try:
            res = load_records(root / "t.csv", label_map=label_map)
        except UserError as exc:
            assert str(exc)
            return
        check_result(res, root, confined=False)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_csv_random_bytes_never_crash(data):
    with _Tree() as root:
        (root / "t.csv").write_bytes(data)
        try:
            res = load_records(root / "t.csv", format="csv")
        except UserError:
            return
        check_result(res, root, confined=False)


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.sampled_from(NAMES + LABEL_VALUES + ["train", "val", "test"]), st.text(max_size=8))
json_value = st.recursive(
    json_scalar,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
    max_leaves=10)
entry = st.one_of(
    json_value,
    st.fixed_dictionaries({"label": json_value}, optional={"split": json_value, "original": json_value}),
)


@SETTINGS
@given(meta=st.one_of(st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=10), entry, max_size=6),
                      json_value))
def test_dfdc_json_never_crashes(meta):
    with _Tree() as root:
        (root / "metadata.json").write_text(json.dumps(meta))
        try:
            res = load_records(root, format="dfdc")
        except UserError as exc:
            assert str(exc)
            return
        check_result(res, root)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_dfdc_random_bytes_never_crash(data):
    with _Tree() as root:
        (root / "metadata.json").write_bytes(data)
        with contextlib.suppress(UserError):
            check_result(load_records(root / "metadata.json"), root)


@SETTINGS
@given(splits=st.lists(json_value, max_size=4))
def test_ffpp_split_files_never_crash(splits):
    with _Tree() as root:
        videos = root / "original_sequences" / "youtube" / "c23" / "videos"
        videos.mkdir(parents=True)
        (videos / "000.mp4").write_bytes(b"")
        (root / "train.json").write_text(json.dumps(splits))
        with contextlib.suppress(UserError):
            check_result(load_records(root, format="ffpp"), root)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200),
                      st.builds(lambda obj, proto: pickle.dumps(obj, protocol=proto),
                                json_value, st.integers(0, pickle.HIGHEST_PROTOCOL))))
def test_pickle_loader_only_returns_lists_of_str_or_user_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.pkl")
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            out = load_video_list(path)
        except UserError:  # UnsafeFileError is a UserError
            return
        assert isinstance(out, list) and all(isinstance(x, str) for x in out)


@SETTINGS
@given(value=json_scalar, mapping=st.sampled_from([None, {"1": "FAKE", "0": "REAL"}, {"x": "REAL"}]))
def test_resolve_label_total(value, mapping):
    label, why = resolve_label(value, mapping)
    assert (label in LABELS and why == "") or (label is None and why)


@SETTINGS
@given(text=st.text(max_size=30))
def test_parse_label_map_total(text):
    try:
        out = parse_label_map(text)
    except UserError:
        return
    assert out and all(v in LABELS for v in out.values())


@SETTINGS
@given(lines=st.lists(st.one_of(st.sampled_from(NAMES), st.text(max_size=12),
                                st.builds(lambda d, n: f"{d} {n}", st.sampled_from(["0", "1", "2", "x"]),
                                          st.sampled_from(NAMES))), max_size=8),
       name=st.sampled_from(["list.txt", "List_of_testing_videos.txt"]))
def test_text_lists_never_crash_and_labels_only_from_celebdf_lines(lines, name):
    with _Tree() as root:
        (root / name).write_text("\n".join(lines), encoding="utf-8", errors="surrogateescape")
        try:
            out = read_video_list(root / name)
        except UserError:
            return
        assert all(isinstance(e.path, str) and e.path and e.label in (None, *LABELS) for e in out)
        labelled = {e.label is not None for e in out}
        assert len(labelled) <= 1  # a Celeb-DF list labels every entry, any other list none


@SETTINGS
@given(pattern=st.one_of(st.text(max_size=10), st.sampled_from(["^(\\w)", "(", "[a-z]+", "/", "(x)?", ""])))
def test_group_by_never_crashes(pattern):
    with _Tree() as root:
        (root / "real").mkdir()
        (root / "real" / "a_1.mp4").write_bytes(b"")
        (root / "fake").mkdir()
        (root / "fake" / "b_2.mp4").write_bytes(b"")
        try:
            res = load_records(root, format="folders", group_by=pattern)
        except UserError as exc:
            assert str(exc) and "\n" not in str(exc)
            return
        assert res.grouping == "group-by" and all(r.group for r in res.records)
