"""Dataset sources: every format on a tiny tree, auto-detection, and every per-record problem.

Videos are zero-byte placeholders: sources never open them.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from pathlib import Path

import pytest

from deepfake_detector.data.records import FAKE, REAL
from deepfake_detector.data.sources import (
    FORMATS,
    count_by_split,
    detect_format,
    format_counts_table,
    load_records,
    parse_label_map,
    summarize_problems,
)
from deepfake_detector.data.sources.base import resolve_label
from deepfake_detector.data.sources.legacy import load_video_list
from deepfake_detector.errors import UnsafeFileError, UserError
from tests.helpers import OpenPayload, SystemPayload


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def by_rel(result):
    return {r.rel_path: r for r in result.records}


def kinds(result):
    return sorted(p.kind for p in result.problems)


# ---------------------------------------------------------------------------------------- csv


def test_csv_with_header_extra_columns_and_any_case(tmp_path):
    for name in ("a.mp4", "b.mp4", "sub/c.mp4"):
        touch(tmp_path / name)
    (tmp_path / "labels.csv").write_text(
        "label,file,split,original,notes\n"
        "real,a.mp4,train,,x\n"
        "Fake,b.mp4,validation,a.mp4,y\n"
        "FAKE,sub/c.mp4,weird,,z\n")
    res = load_records(tmp_path / "labels.csv")
    assert res.format == "csv" and res.problems == []
    recs = by_rel(res)
    assert set(recs) == {"a.mp4", "b.mp4", "sub/c.mp4"}
    assert recs["a.mp4"].label == REAL and recs["a.mp4"].split == "train"
    assert recs["b.mp4"].label == FAKE and recs["b.mp4"].split == "val"
    assert recs["b.mp4"].group == "a.mp4" == recs["a.mp4"].group  # the fake joins its original's group
    assert recs["sub/c.mp4"].split is None  # unknown split value -> None
    assert recs["sub/c.mp4"].group == "sub/c.mp4"
    assert all(os.path.isabs(r.path) and r.source == "csv" for r in res.records)
    assert recs["sub/c.mp4"].path == str(tmp_path / "sub" / "c.mp4")


def test_csv_without_header_bom_crlf_blank_lines_quotes_spaces(tmp_path):
    touch(tmp_path / "v" / "my video, take 1.mp4")
    touch(tmp_path / "v" / "two.mp4")
    data = '\ufeff"v/my video, take 1.mp4",REAL\r\n\r\n  \r\nv/two.mp4, fake \r\n'
    (tmp_path / "list.csv").write_bytes(data.encode("utf-8"))
    res = load_records(tmp_path / "list.csv", format="csv")
    assert res.problems == []
    assert {r.rel_path: r.label for r in res.records} == {"v/my video, take 1.mp4": REAL, "v/two.mp4": FAKE}
    (tmp_path / "swapped.csv").write_text('FAKE,v/two.mp4\nreal,"v/my video, take 1.mp4"\n')  # label first
    res = load_records(tmp_path / "swapped.csv")
    assert res.problems == [] and [r.label for r in res.records] == [FAKE, REAL]


def test_csv_group_column_semicolons_and_data_root(tmp_path):
    data = tmp_path / "data"
    touch(data / "x.mp4")
    touch(data / "y.mp4")
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "t.csv").write_text("path;class;group\nx.mp4;REAL;id7\ny.mp4;FAKE;id7\n")
    res = load_records(meta / "t.csv", data_root=data)
    assert res.problems == []
    assert [r.group for r in res.records] == ["id7", "id7"]
    assert [r.rel_path for r in res.records] == ["x.mp4", "y.mp4"]


def test_csv_numeric_labels_need_a_map_and_are_reported_once(tmp_path):
    for i in range(50):
        touch(tmp_path / f"{i}.mp4")
    (tmp_path / "n.csv").write_text("".join(f"{i}.mp4,{i % 2}\n" for i in range(50)))
    res = load_records(tmp_path / "n.csv")
    assert res.records == []
    assert len(res.problems) == 1  # one summarised line, not 50
    msg = str(res.problems[0])
    assert "50 record(s)" in msg and "--label-map" in msg and "0=FAKE" in msg

    res = load_records(tmp_path / "n.csv", label_map="1=FAKE,0=REAL")
    assert res.problems == [] and len(res.records) == 50
    assert by_rel(res)["1.mp4"].label == FAKE and by_rel(res)["0.mp4"].label == REAL
    # the reference's opposite convention, given as a dict
    res = load_records(tmp_path / "n.csv", label_map={"0": "FAKE", "1": "REAL"})
    assert by_rel(res)["1.mp4"].label == REAL


def test_parse_label_map():
    assert parse_label_map("1=FAKE,0=real") == {"1": FAKE, "0": REAL}
    assert parse_label_map(" deepfake = fake , pristine=REAL ,") == {"deepfake": FAKE, "pristine": REAL}
    assert parse_label_map(None) is None
    for bad in ("1", "1=MAYBE", "=FAKE", "", "1=FAKE,1=REAL"):
        with pytest.raises(UserError):
            parse_label_map(bad)


def test_resolve_label_variants():
    assert resolve_label(" fake ") == (FAKE, "")
    assert resolve_label("1")[1] == "numeric"
    assert resolve_label(1.0)[1] == "numeric"
    assert resolve_label(1.0, {"1": "FAKE"}) == (FAKE, "")
    assert resolve_label(True)[0] is None and "unknown label" in resolve_label(True)[1]
    assert "unknown label" in resolve_label("maybe")[1]


def test_csv_missing_columns_and_bad_first_row_are_user_errors(tmp_path):
    (tmp_path / "a.csv").write_text("video_id,score\nx.mp4,0.3\n")
    with pytest.raises(UserError, match="missing required column"):
        load_records(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("x.mp4,unknown\n")
    with pytest.raises(UserError, match="read as a header"):
        load_records(tmp_path / "b.csv")


def test_csv_unknown_labels_short_rows_and_path_problems(tmp_path):
    root = tmp_path / "ds"
    touch(root / "ok.mp4")
    touch(root / "dup.mp4")
    touch(tmp_path / "outside.mp4")
    (root / "folder.mp4").mkdir()
    (root / "t.csv").write_text(
        "file,label\n"
        "ok.mp4,REAL\n"
        "ok2.mp4,MAYBE\n"           # unknown label
        "lonely\n"                  # short row
        "../outside.mp4,FAKE\n"     # the user's own list: .. is theirs to use
        f"{tmp_path / 'outside.mp4'},FAKE\n"  # the same file by its absolute path
        "gone.mp4,FAKE\n"           # missing
        "dup.mp4,FAKE\n"
        "./sub/../dup.mp4,FAKE\n"   # the same file again
        "folder.mp4,FAKE\n"         # a directory
        f"{root / 'ok.mp4'},REAL\n"  # absolute inside the root: fine, but a duplicate
    )
    res = load_records(root / "t.csv")
    outside = str(tmp_path / "outside.mp4")
    assert sorted(by_rel(res)) == sorted([outside, "dup.mp4", "ok.mp4"])  # outside the root: absolute key
    assert by_rel(res)[outside].path == outside and by_rel(res)[outside].group == outside
    assert kinds(res) == sorted(["label", "malformed", "missing", "duplicate", "duplicate", "refused",
                                 "duplicate"])
    lines = [str(p) for p in res.problems]
    assert any("t.csv:3" in ln and "MAYBE" in ln for ln in lines)
    assert any("t.csv:6" in ln and "same file as t.csv:5" in ln for ln in lines)
    assert any("t.csv:9" in ln and "same file as t.csv:8" in ln for ln in lines)
    assert any("t.csv:10" in ln and "directory" in ln and "--format folders" in ln for ln in lines)
    assert any("t.csv:7" in ln and "--data-root" in ln for ln in lines)  # missing: says where it looked
    assert not (tmp_path / "outside.mp4").read_bytes()  # untouched, of course


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlinks_are_followed_loops_reported(tmp_path):
    root = tmp_path / "ds"
    touch(root / "real.mp4")
    touch(tmp_path / "elsewhere.mp4")
    os.symlink(tmp_path / "elsewhere.mp4", root / "link.mp4")  # a link out of the root: followed
    os.symlink(root / "real.mp4", root / "alias.mp4")  # the same file twice: a duplicate
    os.symlink(root / "loop_b.mp4", root / "loop_a.mp4")
    os.symlink(root / "loop_a.mp4", root / "loop_b.mp4")
    (root / "real").mkdir()
    os.symlink(root, root / "real" / "again")  # a folder loop: must not be followed
    touch(root / "real" / "r.mp4")
    (root / "t.csv").write_text("real.mp4,REAL\nlink.mp4,FAKE\nalias.mp4,REAL\nloop_a.mp4,FAKE\n")
    res = load_records(root / "t.csv")
    assert [r.rel_path for r in res.records] == ["real.mp4", "link.mp4"]
    assert res.records[1].path == str(root / "link.mp4")  # the link's own path: the manifest key
    assert kinds(res) == ["duplicate", "unreadable"]
    assert any("symlink loop" in str(p) and "remove the link" in str(p) for p in res.problems)

    # folders format walking a tree with a symlinked folder loop terminates
    res = load_records(root, format="folders")
    assert [r.rel_path for r in res.records] == ["real/r.mp4"]


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlinked_folder_in_a_list_and_symlinked_root(tmp_path):
    outside = tmp_path / "elsewhere"
    touch(outside / "v.mp4")
    real_root = tmp_path / "real_root"
    touch(real_root / "in.mp4")
    os.symlink(outside, real_root / "linkdir")
    (real_root / "t.csv").write_text("in.mp4,REAL\nlinkdir/v.mp4,FAKE\n.,FAKE\n")
    link_root = tmp_path / "link_root"
    os.symlink(real_root, link_root)  # the dataset root itself reached through a symlink is fine
    res = load_records(link_root / "t.csv")
    assert [r.rel_path for r in res.records] == ["in.mp4", "linkdir/v.mp4"]
    assert res.records[0].path == str(link_root / "in.mp4")
    assert kinds(res) == ["refused"]
    assert "dataset root folder" in str(res.problems[0]) and "list the video files" in str(res.problems[0])


# ------------------------------------------------- lists the user wrote vs metadata that shipped


def test_csv_with_absolute_paths_outside_its_folder_is_used_as_written(tmp_path):
    """The most common CSV: ``file,label`` with absolute paths, kept in another folder than the videos."""
    videos = tmp_path / "storage" / "videos"
    for name in ("r1.mp4", "f1.mp4"):
        touch(videos / name)
    lists = tmp_path / "home" / "lists"
    lists.mkdir(parents=True)
    (lists / "labels.csv").write_text(f"file,label\n{videos / 'r1.mp4'},REAL\n{videos / 'f1.mp4'},FAKE\n"
                                      "../../storage/videos/r1.mp4,REAL\n")
    res = load_records(lists / "labels.csv")
    assert res.format == "csv" and [r.label for r in res.records] == [REAL, FAKE]
    assert [r.path for r in res.records] == [str(videos / "r1.mp4"), str(videos / "f1.mp4")]
    assert [r.rel_path for r in res.records] == [str(videos / "r1.mp4"), str(videos / "f1.mp4")]
    assert kinds(res) == ["duplicate"]  # the ../ line names r1 again
    assert not any("outside" in str(p) for p in res.problems)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_folders_of_symlinks_into_shared_storage(tmp_path):
    store = tmp_path / "shared"
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        touch(store / name)
    root = tmp_path / "ds"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    os.symlink(store / "a.mp4", root / "real" / "a.mp4")
    os.symlink(store / "b.mp4", root / "fake" / "b.mp4")
    os.symlink(store / "c.mp4", root / "fake" / "c.mp4")
    os.symlink(tmp_path / "gone.mp4", root / "fake" / "dangling.mp4")
    assert detect_format(root) == "folders"
    res = load_records(root)
    assert {r.rel_path: r.label for r in res.records} == {
        "real/a.mp4": REAL, "fake/b.mp4": FAKE, "fake/c.mp4": FAKE}
    assert all(r.path.startswith(str(root)) for r in res.records)
    assert kinds(res) == ["missing"]


@pytest.mark.skipif(not os.path.exists("/proc/self/status") or not hasattr(os, "mkfifo"),
                    reason="Linux /proc and named pipes")
def test_special_files_are_refused_everywhere_with_the_fix(tmp_path):
    root = tmp_path / "ds"
    touch(root / "ok.mp4")
    (root / "dir.mp4").mkdir()
    os.mkfifo(tmp_path / "pipe.mp4")
    os.symlink("/proc/self/environ", root / "env.mp4")
    specials = ["/proc/self/status", str(tmp_path / "pipe.mp4"), "/dev/null", "dir.mp4", "env.mp4",
                "/sys/kernel/mm/transparent_hugepage/enabled"]
    (root / "t.csv").write_text("file,label\nok.mp4,REAL\n" + "".join(f"{s},FAKE\n" for s in specials))
    res = load_records(root / "t.csv")
    assert [r.rel_path for r in res.records] == ["ok.mp4"]
    refused = [str(p) for p in res.problems if p.kind == "refused"]
    missing = len(specials) - len(refused)
    assert missing <= 1, res.problems  # /sys may lack that file in a container
    assert all("refused:" in r and ("list" in r or "copy" in r) for r in refused), refused
    assert sum("pseudo-filesystem" in r for r in refused) >= 2  # /proc by path and through a link
    # the same through the legacy pickled list (its entries are used as written when they exist)
    make_legacy(tmp_path / "legacy", ["/proc/self/status", str(tmp_path / "pipe.mp4")],
                "status,FAKE\npipe.mp4,FAKE\n")
    res = load_records(tmp_path / "legacy", "legacy")
    assert res.records == [] and kinds(res) == ["refused", "refused"]


def test_dfdc_metadata_cannot_point_outside_its_root_and_names_the_flag(tmp_path):
    root = tmp_path / "dfdc"
    touch(root / "a.mp4")
    touch(tmp_path / "outside.mp4")
    meta = {"a.mp4": {"label": "REAL"}, "../outside.mp4": {"label": "FAKE"},
            str(tmp_path / "outside.mp4"): {"label": "FAKE"}}
    (root / "metadata.json").write_text(json.dumps(meta))
    res = load_records(root, "dfdc")
    assert [r.rel_path for r in res.records] == ["a.mp4"]
    assert kinds(res) == ["refused", "refused"]
    assert all("outside the dataset root" in str(p) and "--data-root" in str(p) for p in res.problems)
    # --data-root widens the root: the same entries are then inside it
    res = load_records(root, "dfdc", data_root=tmp_path)
    assert sorted(r.rel_path for r in res.records) == ["dfdc/a.mp4", "outside.mp4"]
    assert kinds(res) == ["duplicate"]  # both escaping entries name the same file
    if sys.platform != "win32":  # a file of the dataset that is a symlink is followed
        (root / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "REAL"},
                                                        "link.mp4": {"label": "FAKE"}}))
        os.symlink(tmp_path / "outside.mp4", root / "link.mp4")
        assert [r.rel_path for r in load_records(root, "dfdc").records] == ["a.mp4", "link.mp4"]


def test_legacy_list_paths_used_as_written_and_missing_names_the_flag(tmp_path):
    elsewhere = tmp_path / "drive" / "videos"
    touch(elsewhere / "000.mp4")
    touch(elsewhere / "000_003.mp4")
    root = tmp_path / "legacy"
    make_legacy(root, [str(elsewhere / "000.mp4"), "../drive/videos/000_003.mp4", "/content/zzz.mp4"],
                "000.mp4,REAL\n000_003.mp4,FAKE\nzzz.mp4,REAL\n")
    res = load_records(root)
    assert res.format == "legacy"
    assert [r.path for r in res.records] == [str(elsewhere / "000.mp4"), str(elsewhere / "000_003.mp4")]
    assert kinds(res) == ["missing"] and "--video-dir" in str(res.problems[0])


def test_celebdf_test_list_with_absolute_paths_and_dotdot(tmp_path):
    root = tmp_path / "celeb"
    touch(root / "Celeb-real" / "id0_0000.mp4")
    touch(root / "Celeb-synthesis" / "id0_id1_0000.mp4")
    touch(tmp_path / "extra" / "id2_id0_0001.mp4")
    (root / "List_of_testing_videos.txt").write_text(
        f"1 {root / 'Celeb-real' / 'id0_0000.mp4'}\n"
        "0 Celeb-real/../Celeb-synthesis/id0_id1_0000.mp4\n"
        "0 ../extra/id2_id0_0001.mp4\n"
        "0 Celeb-synthesis/id9_id9_0000.mp4\n")
    res = load_records(root)
    recs = by_rel(res)
    extra = str(tmp_path / "extra" / "id2_id0_0001.mp4")
    assert {k: r.split for k, r in recs.items()} == {
        "Celeb-real/id0_0000.mp4": "test", "Celeb-synthesis/id0_id1_0000.mp4": "test", extra: "test"}
    assert recs[extra].label == FAKE and recs[extra].group == "celebdf:id2"
    assert kinds(res) == ["missing"] and "--test-list" in str(res.problems[0])


# ------------------------------------------------------------------------------------- groups


def name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def test_ffpp_names_are_grouped_in_csv_folders_and_legacy_layouts(tmp_path):
    names = {"000.mp4": REAL, "003.mp4": REAL, "000_003.mp4": FAKE, "003_000.mp4": FAKE, "001.mp4": REAL,
             "001_002.mp4": FAKE, "odd.mp4": REAL}
    expected = {"000.mp4": "ffpp:000", "003.mp4": "ffpp:000", "000_003.mp4": "ffpp:000",
                "003_000.mp4": "ffpp:000", "001.mp4": "ffpp:001", "001_002.mp4": "ffpp:001",
                "odd.mp4": "odd.mp4"}
    csv_root = tmp_path / "csv"
    for n in names:
        touch(csv_root / n)
    (csv_root / "t.csv").write_text("file,label\n" + "".join(f"{n},{lab}\n" for n, lab in names.items()))
    res = load_records(csv_root / "t.csv")
    assert {r.rel_path: r.group for r in res.records} == expected
    assert res.grouping == "names" and "6 of 7" in res.grouping_note
    fold = tmp_path / "folders"
    for n, lab in names.items():
        touch(fold / lab.lower() / n)
    res = load_records(fold)
    assert {name_of(r.rel_path): name_of(r.group) for r in res.records} == expected
    assert res.grouping == "names"
    leg = tmp_path / "legacy"
    for n in names:
        touch(leg / "Dataset" / n)
    meta = "".join(f"{n},{lab}\n" for n, lab in names.items())
    make_legacy(leg, [f"/content/Dataset/{n}" for n in names], meta)
    res = load_records(leg)
    assert {name_of(r.rel_path): name_of(r.group) for r in res.records} == expected
    assert res.grouping == "names"


def test_celebdf_names_group_by_target_and_unlinked_names_stay_per_video(tmp_path):
    root = tmp_path / "ds"
    for n in ("real/id0_0000.mp4", "real/id1_0003.mp4", "fake/id0_id1_0000.mp4", "fake/id1_id0_0003.mp4"):
        touch(root / n)
    res = load_records(root)
    assert {r.rel_path: r.group for r in res.records} == {
        "real/id0_0000.mp4": "celebdf:id0", "fake/id0_id1_0000.mp4": "celebdf:id0",
        "real/id1_0003.mp4": "celebdf:id1", "fake/id1_id0_0003.mp4": "celebdf:id1"}
    # numbered files that link nothing: names say nothing, so one group per video, and it says so
    other = tmp_path / "other"
    touch(other / "real" / "000.mp4")
    touch(other / "fake" / "001.mp4")
    res = load_records(other)
    assert [r.group for r in res.records] == ["fake/001.mp4", "real/000.mp4"]
    assert res.grouping == "per-video" and res.grouping_note == ""


def test_explicit_group_column_wins_over_names_and_grouping_is_recorded(tmp_path):
    for n in ("000.mp4", "000_003.mp4"):
        touch(tmp_path / n)
    (tmp_path / "t.csv").write_text("file,label,group\n000.mp4,REAL,a\n000_003.mp4,FAKE,b\n")
    res = load_records(tmp_path / "t.csv")
    assert [r.group for r in res.records] == ["a", "b"] and res.grouping == "dataset"
    make_dfdc(tmp_path / "dfdc")
    assert load_records(tmp_path / "dfdc").grouping == "dataset"
    make_ffpp(tmp_path / "ffpp")
    assert load_records(tmp_path / "ffpp").grouping == "dataset"


def test_group_by_pattern_on_names_and_paths(tmp_path):
    root = tmp_path / "ds"
    for n in ("real/alice_01.mp4", "real/bob_01.mp4", "fake/alice_swap_7.mp4", "fake/bob_swap_2.mp4",
              "fake/zzz.mp4"):
        touch(root / n)
    res = load_records(root, group_by=r"^([a-z]+)_")
    assert {r.rel_path: r.group for r in res.records} == {
        "real/alice_01.mp4": "alice", "fake/alice_swap_7.mp4": "alice", "real/bob_01.mp4": "bob",
        "fake/bob_swap_2.mp4": "bob", "fake/zzz.mp4": "fake/zzz.mp4"}
    assert res.grouping == "group-by" and "matched 4 of 5" in res.grouping_note
    assert "one per video" in res.grouping_note
    # no capture group: the whole match; a "/" in the pattern: matched against the relative path
    res = load_records(root, group_by=r"(real|fake)/[a-z]")
    assert {r.group for r in res.records} == {"real", "fake"}
    res = load_records(root, group_by=r"[a-z]+(?=_)")
    assert by_rel(res)["fake/bob_swap_2.mp4"].group == "bob"
    # it wins over the dataset's own groups for the files it matches
    make_dfdc(tmp_path / "dfdc")
    res = load_records(tmp_path / "dfdc", group_by=r"^(orig|fake)")
    assert {r.group for r in res.records} == {"orig", "fake"} and res.grouping == "group-by"
    with pytest.raises(UserError, match="matched none of the 5 video"):
        load_records(root, group_by=r"^\d{4}")
    with pytest.raises(UserError, match="not a valid regular expression"):
        load_records(root, group_by="([a-z]")


def test_non_utf8_file_names(tmp_path):
    raw_name = b"caf\xe9 clip.mp4"  # latin-1, not valid UTF-8
    root = os.fsencode(tmp_path)
    try:
        with open(os.path.join(root, raw_name), "wb"):
            pass
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    (tmp_path / "t.csv").write_bytes(b"file,label\n" + raw_name + b",FAKE\n")
    res = load_records(tmp_path / "t.csv")
    assert res.problems == []
    assert os.fsencode(res.records[0].path).endswith(raw_name)
    # and found by walking folders
    (tmp_path / "fake").mkdir()
    os.rename(os.path.join(root, raw_name), os.path.join(root, b"fake", raw_name))
    res = load_records(tmp_path, format="folders")
    assert len(res.records) == 1 and os.path.exists(res.records[0].path)


def test_windows_separators_fifo_and_appledouble(tmp_path):
    touch(tmp_path / "fake" / "sub" / "w.mp4")
    touch(tmp_path / "fake" / "._w.mp4")  # macOS resource fork junk, not a video
    (tmp_path / "t.csv").write_text("fake\\sub\\w.mp4,FAKE\n")
    res = load_records(tmp_path / "t.csv")
    assert [r.rel_path for r in res.records] == ["fake/sub/w.mp4"] and res.problems == []
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fake" / "pipe.mp4")  # opening a FIFO would hang a reader
    res = load_records(tmp_path, format="folders")
    assert [r.rel_path for r in res.records] == ["fake/sub/w.mp4"]
    if hasattr(os, "mkfifo"):
        assert kinds(res) == ["refused"] and "not a regular file" in str(res.problems[0])


def sparse_file(path: Path, size: int, head: bytes = b"file,label\n") -> Path:
    """A file that claims ``size`` bytes but uses almost no disk (a hole after ``head``)."""
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def test_csv_label_table_over_the_size_cap_is_refused_before_reading(tmp_path):
    """A multi-GB "CSV" (a mistake or a hostile upload) is one clear error, never read into memory."""
    from deepfake_detector.data.sources import base

    big = sparse_file(tmp_path / "labels.csv", base.MAX_TEXT_BYTES + 1)
    for fmt in ("csv", "auto"):
        with pytest.raises(UserError, match=r"labels\.csv: is 256\.0 MB, larger than the limit of 256\.0 MB"):
            load_records(big, fmt)


def test_text_metadata_caps_cover_csv_legacy_and_celebdf_lists(tmp_path, monkeypatch):
    from deepfake_detector.data.sources import base

    monkeypatch.setattr(base, "MAX_TEXT_BYTES", 64)
    touch(tmp_path / "csv" / "a.mp4")
    table = tmp_path / "csv" / "t.csv"
    table.write_text("file,label\n" + "a.mp4,REAL\n" * 10)
    with pytest.raises(UserError, match="larger than the limit of 64 bytes for a label table"):
        load_records(table, "csv")
    # the legacy layout's metadata CSV goes through the same reader
    touch(tmp_path / "legacy" / "a.mp4")
    make_legacy(tmp_path / "legacy", ["a.mp4"], "a.mp4,REAL\n" * 10)
    with pytest.raises(UserError, match="Gobal_metadata.csv: is 110 bytes, larger than the limit"):
        load_records(tmp_path / "legacy", "legacy")
    # Celeb-DF's list of testing videos
    root = tmp_path / "celeb"
    touch(root / "Celeb-real" / "id0_0000.mp4")
    (root / "List_of_testing_videos.txt").write_text("1 Celeb-real/id0_0000.mp4\n" * 5)
    with pytest.raises(UserError, match="List_of_testing_videos.txt: is 130 bytes, larger than the limit of "
                                       "64 bytes for a list of testing videos"):
        load_records(root, "celebdf")
    # under the cap, both read as before
    monkeypatch.setattr(base, "MAX_TEXT_BYTES", 1 << 20)
    assert len(load_records(table, "csv").records) == 1
    assert [r.split for r in load_records(root, "celebdf").records] == ["test"]


def test_json_and_pickle_caps_give_the_same_message(tmp_path, monkeypatch):
    from deepfake_detector.data.sources import dfdc, legacy

    big = sparse_file(tmp_path / "metadata.json", 2048, b"{}")
    monkeypatch.setattr(dfdc, "MAX_JSON_BYTES", 1024)
    with pytest.raises(UserError, match="metadata.json: is 2048 bytes, larger than the limit of 1024 bytes"):
        load_records(big, "dfdc")
    pkl = sparse_file(tmp_path / "list.pkl", 2048, b"")
    monkeypatch.setattr(legacy, "MAX_PICKLE_BYTES", 1024)
    with pytest.raises(UnsafeFileError, match="list.pkl: is 2048 bytes, larger than the limit of 1024 bytes"):
        load_video_list(pkl)


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_metadata_file_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    """The loaders check ``isfile`` first; the reader refuses a pipe on its own too (a file swapped for
    one in between, or a new caller), instead of blocking in open()."""
    from deepfake_detector.data.sources.base import read_file_bytes, text_limit

    os.mkfifo(tmp_path / "labels.csv")  # open() would block until someone writes
    for limit in (None, text_limit("a label table")):
        with pytest.raises(UserError, match="labels.csv: not a regular file"):
            read_file_bytes(tmp_path / "labels.csv", limit)


# ------------------------------------------------------------------------------------- legacy


def make_legacy(root: Path, entries, meta_text: str) -> None:
    (root / "Models").mkdir(parents=True, exist_ok=True)
    (root / "Data").mkdir(parents=True, exist_ok=True)
    (root / "Models" / "video_files.pkl").write_bytes(pickle.dumps(entries))
    (root / "Data" / "Gobal_metadata.csv").write_text(meta_text)


def test_legacy_absolute_paths_from_another_machine(tmp_path):
    touch(tmp_path / "Dataset" / "aaa.mp4")
    touch(tmp_path / "Dataset" / "bbb.mp4")
    touch(tmp_path / "Dataset" / "ccc.mp4")
    touch(tmp_path / "x1" / "same.mp4")
    touch(tmp_path / "x2" / "same.mp4")
    make_legacy(tmp_path, [
        "/content/Dataset/aaa.mp4",     # absolute, from Colab: found by name
        "Dataset/bbb.mp4",              # relative to the root
        "C:\\data\\Dataset\\ccc.mp4",   # a Windows path
        "/content/x2/same.mp4",         # two files called same.mp4: the folder decides
        "/content/zzz.mp4",             # nowhere
        "/content/nolabel.mp4",
        "/content/Dataset/aaa.mp4",     # listed twice
    ], "aaa.mp4,FAKE\nbbb.mp4,REAL\nccc.mp4,fake\nsame.mp4,REAL\nzzz.mp4,REAL\naaa.mp4,FAKE\n")
    touch(tmp_path / "nolabel.mp4")
    assert detect_format(tmp_path) == "legacy"
    res = load_records(tmp_path)
    recs = by_rel(res)
    assert {k: v.label for k, v in recs.items()} == {
        "Dataset/aaa.mp4": FAKE, "Dataset/bbb.mp4": REAL, "Dataset/ccc.mp4": FAKE, "x2/same.mp4": REAL}
    assert kinds(res) == ["duplicate", "label", "missing"]
    assert all(r.source == "legacy" for r in res.records)


def test_legacy_explicit_paths_and_original_groups(tmp_path):
    touch(tmp_path / "vids" / "orig.mp4")
    touch(tmp_path / "vids" / "fake1.mp4")
    (tmp_path / "meta.csv").write_text("file,label,original\norig.mp4,REAL,\nfake1.mp4,FAKE,orig.mp4\n")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(("/old/orig.mp4", "/old/fake1.mp4"), protocol=0))
    res = load_records(tmp_path, format="legacy", metadata=tmp_path / "meta.csv",
                       video_list=tmp_path / "list.pkl", video_dir=tmp_path / "vids")
    recs = by_rel(res)
    assert res.problems == [] and set(recs) == {"orig.mp4", "fake1.mp4"}
    assert recs["fake1.mp4"].group == recs["orig.mp4"].group == "orig.mp4"
    with pytest.raises(UserError, match="--metadata"):
        load_records(tmp_path, format="legacy", video_list=tmp_path / "list.pkl")
    # the corrected spelling of the metadata file is found too
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Global_metadata.csv").write_text("fake1.mp4,FAKE\n")
    res = load_records(tmp_path, format="legacy", video_list=tmp_path / "list.pkl",
                       video_dir=tmp_path / "vids")
    assert [r.rel_path for r in res.records] == ["fake1.mp4"] and kinds(res) == ["label"]


@pytest.mark.parametrize("payload", [SystemPayload, OpenPayload])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_legacy_malicious_pickle_is_refused_and_nothing_runs(tmp_path, payload, protocol):
    target = tmp_path / "pwned"
    make_legacy(tmp_path, [], "a.mp4,REAL\n")
    blob = pickle.dumps(["/content/a.mp4", payload(target)], protocol=protocol)
    (tmp_path / "Models" / "video_files.pkl").write_bytes(blob)
    with pytest.raises(UnsafeFileError, match="nothing from the file was executed"):
        load_records(tmp_path)
    assert not target.exists()
    # sanity: the payload is real (plain pickle would have run it)
    if payload is OpenPayload:
        pickle.loads(blob)[1].close()
        assert target.exists()


def test_legacy_pickle_wrong_shapes_and_garbage(tmp_path):
    p = tmp_path / "v.pkl"
    p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UnsafeFileError, match="expected a list"):
        load_video_list(p)
    p.write_bytes(pickle.dumps(["ok", 3]))
    with pytest.raises(UnsafeFileError, match="item 1"):
        load_video_list(p)
    p.write_bytes(pickle.dumps([["nested"]]))
    with pytest.raises(UnsafeFileError):
        load_video_list(p)
    p.write_bytes(pickle.dumps(["a", "b"])[:-3])  # truncated
    with pytest.raises(UserError, match="not a readable pickle"):
        load_video_list(p)
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError):
        load_video_list(p)
    p.write_bytes(pickle.dumps([b"bytes-path.mp4", "str.mp4"]))
    assert load_video_list(p) == ["bytes-path.mp4", "str.mp4"]


# --------------------------------------------------------------------------------------- dfdc


def make_dfdc(root: Path) -> None:
    part0 = root / "dfdc_train_part_0"
    part1 = root / "dfdc_train_part_1"
    for name in ("orig0.mp4", "fake0a.mp4", "fake0b.mp4"):
        touch(part0 / name)
    for name in ("orig1.mp4", "fake1.mp4"):
        touch(part1 / name)
    (part0 / "metadata.json").write_text(json.dumps({
        "orig0.mp4": {"label": "REAL", "split": "train", "original": None},
        "fake0a.mp4": {"label": "FAKE", "split": "train", "original": "orig0.mp4", "manipulation": "swap",
                       "nested": {"ignored": 1}},
        "fake0b.mp4": {"label": "fake", "split": "somewhere", "original": "orig0.mp4"},
        "notdownloaded.mp4": {"label": "FAKE", "split": "train", "original": "orig0.mp4"},
    }))
    (part1 / "metadata.json").write_text(json.dumps({
        "orig1.mp4": {"label": "REAL", "split": "test"},
        "fake1.mp4": {"label": "FAKE", "split": "test", "original": "orig1.mp4"},
        "broken.mp4": ["FAKE"],
        "nolabel.mp4": {"split": "train"},
        "badorig.mp4": {"label": "FAKE", "original": 5},
        "badlabel.mp4": {"label": 7},
        "../../escape.mp4": {"label": "FAKE"},
    }))


def test_dfdc_parts_groups_and_problems(tmp_path):
    make_dfdc(tmp_path)
    touch(tmp_path.parent / "escape.mp4")
    assert detect_format(tmp_path) == "dfdc"
    res = load_records(tmp_path)
    recs = by_rel(res)
    assert set(recs) == {f"dfdc_train_part_0/{n}" for n in ("orig0.mp4", "fake0a.mp4", "fake0b.mp4")} | {
        "dfdc_train_part_1/orig1.mp4", "dfdc_train_part_1/fake1.mp4"}
    g0 = "dfdc_train_part_0/orig0.mp4"
    assert recs[g0].group == g0 and recs[g0].split == "train"
    assert recs["dfdc_train_part_0/fake0a.mp4"].group == g0
    assert recs["dfdc_train_part_0/fake0b.mp4"].group == g0
    assert recs["dfdc_train_part_0/fake0b.mp4"].split is None  # unknown split value
    assert recs["dfdc_train_part_1/fake1.mp4"].group == "dfdc_train_part_1/orig1.mp4"
    assert recs["dfdc_train_part_1/orig1.mp4"].split == "test"
    assert recs["dfdc_train_part_0/fake0a.mp4"].label == FAKE
    assert recs["dfdc_train_part_0/fake0a.mp4"].extra == {"manipulation": "swap", "original": g0}
    assert res.root == str(tmp_path)
    assert kinds(res) == ["label", "malformed", "malformed", "malformed", "missing", "refused"]
    assert counts_total(count_by_split(res.records)) == 5


def counts_total(counts):
    return sum(c[REAL] + c[FAKE] for c in counts.values())


def test_dfdc_single_json_file_and_whole_file_errors(tmp_path):
    touch(tmp_path / "a.mp4")
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"a.mp4": {"label": "REAL"}}))
    assert detect_format(meta) == "dfdc"
    res = load_records(meta)
    assert [r.rel_path for r in res.records] == ["a.mp4"] and res.format == "dfdc"
    assert res.root == str(tmp_path)  # a single file's folder is the dataset root
    meta.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_records(meta)
    meta.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        load_records(meta)
    meta.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError):
        load_records(meta)


# --------------------------------------------------------------------------------------- ffpp


def make_ffpp(root: Path) -> None:
    for comp in ("c23", "c40"):
        for vid in ("000", "003", "001", "002", "004"):
            touch(root / "original_sequences" / "youtube" / comp / "videos" / f"{vid}.mp4")
        for method in ("Deepfakes", "Face2Face"):
            for name in ("000_003", "003_000", "001_002", "002_001"):
                touch(root / "manipulated_sequences" / method / comp / "videos" / f"{name}.mp4")
    touch(root / "manipulated_sequences" / "Deepfakes" / "masks" / "videos" / "000_003.mp4")  # ignored
    touch(root / "original_sequences" / "actors" / "c23" / "videos" / "01__walking_down_street.mp4")
    touch(root / "original_sequences" / "actors" / "c23" / "videos" / "02__talking.mp4")
    touch(root / "manipulated_sequences" / "DeepFakeDetection" / "c23" / "videos"
          / "01_02__walking_down_street__YVGY8LOK.mp4")
    touch(root / "manipulated_sequences" / "DeepFakeDetection" / "c23" / "videos" / "odd-name.mp4")
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.json").write_text(json.dumps([["000", "003"]]))
    (splits / "val.json").write_text(json.dumps([["001", "002"], "garbage"]))
    (splits / "test.json").write_text(json.dumps([]))


def test_ffpp_layout_splits_and_groups(tmp_path):
    make_ffpp(tmp_path)
    assert detect_format(tmp_path) == "ffpp"
    res = load_records(tmp_path)
    recs = by_rel(res)
    assert kinds(res) == ["malformed"]  # the "garbage" split entry
    assert all("/c23/" in r for r in recs)  # c23 preferred, never mixed with c40
    yt = "original_sequences/youtube/c23/videos"
    df = "manipulated_sequences/Deepfakes/c23/videos"
    f2f = "manipulated_sequences/Face2Face/c23/videos"
    assert recs[f"{yt}/000.mp4"].label == REAL and recs[f"{df}/000_003.mp4"].label == FAKE
    # originals 000 and 003 and all their fakes are one group, in the split of their pair
    pair = [f"{yt}/000.mp4", f"{yt}/003.mp4", f"{df}/000_003.mp4", f"{df}/003_000.mp4", f"{f2f}/003_000.mp4"]
    assert {recs[k].group for k in pair} == {"ffpp:000"}
    assert {recs[k].split for k in pair} == {"train"}
    assert recs[f"{df}/002_001.mp4"].group == "ffpp:001" and recs[f"{df}/002_001.mp4"].split == "val"
    assert recs[f"{yt}/004.mp4"].split is None and recs[f"{yt}/004.mp4"].group == "ffpp:004"
    # DeepFakeDetection: grouped by target actor, no official split
    dfd = "manipulated_sequences/DeepFakeDetection/c23/videos"
    actors = "original_sequences/actors/c23/videos"
    assert recs[f"{dfd}/01_02__walking_down_street__YVGY8LOK.mp4"].group == "ffpp-dfd:01"
    assert recs[f"{actors}/01__walking_down_street.mp4"].group == "ffpp-dfd:01"
    assert recs[f"{actors}/02__talking.mp4"].group == "ffpp-dfd:02"
    assert recs[f"{dfd}/odd-name.mp4"].group == f"{dfd}/odd-name.mp4"  # unparsed name: its own group
    counts = count_by_split(res.records)
    assert counts["train"] == {REAL: 2, FAKE: 4} and counts["val"] == {REAL: 2, FAKE: 4}
    assert list(counts) == ["train", "val", "unsplit"]


def test_ffpp_compression_and_methods(tmp_path):
    make_ffpp(tmp_path)
    res = load_records(tmp_path, compression="c40", methods="face2face")
    recs = by_rel(res)
    assert all("/c40/" in r for r in recs)
    assert not any("Deepfakes" in r or "actors" in r for r in recs)  # DFD filtered out: actors too
    assert sum(r.label == FAKE for r in res.records) == 4
    assert sum(r.label == REAL for r in res.records) == 5
    with pytest.raises(UserError, match="not found"):
        load_records(tmp_path, methods=["NoSuchMethod"])
    with pytest.raises(UserError, match="c0"):
        load_records(tmp_path, compression="c99")
    with pytest.raises(UserError, match="do not apply"):
        load_records(tmp_path, test_list="x")


def test_ffpp_auto_compression_is_the_one_most_folders_have(tmp_path):
    for method in ("Deepfakes", "FaceSwap"):
        touch(tmp_path / "manipulated_sequences" / method / "c40" / "videos" / "000_001.mp4")
    touch(tmp_path / "original_sequences" / "youtube" / "c40" / "videos" / "000.mp4")
    touch(tmp_path / "original_sequences" / "youtube" / "c23" / "videos" / "000.mp4")
    res = load_records(tmp_path)
    assert len(res.records) == 3 and all(r.extra["compression"] == "c40" for r in res.records)
    assert len({r.group for r in res.records}) == 1


# ------------------------------------------------------------------------------------ celebdf


def test_celebdf_layout_test_list_and_groups(tmp_path):
    for name in ("id0_0000.mp4", "id0_0001.mp4", "id1_0000.mp4"):
        touch(tmp_path / "Celeb-real" / name)
    for name in ("id0_id1_0000.mp4", "id1_id0_0000.mp4", "id0_id16_0001.mp4"):
        touch(tmp_path / "Celeb-synthesis" / name)
    touch(tmp_path / "YouTube-real" / "00000.mp4")
    touch(tmp_path / "YouTube-real" / "00001.mp4")
    (tmp_path / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n0 Celeb-synthesis/id1_id0_0000.mp4\n1 Celeb-real/id1_0000.mp4\n"
        "\n0 Celeb-synthesis/id9_id9_0000.mp4\nnonsense\n")
    assert detect_format(tmp_path) == "celebdf"
    res = load_records(tmp_path)
    recs = by_rel(res)
    assert len(recs) == 8
    assert recs["Celeb-synthesis/id0_id16_0001.mp4"].group == "celebdf:id0"
    assert recs["Celeb-real/id0_0001.mp4"].group == "celebdf:id0"
    assert recs["Celeb-synthesis/id1_id0_0000.mp4"].group == "celebdf:id1"
    assert recs["YouTube-real/00000.mp4"].group == "celebdf:youtube/00000"
    assert recs["Celeb-synthesis/id0_id16_0001.mp4"].extra["original"] == "Celeb-real/id0_0001.mp4"
    assert {k for k, r in recs.items() if r.split == "test"} == {
        "YouTube-real/00001.mp4", "Celeb-synthesis/id1_id0_0000.mp4", "Celeb-real/id1_0000.mp4"}
    assert recs["Celeb-synthesis/id0_id1_0000.mp4"].split is None
    assert kinds(res) == ["malformed", "missing"]
    assert count_by_split(res.records) == {"test": {REAL: 2, FAKE: 1}, "unsplit": {REAL: 3, FAKE: 2}}


# ------------------------------------------------------------------------------------ folders


def test_folders_any_case_recursive_by_extension(tmp_path):
    touch(tmp_path / "Real" / "a.mp4")
    touch(tmp_path / "Real" / "deep" / "b.MOV")
    touch(tmp_path / "FAKE" / "c.webm")
    touch(tmp_path / "FAKE" / "notes.txt")
    touch(tmp_path / "other" / "d.mp4")
    assert detect_format(tmp_path) == "folders"
    res = load_records(tmp_path)
    assert {r.rel_path: r.label for r in res.records} == {
        "Real/a.mp4": REAL, "Real/deep/b.MOV": REAL, "FAKE/c.webm": FAKE}
    assert all(r.split is None for r in res.records)


def test_folders_with_split_level(tmp_path):
    touch(tmp_path / "train" / "real" / "a.mp4")
    touch(tmp_path / "train" / "fake" / "b.mp4")
    touch(tmp_path / "validation" / "fake" / "c.mp4")
    assert detect_format(tmp_path) == "folders"
    res = load_records(tmp_path)
    assert {r.rel_path: (r.label, r.split) for r in res.records} == {
        "train/real/a.mp4": (REAL, "train"), "train/fake/b.mp4": (FAKE, "train"),
        "validation/fake/c.mp4": (FAKE, "val")}


# ----------------------------------------------------------------------- detection and counts


def test_detect_format_csv_and_errors(tmp_path):
    (tmp_path / "only.csv").write_text("file,label\n")
    assert detect_format(tmp_path) == "csv"
    assert detect_format(tmp_path / "only.csv") == "csv"
    assert load_records(tmp_path).records == []
    (tmp_path / "second.csv").write_text("file,label\n")
    with pytest.raises(UserError, match="2 CSV files") as exc:
        detect_format(tmp_path)
    assert "--format" in str(exc.value) and all(f in str(exc.value) for f in FORMATS)
    with pytest.raises(UserError, match="no such file"):
        detect_format(tmp_path / "nope")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(UserError, match="--format"):
        detect_format(tmp_path / "x.bin")
    with pytest.raises(UserError, match="unknown --format"):
        load_records(tmp_path, format="parquet")


def test_detect_dfdc_nested_metadata(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "metadata.json").write_text("{}")
    assert detect_format(tmp_path) == "dfdc"


def test_counts_table_and_problem_summary():
    from deepfake_detector.data.records import RecordProblem, VideoRecord

    recs = [VideoRecord(f"/d/{i}.mp4", FAKE if i % 4 else REAL, split="train" if i < 8 else None)
            for i in range(12)]
    counts = count_by_split(recs)
    assert counts == {"train": {REAL: 2, FAKE: 6}, "unsplit": {REAL: 1, FAKE: 3}}
    table = format_counts_table(counts)
    lines = table.splitlines()
    assert lines[1].split() == ["train", "2", "6", "8", "75.0"]
    assert lines[-1].split() == ["total", "3", "9", "12", "75.0"]
    assert format_counts_table(recs) == table
    probs = [RecordProblem(f"x:{i}", "file not found", kind="missing") for i in range(30)]
    probs.append(RecordProblem("y", "refused", kind="refused"))
    lines = summarize_problems(probs, per_kind=5)
    assert len(lines) == 7 and "25 more" in lines[5] and lines[6] == "y: refused"


# ------------------------------------------------------------------------------- text lists


def test_text_lists_and_celebdf_test_list(tmp_path):
    from deepfake_detector.data.sources import read_video_list

    touch(tmp_path / "data" / "a.mp4")
    touch(tmp_path / "lists" / "1 clip.mp4")  # a file really named like a Celeb-DF line
    lists = tmp_path / "lists"
    (lists / "plain.txt").write_text(f"# mine\n../data/a.mp4\n\n{tmp_path / 'data' / 'a.mp4'}\n")
    assert [(e.path, e.label) for e in read_video_list(lists / "plain.txt")] == [
        (str(tmp_path / "data" / "a.mp4"), None)] * 2
    (lists / "odd.txt").write_text("1 clip.mp4\n")
    odd = read_video_list(lists / "odd.txt")
    assert [(e.path, e.label) for e in odd] == [(str(lists / "1 clip.mp4"), None)]
    (lists / "mine.txt").write_text("1 Celeb-real/id0_0000.mp4\n0  Celeb-synthesis/id0_id1_0000.mp4\n")
    entries = read_video_list(lists / "mine.txt")
    assert [(e.path, e.label, e.where) for e in entries] == [
        (str(lists / "Celeb-real" / "id0_0000.mp4"), REAL, "mine.txt:1"),
        (str(lists / "Celeb-synthesis" / "id0_id1_0000.mp4"), FAKE, "mine.txt:2")]
    (lists / "List_of_testing_videos.txt").write_text("1 clip.mp4\n")  # its own name decides
    assert read_video_list(lists / "List_of_testing_videos.txt")[0].label == REAL
    assert [e.path for e in read_video_list(lists / "mine.txt", base=tmp_path / "data")] == [
        str(tmp_path / "data" / "Celeb-real" / "id0_0000.mp4"),
        str(tmp_path / "data" / "Celeb-synthesis" / "id0_id1_0000.mp4")]
    with pytest.raises(UserError, match="cannot read"):
        read_video_list(lists / "nope.txt")


# ------------------------------------------------------------------------ manipulation methods


def test_every_source_that_knows_a_method_carries_it_and_reals_have_none(tmp_path):
    from deepfake_detector.data.sources import dataset_summary

    make_ffpp(tmp_path / "ffpp")
    ff = by_rel(load_records(tmp_path / "ffpp"))
    assert ff["manipulated_sequences/Face2Face/c23/videos/000_003.mp4"].method == "Face2Face"
    assert ff["original_sequences/youtube/c23/videos/000.mp4"].method == ""
    assert dataset_summary(load_records(tmp_path / "ffpp"))["compression"] == "c23"
    touch(tmp_path / "celeb" / "Celeb-real" / "id0_0000.mp4")
    touch(tmp_path / "celeb" / "Celeb-synthesis" / "id0_id1_0000.mp4")
    cd = by_rel(load_records(tmp_path / "celeb"))
    assert cd["Celeb-synthesis/id0_id1_0000.mp4"].method == "Celeb-synthesis"
    assert cd["Celeb-real/id0_0000.mp4"].method == ""
    for name in ("r.mp4", "f1.mp4", "f2.mp4", "f3.mp4"):
        touch(tmp_path / "list" / name)
    (tmp_path / "list" / "labels.csv").write_text(
        "file,label,Method\nr.mp4,REAL,ignored-for-reals\nf1.mp4,FAKE,FaceSwap\nf2.mp4,FAKE,\nf3.mp4,FAKE,NT\n")
    csv_recs = by_rel(load_records(tmp_path / "list" / "labels.csv"))
    assert {k: r.method for k, r in csv_recs.items()} == {"r.mp4": "", "f1.mp4": "FaceSwap", "f2.mp4": "",
                                                          "f3.mp4": "NT"}
    for name in ("o.mp4", "a.mp4", "b.mp4"):
        touch(tmp_path / "dfdc" / name)
    (tmp_path / "dfdc" / "metadata.json").write_text(json.dumps({
        "o.mp4": {"label": "REAL", "manipulation": "none"},
        "a.mp4": {"label": "FAKE", "original": "o.mp4", "method": "gan"},
        "b.mp4": {"label": "FAKE", "original": "o.mp4", "manipulation": "faceswap"},  # the demo's spelling
    }))
    dfdc = by_rel(load_records(tmp_path / "dfdc"))
    assert {k: r.method for k, r in dfdc.items()} == {"o.mp4": "", "a.mp4": "gan", "b.mp4": "faceswap"}


def test_demo_metadata_names_each_fake_method(tmp_path):
    from deepfake_detector.data.synthetic import VideoPlan, metadata_for

    plans = [VideoPlan(name="r.mp4", label="REAL", split="test", source="carphone", manipulation="none",
                       original=None, index=0, params={}),
             VideoPlan(name="f.mp4", label="FAKE", split="test", source="carphone", manipulation="lowres",
                       original="r.mp4", index=1, params={})]
    meta = metadata_for(plans)
    assert "method" not in meta["r.mp4"] and meta["f.mp4"]["method"] == "lowres"
