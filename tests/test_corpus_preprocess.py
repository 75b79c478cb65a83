"""The bad-input corpus through preprocessing: ``extract_clip``, ``run_preprocess`` and the CLI.

Every corpus item gets a status from the manifest vocabulary and a one-line message; a bad file never
aborts the batch; decoding is bounded by the caps (resolution, seconds, wall time).
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import cache
from deepfake_detector.data.preprocess import extract_clip, run_preprocess
from deepfake_detector.data.records import VideoRecord
from tests.corpus import ALL_STATUSES, CORPUS_NAMES, build_corpus, is_root
from tests.helpers import make_video

CFG = PreprocessConfig(frames=8, size=32, detector="haar", timeout_s=30)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    report: dict = {}
    items = build_corpus(tmp_path_factory.mktemp("corpus") / "data", detector=CFG.detector, report=report)
    return items, report["skipped"]


def check_result(item, res, cfg=CFG) -> None:
    """The per-item contract of ``extract_clip`` (shared with the predict corpus tests)."""
    assert res.status in ALL_STATUSES, (item.name, res.status)
    assert res.status in item.expect, (item.name, res.status, res.error, item.note)
    assert "\n" not in res.error and len(res.error) < 600, (item.name, res.error)
    if res.status in ("ok", "no_face"):
        assert res.clip is not None, item.name
        t = res.clip.shape[0]
        assert res.clip.dtype == np.uint8 and res.clip.shape == (t, cfg.size, cfg.size, 3), item.name
        assert 1 <= t <= cfg.frames and res.frames == t
        assert len(res.indices) == t and res.indices == sorted(set(res.indices)), res.indices
        assert all(0 <= i < max(res.source_frames, 1) for i in res.indices), (res.indices, res.source_frames)
        assert res.boxes is not None and res.boxes.shape == (t, 4)
        assert np.isfinite(res.boxes).all()
        if "frames" in item.checks:
            assert t == item.checks["frames"], (item.name, t)
        if "display_size" in item.checks:
            assert (res.width, res.height) == item.checks["display_size"], (item.name, res.width, res.height)
        if res.status == "no_face":
            assert res.error, f"{item.name}: no_face without a message"
    else:
        assert res.clip is None and res.frames == 0, item.name
        assert res.error.strip(), f"{item.name}: status {res.status} without a message"
    assert res.seconds >= 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_extract_clip_gives_a_status_and_message(corpus, name):
    items, skipped = corpus
    if name not in items:
        pytest.skip(f"corpus item {name} cannot be made here: {skipped.get(name)}")
    item = items[name]
    res = extract_clip(item.path, CFG)
    check_result(item, res)


def test_duration_lie_does_not_stretch_the_time_line(corpus):
    items, _ = corpus
    res = extract_clip(items["duration_lie"].path, CFG)
    assert res.status in ("ok", "no_face")
    assert res.source_frames == 12 and res.duration < 5.0, (res.source_frames, res.duration)


@pytest.mark.timeout(120)
def test_decode_caps_bound_seconds_resolution_and_time(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30, size=(320, 96), fps=25, face=False, gop=5)
    # only the first 0.4 s (10 frames at 25 fps) are considered
    res = extract_clip(video, PreprocessConfig(frames=8, size=32, detector="center", max_duration_s=0.4))
    assert res.status == "ok" and res.source_frames <= 11 and max(res.indices) <= 10, res
    # frames larger than max_pixels are refused before anything is decoded
    res = extract_clip(video, PreprocessConfig(frames=8, size=32, detector="center", max_pixels=320 * 96 - 1))
    assert res.status == "refused" and "max_pixels" in res.error, res
    # decoded frames are scaled to max_decode_side; boxes stay in source pixels
    res = extract_clip(video, PreprocessConfig(frames=8, size=32, detector="center", max_decode_side=64))
    assert res.status == "ok" and (res.width, res.height) == (320, 96)
    assert res.boxes[:, 2].max() <= 320 + 1 and res.boxes[:, 2].max() > 64, res.boxes
    # a wall-time deadline that has already passed: status error with a clear message, no exception
    res = extract_clip(video, PreprocessConfig(frames=8, size=32, detector="center", timeout_s=1e-9))
    assert res.status == "error" and "timed out" in res.error, res


def _drop_dac_capabilities() -> None:
    """preexec_fn: remove CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH from the bounding set, so the exec'd
    child is root that obeys file permissions (root's interpreter may live in a private /root)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_unreadable_permission_is_a_clear_status():
    """chmod 000: root reads anything, so as root the check runs in a child without the capabilities
    that bypass file permissions (skipped with the reason where they cannot be dropped)."""
    d = Path(tempfile.mkdtemp(prefix="ddperm-"))
    try:
        video = make_video(d / "secret.mp4", frames=8, size=(64, 64), face=False)
        os.chmod(video, 0)
        script = (
            "from deepfake_detector.config import PreprocessConfig\n"
            "from deepfake_detector.data.preprocess import extract_clip\n"
            f"r = extract_clip({str(video)!r}, PreprocessConfig(frames=4, size=32, detector='center'))\n"
            "print(r.status + '|' + r.error)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if is_root():
            try:
                proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      timeout=120, env=env, preexec_fn=_drop_dac_capabilities)
            except (OSError, subprocess.SubprocessError) as exc:
                pytest.skip(f"running as root and cannot drop the file-permission capabilities: {exc}")
            if proc.returncode != 0 and "Permission denied" in proc.stderr and not proc.stdout:
                pytest.skip(f"root without DAC capabilities cannot run Python here: {proc.stderr[-300:]}")
        else:
            proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                  env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        status, _, error = proc.stdout.strip().splitlines()[-1].partition("|")
        assert status == "unreadable" and "permission" in error.lower(), proc.stdout
    finally:
        for p in d.iterdir():
            os.chmod(p, 0o644)
            p.unlink()
        d.rmdir()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_preprocess_whole_corpus_in_one_batch(corpus, tmp_path):
    """One batch through the worker pool: one manifest row per video, none aborts the run, clips load."""
    items, _ = corpus
    root = Path(items["no_face"].path).parent
    records = [VideoRecord(path=it.path, label="REAL", rel_path=os.path.relpath(it.path, root))
               for it in items.values()]
    out = tmp_path / "cache"
    summary = run_preprocess(records, out, CFG, workers=1, progress=False)
    assert summary.processed == len(records) and not summary.interrupted
    rows = {r.path: r for r in cache.load_manifest(out)}
    assert set(rows) == {r.rel_path for r in records}  # non-UTF-8 names survive the CSV round trip
    for it in items.values():
        row = rows[os.path.relpath(it.path, root)]
        assert row.status in it.expect, (it.name, row.status, row.error)
        if row.status in ("ok", "no_face"):
            clip = cache.load_clip(out, row.clip)
            assert clip.shape == (row.frames, CFG.size, CFG.size, 3)
        else:
            assert row.error and not row.clip, (it.name, row)
    assert not list(out.rglob("*.tmp"))
    # a rerun skips finished videos and retries only the failures
    again = run_preprocess(records, out, CFG, workers=0, progress=False)
    usable = sum(1 for r in rows.values() if r.status in ("ok", "no_face"))
    assert again.skipped == usable and again.processed == len(records) - usable


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_preprocess_cli_reports_every_item_and_finishes(corpus, tmp_path):
    items, _ = corpus
    root = Path(items["no_face"].path).parent
    table = root.parent / "labels-cli.csv"  # paths are relative to the CSV's folder
    lines = [b"file,label"] + [os.fsencode(os.path.relpath(it.path, root.parent)) + b",FAKE"
                               for it in items.values()]
    table.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "deepfake_detector", "preprocess", str(table), "--format", "csv",
         "--out", str(out), "--frames", "8", "--size", "32", "--detector", "haar",
         "--workers", "1", "--no-progress", "--timeout", "30"],
        capture_output=True, text=True, errors="replace", timeout=280, cwd=tmp_path,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    noise = [ln for ln in text.splitlines() if re.match(r"\[[\w,.-]+ @ 0x[0-9a-f]+\]", ln)]
    assert not noise, noise[:5]  # FFmpeg's own log lines: noise not tied to any video
    rows = {os.path.basename(r.path): r for r in cache.load_manifest(out)}
    for it in items.values():
        base = os.path.basename(it.path)
        if base in rows:
            assert rows[base].status in it.expect, (it.name, rows[base])
        else:
            # refused by the dataset reader before any decoding: one problem line names it
            assert it.bad, f"{it.name} was dropped although it is a usable video"
            shown = base.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            assert shown in text, f"{it.name}: neither a manifest row nor a problem line\n{text[-3000:]}"
    with open(out / "manifest.csv", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        assert set(csv.DictReader(fh).fieldnames or []) >= set(cache.SINGLE_TRACK_FIELDS)


_FIFO_SCRIPT = r"""
import sys
from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data.preprocess import extract_clip
r = extract_clip(sys.argv[1], PreprocessConfig(frames=4, size=32, detector="center", timeout_s=5))
print(r.status + "|" + r.error, flush=True)
"""


@pytest.mark.timeout(120)
def test_named_pipe_or_device_is_refused_not_waited_on(tmp_path):
    """A FIFO named like a video: opening it blocks until someone writes, outside any decode deadline.
    It must be refused up front (not a regular file), never waited on. Runs in a child: a hang here
    would otherwise hold the test process forever."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for path in (str(fifo), "/dev/zero"):
        if not os.path.exists(path):
            continue
        try:
            proc = subprocess.run([sys.executable, "-c", _FIFO_SCRIPT, path], capture_output=True, text=True,
                                  timeout=25, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail(f"extract_clip({path}) blocked for more than 25 s instead of refusing it")
        status, _, error = proc.stdout.strip().splitlines()[-1].partition("|")
        assert status in ("unreadable", "refused") and error, (path, proc.stdout, proc.stderr[-500:])
