"""extract_clip statuses and the dataset run: resume, retries, shards, settings guard, atomic files."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import cache
from deepfake_detector.data.preprocess import (
    extract_clip,
    parse_shard,
    read_cache_config,
    run_preprocess,
    select_shard,
    shard_of,
)
from deepfake_detector.data.records import VideoRecord
from deepfake_detector.errors import UserError
from tests.helpers import make_video

CFG = PreprocessConfig(frames=6, size=32, detector="haar")


def test_extract_clip_on_a_real_face(carphone):
    cfg = PreprocessConfig(frames=10, size=48)
    r = extract_clip(carphone, cfg)
    assert r.status == "ok", r.error
    assert r.clip.shape == (10, 48, 48, 3) and r.clip.dtype == np.uint8
    assert r.frames == 10 and r.face_ratio >= 0.8
    assert r.source_frames == 120 and (r.width, r.height) == (176, 144)
    assert r.fps == pytest.approx(29.97, abs=0.01) and r.duration == pytest.approx(4.0, abs=0.05)
    assert r.indices == [6, 18, 30, 42, 54, 66, 78, 90, 102, 114]
    assert r.boxes.shape == (10, 4)
    # the face sits in the upper middle of carphone's frames
    cx = (r.boxes[:, 0] + r.boxes[:, 2]) / 2
    assert ((cx > 50) & (cx < 130)).all()
    assert r.seconds > 0


def test_boxes_are_in_source_pixels_when_decode_is_downscaled(tmp_path):
    path = make_video(tmp_path / "big.mp4", frames=8, size=(352, 288), face=True)
    full = extract_clip(path, PreprocessConfig(frames=4, size=32))
    small = extract_clip(path, PreprocessConfig(frames=4, size=32, max_decode_side=176))
    assert full.status == small.status == "ok"
    side_full = full.boxes[:, 2] - full.boxes[:, 0]
    side_small = small.boxes[:, 2] - small.boxes[:, 0]
    # detection at another resolution moves boxes a little; a wrong scale would double them
    assert np.all(np.abs(side_small / side_full - 1) < 0.25)
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    assert np.all(np.abs(centre(full.boxes) - centre(small.boxes)) < 0.2 * side_full[:, None])


@pytest.mark.parametrize(
    "kind,status", [("zero", "unreadable"), ("random", "unreadable"), ("png", "unreadable"),
                    ("truncated", "unreadable"), ("audio", "unreadable"), ("text", "unreadable")],
)
def test_bad_files_get_a_status(bad_videos, kind, status):
    r = extract_clip(bad_videos[kind], CFG)
    assert r.status == status
    assert r.error and r.clip is None and r.frames == 0


def test_missing_directory_refused_too_short_statuses(tmp_path):
    assert extract_clip(tmp_path / "nope.mp4", CFG).status == "missing"
    assert extract_clip(tmp_path, CFG).status == "unreadable"
    big = make_video(tmp_path / "big.mp4", frames=3, size=(128, 96), face=False)
    r = extract_clip(big, PreprocessConfig(frames=3, size=32, max_pixels=128 * 96 - 1))
    assert r.status == "refused" and "max_pixels" in r.error
    full = make_video(tmp_path / "fs.mp4", frames=10, size=(64, 64), face=False,
                      container_options={"movflags": "faststart"})
    data = full.read_bytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(data[: data.find(b"mdat") + 20])
    assert extract_clip(empty, CFG).status == "too_short"


def test_symlink_loop_and_unreadable_file(tmp_path):
    loop = tmp_path / "loop.mp4"
    os.symlink(loop, loop)
    r = extract_clip(loop, CFG)
    assert r.status == "unreadable" and "link" in r.error
    if os.geteuid() != 0:  # root reads anything
        locked = make_video(tmp_path / "locked.mp4", frames=3, size=(64, 64), face=False)
        locked.chmod(0)
        assert extract_clip(locked, CFG).status == "unreadable"


def test_no_face_center_and_skip(tmp_path):
    path = make_video(tmp_path / "noface.mp4", frames=12, size=(96, 64), face=False)
    r = extract_clip(path, CFG)
    assert r.status == "no_face" and r.clip.shape == (6, 32, 32, 3) and r.face_ratio == 0.0
    r = extract_clip(path, PreprocessConfig(frames=6, size=32, detector="haar", no_face="skip"))
    assert r.status == "no_face" and r.clip is None


def test_short_video_gives_a_short_clip(tmp_path):
    path = make_video(tmp_path / "short.mp4", frames=3, size=(64, 64), face=True)
    r = extract_clip(path, PreprocessConfig(frames=20, size=32, detector="center"))
    assert r.status == "ok" and r.clip.shape[0] == 3 and r.indices == [0, 1, 2]


def test_timeout_is_an_error_status(tmp_path):
    path = make_video(tmp_path / "v.mp4", frames=10, size=(64, 64), face=False)
    r = extract_clip(path, PreprocessConfig(frames=4, size=32, timeout_s=1e-9))
    assert r.status == "error" and "timed out" in r.error


def test_unexpected_exception_becomes_error_status(tmp_path, monkeypatch):
    import deepfake_detector.data.video as video

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(video, "read_frames", boom)
    path = make_video(tmp_path / "v.mp4", frames=3, size=(64, 64), face=False)
    r = extract_clip(path, CFG)
    assert r.status == "error" and r.error == "RuntimeError: kaboom"


# ---------------------------------------------------------------------------------------------
# dataset runs
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def dataset(tmp_path, carphone) -> tuple[Path, list[VideoRecord]]:
    root = tmp_path / "data"
    (root / "real").mkdir(parents=True)
    shutil.copy(carphone, root / "real" / "face.mp4")
    make_video(root / "fake" / "noface.mp4", frames=10, size=(64, 48), face=False)
    make_video(root / "fake" / "small face.mp4", frames=8, size=(88, 72), face=True)
    (root / "fake" / "broken.mp4").write_bytes(b"\x00" * 100)
    recs = []
    for p in sorted(root.rglob("*.mp4")):
        rel = p.relative_to(root).as_posix()
        recs.append(VideoRecord(path=str(p), label="REAL" if rel.startswith("real") else "FAKE", rel_path=rel,
                                split="train"))
    recs.append(VideoRecord(path=str(root / "fake" / "gone.mp4"), label="FAKE", rel_path="fake/gone.mp4"))
    return root, recs


def _rows(out: Path, name: str = "manifest.csv") -> dict[str, cache.ManifestRow]:
    return {r.path: r for r in cache.read_manifest_file(out / name)}


def test_run_preprocess_writes_clips_manifest_and_config(tmp_path, dataset):
    root, recs = dataset
    out = tmp_path / "cache"
    s = run_preprocess(recs, out, CFG, workers=0, progress=False, dataset_root=root, fmt="folders")
    assert s.total == 5 and s.processed == 5 and s.skipped == 0
    rows = _rows(out)
    assert rows["real/face.mp4"].status == "ok"
    assert rows["fake/noface.mp4"].status == "no_face"
    assert rows["fake/broken.mp4"].status == "unreadable"
    assert rows["fake/gone.mp4"].status == "missing"
    ok = rows["real/face.mp4"]
    assert ok.label == "REAL" and ok.split == "train" and ok.frames == 6 and ok.face_ratio > 0.5
    clip = cache.load_clip(out, ok.clip)
    assert clip.shape == (6, 32, 32, 3)
    meta = json.loads((out / cache.CONFIG_NAME).read_text())
    assert meta["preprocess"]["frames"] == 6 and meta["format"] == "folders"
    assert meta["dataset_root"] == str(root)
    assert read_cache_config(out) == CFG
    assert s.counts == {"ok": 2, "no_face": 1, "unreadable": 1, "missing": 1}
    # atomic writes leave no temporary files behind
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_rerun_skips_done_retries_failed_and_redoes_deleted(tmp_path, dataset):
    root, recs = dataset
    out = tmp_path / "cache"
    run_preprocess(recs, out, CFG, workers=0, progress=False)
    s2 = run_preprocess(recs, out, CFG, workers=0, progress=False)
    assert s2.skipped == 3  # ok, ok, no_face
    assert s2.processed == 2  # unreadable + missing are retried
    # a deleted clip is redone; a failure that got fixed becomes ok
    rows = _rows(out)
    (out / rows["real/face.mp4"].clip).unlink()
    make_video(root / "fake" / "gone.mp4", frames=6, size=(64, 48), face=True)
    s3 = run_preprocess(recs, out, CFG, workers=0, progress=False)
    assert s3.processed == 3 and s3.skipped == 2
    rows = _rows(out)
    assert rows["fake/gone.mp4"].status in ("ok", "no_face")
    assert (out / rows["real/face.mp4"].clip).is_file()


def test_process_pool_matches_inline(tmp_path, dataset):
    _, recs = dataset
    a = run_preprocess(recs, tmp_path / "a", CFG, workers=0, progress=False)
    b = run_preprocess(recs, tmp_path / "b", CFG, workers=2, progress=False)
    assert a.counts == b.counts
    ra, rb = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    for key, row in ra.items():
        assert rb[key].status == row.status
        if row.clip:
            np.testing.assert_array_equal(cache.load_clip(tmp_path / "a", row.clip),
                                          cache.load_clip(tmp_path / "b", rb[key].clip))


def test_settings_guard(tmp_path, dataset):
    _, recs = dataset
    out = tmp_path / "cache"
    run_preprocess(recs[:1], out, CFG, workers=0, progress=False)
    other = PreprocessConfig(frames=8, size=32, detector="haar")
    with pytest.raises(UserError, match="frames"):
        run_preprocess(recs[:1], out, other, workers=0, progress=False)
    s = run_preprocess(recs[:1], out, other, workers=0, progress=False, force=True)
    assert s.processed == 1 and s.skipped == 0
    assert cache.load_clip(out, _rows(out)["fake/broken.mp4"].clip).shape[0] == 8 \
        if _rows(out)["fake/broken.mp4"].clip else True
    assert read_cache_config(out).frames == 8


def test_shards_partition_the_dataset(tmp_path, dataset):
    _, recs = dataset
    n = 3
    parts = [select_shard(recs, (k, n)) for k in range(1, n + 1)]
    keys = [sorted(r.rel_path for r in p) for p in parts]
    assert sorted(sum(keys, [])) == sorted(r.rel_path for r in recs)  # every video exactly once
    assert all(shard_of(r.rel_path, n) == k for k, p in enumerate(parts, 1) for r in p)
    assert select_shard(recs, (1, 1)) == recs
    out = tmp_path / "cache"
    for k in range(1, n + 1):
        run_preprocess(recs, out, CFG, workers=0, progress=False, shard=(k, n))
    merged = cache.load_manifest(out)
    assert sorted(r.path for r in merged) == sorted(r.rel_path for r in recs)
    names = {p.name for p in out.glob("manifest*.csv")}
    assert names == {f"manifest-{k}-of-{n}.csv" for k in range(1, n + 1)}


def test_parse_shard():
    assert parse_shard(None) is None
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_duplicate_records_are_processed_once(tmp_path, dataset):
    _, recs = dataset
    s = run_preprocess(recs + recs[:2], tmp_path / "c", CFG, workers=0, progress=False)
    assert s.processed == len(recs)


def test_unwritable_cache_is_a_user_error(tmp_path, dataset):
    _, recs = dataset
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        run_preprocess(recs, blocker / "cache", CFG, workers=0, progress=False)


def _misbehaving_task(rec):
    """Pool stand-in: hangs on 'hang*', kills its own process on 'crash*', else does the real work."""
    import time as _time

    from deepfake_detector.data import preprocess as pp

    name = Path(rec[1]).name
    if name.startswith("hang"):
        _time.sleep(3600)
    if name.startswith("crash"):
        os._exit(3)
    return pp._process_one(rec)


def test_pool_survives_hung_and_crashing_workers(tmp_path, monkeypatch):
    from deepfake_detector.data import preprocess as pp

    good = make_video(tmp_path / "good.mp4", frames=6, size=(64, 48), face=False)
    recs = [VideoRecord(path=str(good), label="REAL", rel_path=f"ok{i}.mp4") for i in range(4)]
    recs += [VideoRecord(path=str(good), label="FAKE", rel_path="hang.mp4"),
             VideoRecord(path=str(good), label="FAKE", rel_path="crash.mp4")]
    monkeypatch.setattr(pp, "_TASK", _misbehaving_task)
    monkeypatch.setattr(pp, "HARD_TIMEOUT_GRACE_S", 3.0)
    cfg = PreprocessConfig(frames=2, size=16, detector="center", timeout_s=0.5)
    s = run_preprocess(recs, tmp_path / "cache", cfg, workers=2, progress=False)
    rows = _rows(tmp_path / "cache")
    assert rows["hang.mp4"].status == "error" and "timed out" in rows["hang.mp4"].error
    assert rows["crash.mp4"].status == "error" and "crashed" in rows["crash.mp4"].error
    assert all(rows[f"ok{i}.mp4"].status == "ok" for i in range(4))  # centre detector: ok
    assert s.processed == 6


def test_interrupt_flushes_the_manifest(tmp_path, dataset, monkeypatch):
    from deepfake_detector.data import preprocess as pp

    _, recs = dataset
    real = pp._process_one
    calls = []

    def interrupted(rec):
        calls.append(rec)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(rec)

    monkeypatch.setattr(pp, "_process_one", interrupted)
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run_preprocess(recs, out, CFG, workers=0, progress=False)
    assert len(_rows(out)) == 2  # what finished before Ctrl-C is on disk
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(pp, "_process_one", real)
    s = run_preprocess(recs, out, CFG, workers=0, progress=False)
    assert s.processed + s.skipped == len(recs) and len(_rows(out)) == len(recs)


def test_a_video_replaced_at_the_same_path_is_processed_again(tmp_path):
    """Resume keys on the path, but a file replaced since (new size/mtime) must not keep its old clip."""
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data import cache as cache_mod
    from deepfake_detector.data.preprocess import run_preprocess
    from deepfake_detector.data.records import VideoRecord
    from tests.helpers import make_video

    video = tmp_path / "v.mp4"
    make_video(video, frames=8, size=(64, 48))
    rec = VideoRecord(path=str(video), label="REAL", rel_path="v.mp4")
    cfg = PreprocessConfig(frames=4, size=32, detector="center")
    out = tmp_path / "cache"
    run_preprocess([rec], out, cfg, workers=0, progress=False)
    first = cache_mod.load_manifest(out)[0]
    assert first.source_stat
    s2 = run_preprocess([rec], out, cfg, workers=0, progress=False)
    assert s2.skipped == 1
    make_video(video, frames=12, size=(80, 64))
    os.utime(video, ns=(1, 10**18))  # a surely different mtime
    s3 = run_preprocess([rec], out, cfg, workers=0, progress=False)
    assert s3.skipped == 0
    again = cache_mod.load_manifest(out)[0]
    assert again.source_stat != first.source_stat and again.width == 80


def test_absurd_frame_size_message_reaches_extract_clip_and_predict(tmp_path):
    """A header claiming 60000x60000 (FFmpeg refuses it with EBUSY at open): preprocess and predict both
    say what is wrong with the file, not "Device or resource busy"."""
    from deepfake_detector.data.preprocess import check_video_file
    from deepfake_detector.inference import Detector
    from tests.corpus import write_y4m_header_lie
    from tests.test_corpus_predict import make_checkpoint

    path = str(write_y4m_header_lie(tmp_path / "absurd.y4m", 60000, 60000))
    want = "frame size 60000x60000 exceeds the limit of 16777216 pixels (4096x4096, max_pixels)"
    assert check_video_file(path) is None  # a regular readable file: the decoder decides
    res = extract_clip(path, PreprocessConfig(frames=4, size=32, detector="center"))
    assert res.status == "unreadable" and want in res.error and "busy" not in res.error.lower(), res.error
    ckpt = make_checkpoint(tmp_path / "best.pt", PreprocessConfig(frames=4, size=32, detector="center"))
    pred = Detector.from_checkpoint(ckpt, device="cpu", workers=0).predict_one(path)
    assert pred.status == "unreadable" and want in pred.error, pred


# --- a cache folder that cannot take more data: stop at once, keep what finished, resume ----------


def _small_videos(tmp_path: Path, n: int) -> list[VideoRecord]:
    video = make_video(tmp_path / "v.mp4", frames=4, size=(48, 48), face=False)
    return [VideoRecord(path=str(video), label="REAL", rel_path=f"v{i}.mp4") for i in range(n)]


_FAST = PreprocessConfig(frames=2, size=16, detector="center")


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "disk full while writing clip clips/"),
    (errno.EDQUOT, "disk full while writing clip clips/"),
    (errno.EROFS, "cannot write clip clips/"),
    (errno.EACCES, "cannot write clip clips/"),
])
def test_a_cache_that_cannot_take_a_clip_stops_the_run(tmp_path, monkeypatch, code, words):
    """Disk full, over quota, read-only or forbidden in the middle of a run: every later video would fail
    the same way, so the run stops at the first one, saves the manifest with what finished, and raises
    one clear ``CacheWriteError`` carrying the summary so far. A rerun resumes."""
    from deepfake_detector.data import preprocess as pp

    recs = _small_videos(tmp_path, 6)
    real_save = cache.save_clip
    calls = []

    def save_clip(out_dir, rel, clip):
        calls.append(rel)
        if len(calls) > 2:
            raise OSError(code, os.strerror(code), str(Path(out_dir) / ".x.npy.tmp"))
        return real_save(out_dir, rel, clip)

    monkeypatch.setattr(cache, "save_clip", save_clip)
    out = tmp_path / "cache"
    with pytest.raises(pp.CacheWriteError) as info:
        run_preprocess(recs, out, _FAST, workers=0, progress=False)
    exc = info.value
    msg = str(exc)
    assert words in msg and os.strerror(code) in msg and "rerun the same command to resume" in msg, msg
    assert ".tmp" not in msg and "\n" not in msg and exc.exit_code == 1
    assert isinstance(exc, UserError)  # the CLI prints it as one error: line
    assert len(calls) == 3  # stopped at the first failure: videos 4-6 never tried
    s = exc.summary
    assert s is not None and s.processed == 3 and s.todo == 6 and s.stopped == msg
    assert s.counts == {"ok": 2, "error": 1} and s.manifest_counts == {"ok": 2, "error": 1}
    rows = _rows(out)
    assert sorted(r.status for r in rows.values()) == ["error", "ok", "ok"]
    bad = next(r for r in rows.values() if r.status == "error")
    assert bad.error.startswith("cannot write clip clips/") and os.strerror(code) in bad.error, bad.error
    monkeypatch.setattr(cache, "save_clip", real_save)
    again = run_preprocess(recs, out, _FAST, workers=0, progress=False)
    assert again.skipped == 2 and again.processed == 4 and not again.stopped
    assert len(_rows(out)) == 6 and all(r.status == "ok" for r in _rows(out).values())


def test_other_clip_write_errors_stay_per_video(tmp_path, monkeypatch):
    """An error that says nothing about the folder as a whole (here EIO on one file) is that video's
    row; the run goes on."""
    recs = _small_videos(tmp_path, 3)
    real_save = cache.save_clip

    def save_clip(out_dir, rel, clip):
        if rel == "v1.mp4":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_save(out_dir, rel, clip)

    monkeypatch.setattr(cache, "save_clip", save_clip)
    s = run_preprocess(recs, tmp_path / "cache", _FAST, workers=0, progress=False)
    rows = _rows(tmp_path / "cache")
    assert s.processed == 3 and not s.stopped
    assert rows["v1.mp4"].status == "error" and "Input/output error" in rows["v1.mp4"].error
    assert rows["v0.mp4"].status == rows["v2.mp4"].status == "ok"


def test_manifest_write_failure_mid_run_stops_with_a_clear_error(tmp_path, monkeypatch):
    from deepfake_detector.data import preprocess as pp

    recs = _small_videos(tmp_path, 4)
    monkeypatch.setattr(pp, "_FLUSH_EVERY_S", -1.0)  # flush after every video

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "write_manifest_file", full)
    with pytest.raises(pp.CacheWriteError, match=r"disk full while writing the manifest .*manifest\.csv "
                                                 r"\(No space left on device\); free space and rerun"):
        run_preprocess(recs, tmp_path / "cache", _FAST, workers=0, progress=False)
    assert not (tmp_path / "cache" / "manifest.csv").exists()


def _disk_full_task(rec):
    """Pool stand-in: the clip of 'full*' cannot be written (disk full), the others are real work."""
    from deepfake_detector.data import preprocess as pp

    row = pp._process_one(rec)
    if Path(rec[1]).name.startswith("full"):
        row.status, row.clip, row.error = "error", "", "cannot write clip: No space left on device"
        row.write_errno = errno.ENOSPC
    return row


@pytest.mark.timeout(120)
def test_disk_full_in_a_worker_process_stops_the_pool(tmp_path, monkeypatch):
    from deepfake_detector.data import preprocess as pp

    video = make_video(tmp_path / "v.mp4", frames=4, size=(48, 48), face=False)
    names = ["a0.mp4", "a1.mp4", "full.mp4"] + [f"z{i}.mp4" for i in range(12)]
    recs = [VideoRecord(path=str(video), label="REAL", rel_path=n) for n in names]
    monkeypatch.setattr(pp, "_TASK", _disk_full_task)
    out = tmp_path / "cache"
    with pytest.raises(pp.CacheWriteError, match="disk full while writing clip") as info:
        run_preprocess(recs, out, _FAST, workers=1, progress=False)
    rows = _rows(out)
    assert rows["full.mp4"].status == "error"
    assert rows["a0.mp4"].status == rows["a1.mp4"].status == "ok"
    assert len(rows) <= 5 and info.value.summary.processed == len(rows)  # the rest was never tried
    monkeypatch.setattr(pp, "_TASK", pp._process_one)
    again = run_preprocess(recs, out, _FAST, workers=0, progress=False)
    assert again.skipped == len(rows) - 1 and len(_rows(out)) == len(recs)


def test_an_empty_file_is_named_as_such(tmp_path):
    from deepfake_detector.data.preprocess import check_video_file, extract_clip

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert check_video_file(str(empty)) == ("unreadable", "empty file (0 bytes)")
    res = extract_clip(empty, PreprocessConfig(frames=4, size=32, detector="center"))
    assert res.status == "unreadable" and res.error == "empty file (0 bytes)"


def test_a_cache_made_before_the_method_column_gains_it_on_rerun_without_new_clips(tmp_path):
    """Schema-1 manifest (no ``method``, no schema recorded): the next run fills the methods in and records
    the grouping, while every finished clip is skipped, not re-extracted."""
    import csv

    video = make_video(tmp_path / "v.mp4", frames=4, size=(48, 48), face=False)
    recs = [VideoRecord(path=str(video), label="REAL", rel_path="r.mp4"),
            VideoRecord(path=str(video), label="FAKE", rel_path="f.mp4", method="FaceSwap")]
    out = tmp_path / "cache"
    run_preprocess(recs, out, _FAST, workers=0, progress=False)
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"]: r["method"] for r in rows} == {"r.mp4": "", "f.mp4": "FaceSwap"}
    # turn it into a cache as the code before the method column left it
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "method"])
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != "method"} for r in rows)
    meta = json.loads((out / "preprocess.json").read_text())
    del meta["manifest_schema"]
    (out / "preprocess.json").write_text(json.dumps(meta))
    assert {r.method for r in cache.Cache.open(out).rows()} == {""}
    clips = {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.npy")}
    recs[1].method = "NeuralTextures"
    s = run_preprocess(recs, out, _FAST, workers=0, progress=False,
                       dataset={"grouping": "per-video", "grouping_note": "", "compression": ""})
    assert s.skipped == 2 and s.processed == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "clips").rglob("*.npy")} == clips
    methods = {r.path: r.method for r in cache.Cache.open(out).rows()}
    assert methods == {"r.mp4": "", "f.mp4": "NeuralTextures"}
    assert cache.Cache.open(out).dataset_info()["grouping"] == "per-video"


# ---------------------------------------------------------------------------------------------
# frame samplers by name; windows of a long video (predict --segments)
# ---------------------------------------------------------------------------------------------


def test_sampling_settings_are_checked():
    assert PreprocessConfig().sampling == "even"  # the default keeps today's clips
    PreprocessConfig(frames=10, sampling="even", snippet_len=4)  # even ignores snippet_len
    PreprocessConfig(frames=20, sampling="snippets", snippet_len=5)
    for bad in (dict(sampling="random"), dict(frames=10, sampling="snippets", snippet_len=4),
                dict(snippet_len=0)):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


def test_extract_clip_with_snippets(carphone):
    r = extract_clip(carphone, PreprocessConfig(frames=8, size=48, sampling="snippets", snippet_len=4))
    assert r.status == "ok", r.error
    assert r.indices == [30, 31, 32, 33, 90, 91, 92, 93] and r.clip.shape == (8, 48, 48, 3)


def test_a_cache_made_with_other_sampling_is_another_cache(tmp_path, dataset):
    _, recs = dataset
    out = tmp_path / "cache"
    run_preprocess(recs[:1], out, CFG, workers=0, progress=False)
    # even sampling ignores snippet_len: the same clips, the same cache
    run_preprocess(recs[:1], out, PreprocessConfig(frames=6, size=32, detector="haar", snippet_len=3),
                   workers=0, progress=False)
    snippets = PreprocessConfig(frames=6, size=32, detector="haar", sampling="snippets", snippet_len=3)
    with pytest.raises(UserError, match="sampling: 'even' -> 'snippets'"):
        run_preprocess(recs[:1], out, snippets, workers=0, progress=False)
    run_preprocess(recs[:1], out, snippets, workers=0, progress=False, force=True)
    assert read_cache_config(out).sampling == "snippets"
    with pytest.raises(UserError, match="snippet_len: 3 -> 2"):
        other = PreprocessConfig(frames=6, size=32, detector="haar", sampling="snippets", snippet_len=2)
        run_preprocess(recs[:1], out, other, workers=0, progress=False)


def test_a_cache_made_before_samplers_is_an_even_cache(tmp_path, dataset):
    from deepfake_detector.data.preprocess import clip_settings

    _, recs = dataset  # recs[1:2]: a video without a face (done, so a rerun skips it)
    out = tmp_path / "cache"
    run_preprocess(recs[1:2], out, CFG, workers=0, progress=False)
    meta = json.loads((out / cache.CONFIG_NAME).read_text())
    for key in ("sampling", "snippet_len"):
        del meta["preprocess"][key]
    (out / cache.CONFIG_NAME).write_text(json.dumps(meta))
    assert clip_settings(meta["preprocess"]) == clip_settings({**meta["preprocess"], "sampling": "even"})
    assert read_cache_config(out).sampling == "even"
    assert run_preprocess(recs[1:2], out, CFG, workers=0, progress=False).skipped == 1
    snippets = PreprocessConfig(frames=6, size=32, detector="haar", sampling="snippets", snippet_len=3)
    with pytest.raises(UserError, match="sampling"):
        run_preprocess(recs[1:2], out, snippets, workers=0, progress=False)


def test_extract_segments_crops_each_window(tmp_path):
    from deepfake_detector.config import SegmentConfig
    from deepfake_detector.data.preprocess import extract_segments

    path = make_video(tmp_path / "v.mp4", frames=100, size=(96, 80), face=True)  # 4 s at 25 fps
    res = extract_segments(path, CFG, SegmentConfig(seconds=1.0))
    assert res.status in ("ok", "no_face") and res.clip is None
    assert [(s.start, s.end) for s in res.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert res.segment_seconds == 1.0 and res.duration == pytest.approx(4.0)
    for k, seg in enumerate(res.segments):
        assert seg.clip.clip.shape == (6, 32, 32, 3)
        assert all(25 * k <= i < 25 * (k + 1) for i in seg.clip.indices)
    assert res.frames == 24 and res.indices == [i for s in res.segments for i in s.clip.indices]
    bounded = extract_segments(path, CFG, SegmentConfig(seconds=0.5, max_segments=2))
    assert len(bounded.segments) == 2 and bounded.segment_seconds == pytest.approx(2.0)
    missing = extract_segments(tmp_path / "gone.mp4", CFG, SegmentConfig())
    assert missing.status == "missing" and missing.segments == []
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    assert extract_segments(broken, CFG, SegmentConfig()).status == "unreadable"
