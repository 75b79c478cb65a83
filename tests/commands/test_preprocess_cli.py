"""``deepfake-detector preprocess`` end to end on tiny datasets, and its exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepfake_detector.cli import main
from deepfake_detector.data import cache
from tests.helpers import make_video


@pytest.fixture()
def folders_dataset(tmp_path, carphone) -> Path:
    root = tmp_path / "ds"
    (root / "Real").mkdir(parents=True)
    shutil.copy(carphone, root / "Real" / "face.mp4")
    make_video(root / "Fake" / "swap.mp4", frames=10, size=(88, 72), face=True)
    (root / "Fake" / "broken.mp4").write_bytes(b"not a video")
    return root


def test_folders_dataset_end_to_end(tmp_path, folders_dataset, capsys):
    out = tmp_path / "cache"
    rc = main(["preprocess", str(folders_dataset), "--out", str(out), "--frames", "4", "--size", "32",
               "--detector", "haar", "--workers", "0", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "format folders" in text
    assert "REAL" in text and "FAKE" in text  # counts per split
    assert "unreadable" in text and "manifest:" in text and "videos/s" in text
    rows = {r.path: r for r in cache.read_manifest_file(out / "manifest.csv")}
    assert set(rows) == {"Real/face.mp4", "Fake/swap.mp4", "Fake/broken.mp4"}
    assert rows["Real/face.mp4"].status == "ok" and rows["Real/face.mp4"].label == "REAL"
    assert rows["Fake/broken.mp4"].status == "unreadable" and rows["Fake/broken.mp4"].error
    assert cache.load_clip(out, rows["Real/face.mp4"].clip).shape == (4, 32, 32, 3)

    # rerun: finished videos are skipped, the broken one is retried
    rc = main(["preprocess", str(folders_dataset), "--out", str(out), "--frames", "4", "--size", "32",
               "--detector", "haar", "--workers", "0", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "1 video(s)" in text

    # other settings into the same cache: refused (exit 2) unless --force
    rc = main(["preprocess", str(folders_dataset), "--out", str(out), "--frames", "5", "--size", "32",
               "--detector", "haar", "--workers", "0", "--no-progress"])
    assert rc == 2
    assert "--force" in capsys.readouterr().err


def test_csv_dataset_with_label_map_and_pool(tmp_path, carphone, capsys):
    root = tmp_path / "csvds"
    root.mkdir()
    shutil.copy(carphone, root / "a.mp4")
    make_video(root / "b.mp4", frames=8, size=(64, 48), face=False)
    (root / "labels.csv").write_text("file,label\na.mp4,0\nb.mp4,1\nmissing.mp4,1\n")
    out = tmp_path / "cache"
    rc = main(["preprocess", str(root / "labels.csv"), "--out", str(out), "--format", "csv",
               "--label-map", "1=FAKE,0=REAL", "--frames", "3", "--size", "32", "--detector", "haar",
               "--workers", "2", "--no-progress"])
    assert rc == 0
    rows = {r.path: r for r in cache.load_manifest(out)}
    assert rows["a.mp4"].label == "REAL" and rows["a.mp4"].status == "ok"
    assert rows["b.mp4"].label == "FAKE" and rows["b.mp4"].status == "no_face"
    assert "problem" in capsys.readouterr().out  # the missing file is a record problem, not fatal


def test_shard_option(tmp_path, folders_dataset):
    out = tmp_path / "cache"
    for k in (1, 2):
        rc = main(["preprocess", str(folders_dataset), "--out", str(out), "--frames", "2", "--size", "32",
                   "--detector", "center", "--workers", "0", "--no-progress", "--shard", f"{k}/2"])
        assert rc in (0, 1)  # a shard may hold only the broken file
    assert len(cache.load_manifest(out)) == 3
    assert not (out / "manifest.csv").exists()


def test_nothing_processable_exits_1(tmp_path, capsys):
    root = tmp_path / "bad"
    (root / "real").mkdir(parents=True)
    (root / "fake").mkdir()
    (root / "real" / "x.mp4").write_bytes(b"")
    (root / "fake" / "y.mp4").write_bytes(b"garbage")
    rc = main(["preprocess", str(root), "--out", str(tmp_path / "c"), "--detector", "center",
               "--workers", "0", "--no-progress"])
    assert rc == 1
    assert "no video could be processed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra", [["--shard", "3/2"], ["--shard", "x"], ["--frames", "0"], ["--margin", "5"], ["--workers", "-1"],
              ["--limit", "0"], ["--sampling", "snippets", "--frames", "6", "--snippet-len", "4"],
              ["--snippet-len", "0"]],
)
def test_bad_arguments_exit_2(tmp_path, folders_dataset, extra, capsys):
    rc = main(["preprocess", str(folders_dataset), "--out", str(tmp_path / "c"), "--no-progress", *extra])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error:")


def test_missing_dataset_exits_2(tmp_path, capsys):
    rc = main(["preprocess", str(tmp_path / "nope"), "--out", str(tmp_path / "c")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_dlib_suggests_haar(tmp_path, folders_dataset, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "dlib":
            raise ImportError("No module named 'dlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    rc = main(["preprocess", str(folders_dataset), "--out", str(tmp_path / "c"), "--detector", "dlib"])
    assert rc == 2
    assert "--detector haar" in capsys.readouterr().err


def test_limit(tmp_path, folders_dataset):
    out = tmp_path / "c"
    rc = main(["preprocess", str(folders_dataset), "--out", str(out), "--limit", "1", "--detector", "center",
               "--workers", "0", "--no-progress", "--frames", "2", "--size", "16"])
    assert len(cache.read_manifest_file(out / "manifest.csv")) == 1
    assert rc in (0, 1)


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["preprocess", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--out", "--format", "--label-map", "--frames", "--size", "--margin", "--detector",
                "--workers",
                "--shard", "--limit", "--no-progress"):
        assert opt in text


# --- users' own data: absolute-path lists, folders of links, groups from names ----------------------


def _quick(data, out, *extra) -> list[str]:
    return ["preprocess", str(data), "--out", str(out), "--detector", "center", "--frames", "2", "--size",
            "16", "--workers", "0", "--no-progress", *map(str, extra)]


def test_csv_with_absolute_paths_and_folder_of_symlinks(tmp_path, capsys):
    store = tmp_path / "store"
    real = make_video(store / "000.mp4", frames=6, size=(48, 40), face=False)
    fake = make_video(store / "000_003.mp4", frames=6, size=(48, 40), face=False)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "labels.csv").write_text(f"file,label\n{real},REAL\n{fake},FAKE\n")
    out = tmp_path / "cache"
    assert main(_quick(lists / "labels.csv", out)) == 0
    text = capsys.readouterr().out
    assert "outside" not in text and "groups: from file names" in text
    rows = {r.path: r for r in cache.load_manifest(out)}
    assert set(rows) == {str(real), str(fake)}  # outside the list's folder: keyed by absolute path
    assert {r.status for r in rows.values()} == {"ok"} and {r.group for r in rows.values()} == {"ffpp:000"}

    links = tmp_path / "links"
    (links / "real").mkdir(parents=True)
    (links / "fake").mkdir()
    (links / "real" / "000.mp4").symlink_to(real)
    (links / "fake" / "000_003.mp4").symlink_to(fake)
    assert main(_quick(links, tmp_path / "cache2")) == 0
    rows = {r.path: r for r in cache.load_manifest(tmp_path / "cache2")}
    assert set(rows) == {"real/000.mp4", "fake/000_003.mp4"} and {r.status for r in rows.values()} == {"ok"}


def test_group_by_flag(tmp_path, capsys):
    root = tmp_path / "ds"
    for rel in ("real/alice_1.mp4", "fake/alice_swap.mp4", "real/bob_1.mp4", "fake/bob_swap.mp4"):
        make_video(root / rel, frames=6, size=(48, 40), face=False)
    out = tmp_path / "cache"
    assert main(_quick(root, out, "--group-by", "^([a-z]+)_")) == 0
    assert "groups: from --group-by: --group-by '^([a-z]+)_' matched 4 of 4" in capsys.readouterr().out
    assert {r.path: r.group for r in cache.load_manifest(out)} == {
        "real/alice_1.mp4": "alice", "fake/alice_swap.mp4": "alice", "real/bob_1.mp4": "bob",
        "fake/bob_swap.mp4": "bob"}
    assert main(_quick(root, tmp_path / "c2")) == 0  # without: says a fake may meet its original
    assert "groups: one per video" in capsys.readouterr().out
    for bad, needle in (("([a-z", "not a valid regular expression"), ("^zzz", "matched none")):
        assert main(_quick(root, tmp_path / "c3", "--group-by", bad)) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1


def test_snippet_sampling_flag(tmp_path, folders_dataset, capsys):
    import json

    out = tmp_path / "cache"
    args = ["preprocess", str(folders_dataset), "--out", str(out), "--frames", "6", "--size", "32",
            "--detector", "haar", "--workers", "0", "--no-progress"]
    assert main([*args, "--sampling", "snippets", "--snippet-len", "3"]) == 0
    settings = json.loads((out / cache.CONFIG_NAME).read_text())["preprocess"]
    assert settings["sampling"] == "snippets" and settings["snippet_len"] == 3
    rows = {r.path: r for r in cache.read_manifest_file(out / "manifest.csv")}
    assert cache.load_clip(out, rows["Real/face.mp4"].clip).shape == (6, 32, 32, 3)
    capsys.readouterr()
    assert main(args) == 2  # the even sampler into a snippet cache: other clips, refused
    assert "sampling: 'snippets' -> 'even'" in capsys.readouterr().err
