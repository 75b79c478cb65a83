"""Property tests for the frame sampler and a time-bounded fuzz of the video-reading entry point.

The fuzz mutates real mp4/mkv bytes (bit flips, truncations, chunk duplication/deletion, zeroed
ranges, corrupted box headers) with a fixed seed, and runs ``extract_clip`` on every mutant in a
child process: a native crash or a hang kills only the child, is recorded against the case that
caused it, and the remaining cases go on in a fresh child. The assertion: every case returns a
ClipResult with a valid status and a one-line message; no crash; no hang beyond the bound.
"""

from __future__ import annotations

import json
import os
import queue
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfake_detector.data.video import even_times, sample_by_time, sample_indices
from tests.corpus import ALL_STATUSES, iter_boxes
from tests.helpers import make_video

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# The frame sampler
# --------------------------------------------------------------------------------------------------

sizes = st.integers(min_value=-5, max_value=100_000)
ks = st.integers(min_value=-3, max_value=300)


@settings(max_examples=400, deadline=None)
@given(n=sizes, k=ks)
def test_sample_indices_properties(n, k):
    idx = sample_indices(n, k)
    assert idx == sample_indices(n, k)  # deterministic
    if n <= 0 or k <= 0:
        assert idx == []
        return
    assert len(idx) == min(n, k)
    assert idx == sorted(idx) and len(set(idx)) == len(idx)  # sorted, distinct
    assert all(0 <= i < n for i in idx)
    if k >= n:
        assert idx == list(range(n))  # a short video gives every frame
        return
    # evenly spread over the WHOLE video: sample j is a frame (interval [i, i+1)) that overlaps the
    # j-th of k equal segments of [0, n) -- it is the frame on screen at the segment's centre
    for j, i in enumerate(idx):
        assert (i + 1) * k > j * n and i * k < (j + 1) * n, (n, k, j, i)
        assert i <= (2 * j + 1) * n / (2 * k) < i + 1, (n, k, j, i)
    gaps = np.diff(idx)
    if len(gaps):
        assert gaps.max() - gaps.min() <= 1, gaps  # spacing differs by at most one frame


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), k=st.integers(1, 64),
       fps=st.sampled_from([1.0, 12.5, 24000 / 1001, 25.0, 60.0]), t0=st.floats(0, 100))
def test_sample_by_time_equals_sample_indices_at_constant_frame_rate(n, k, fps, t0):
    times = t0 + np.arange(n) / fps
    assert sample_by_time(times, k) == sample_indices(n, k)


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.floats(0.001, 5.0), min_size=0, max_size=400), k=st.integers(1, 40))
def test_sample_by_time_variable_frame_rate_properties(gaps, k):
    times = np.concatenate([[0.0], np.cumsum(gaps)]) if gaps else np.zeros(0)
    n = len(times)
    idx = sample_by_time(times, k)
    assert idx == sample_by_time(times, k)
    assert len(idx) == min(n, k)
    assert idx == sorted(set(idx)) and all(0 <= i < n for i in idx)
    if n > k and n > 1:
        # the first and last samples lie in the first and last k-th of the time line (whole video)
        end = times[-1] + np.median(np.diff(times))
        span = end - times[0]
        assert times[idx[0]] <= times[0] + span / k + 1e-9
        nxt = times[idx[-1] + 1] if idx[-1] + 1 < n else end
        assert nxt >= end - span / k - 1e-9


@settings(max_examples=100, deadline=None)
@given(duration=st.one_of(st.floats(-1, 0), st.floats(1e-6, 1e5)), k=st.integers(-2, 100))
def test_even_times_properties(duration, k):
    t = even_times(duration, k)
    if duration <= 0 or k <= 0:
        assert t == []
        return
    assert len(t) == k and all(0 < x < duration for x in t) and t == sorted(t)


# --------------------------------------------------------------------------------------------------
# Fuzzing extract_clip on mutated video bytes
# --------------------------------------------------------------------------------------------------

CASE_TIMEOUT_S = 45.0  # per case, wall clock, including a slow shared CI machine
DECODE_TIMEOUT_S = 15.0  # the reader's own deadline (cfg.timeout_s)

_CHILD = r"""
import json, sys
from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data.preprocess import extract_clip
cfg = PreprocessConfig(frames=6, size=32, detector="center", timeout_s=float(sys.argv[2]))
for line in open(sys.argv[1], encoding="utf-8"):
    i, path = json.loads(line)
    print(json.dumps({"i": i, "started": True}), flush=True)
    r = extract_clip(path, cfg)
    shape = list(r.clip.shape) if r.clip is not None else None
    print(json.dumps({"i": i, "status": r.status, "error": r.error, "shape": shape, "frames": r.frames,
                      "indices": r.indices, "source_frames": r.source_frames,
                      "dtype": str(r.clip.dtype) if r.clip is not None else None}), flush=True)
"""


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of ``data``; returns (description, bytes)."""
    b = bytearray(data)
    n = len(b)
    kinds = ["bitflip", "bitflip", "truncate", "duplicate", "delete", "zero", "box", "box", "splice"]
    kind = rng.choice(kinds)
    if kind == "bitflip":
        flips = rng.choice([1, 4, 32, 256])
        for _ in range(flips):
            pos = rng.randrange(n)
            b[pos] ^= 1 << rng.randrange(8)
        return f"bitflip x{flips}", bytes(b)
    if kind == "truncate":
        cut = rng.randrange(1, n)
        return f"truncate at {cut}/{n}", bytes(b[:cut])
    if kind == "duplicate":
        a = rng.randrange(n)
        ln = rng.randrange(1, min(4096, n - a) + 1)
        at = rng.randrange(n)
        return f"duplicate [{a}:{a + ln}] at {at}", bytes(b[:at] + b[a:a + ln] + b[at:])
    if kind == "delete":
        a = rng.randrange(n)
        ln = rng.randrange(1, min(4096, n - a) + 1)
        return f"delete [{a}:{a + ln}]", bytes(b[:a] + b[a + ln:])
    if kind == "zero":
        a = rng.randrange(n)
        ln = rng.randrange(1, min(2048, n - a) + 1)
        b[a:a + ln] = bytes(ln)
        return f"zero [{a}:{a + ln}]", bytes(b)
    if kind == "splice":  # the same file twice (concatenated containers)
        return "concatenated twice", bytes(b + b)
    # structure-aware: corrupt one box header (size or type) or a field right after it
    boxes = list(iter_boxes(bytes(b)))
    if not boxes:
        return mutate(data, rng)
    kind_, off, hdr, size, _ = rng.choice(boxes)
    what = rng.choice(["size", "type", "field", "huge"])
    if what == "size":
        b[off:off + 4] = struct.pack(">I", rng.choice([0, 1, 7, 8, size // 2, size * 2, 0xFFFFFFFF]))
    elif what == "type":
        b[off + 4:off + 8] = bytes(rng.randrange(256) for _ in range(4))
    elif what == "huge":  # counts and sizes inside the box body claim ~2^31
        body = off + hdr
        for p in range(body, min(body + 24, off + size) - 3, 4):
            if rng.random() < 0.5:
                b[p:p + 4] = struct.pack(">I", 0x7FFFFFF0)
    else:
        p = off + hdr + rng.randrange(max(1, min(size - hdr, 64)))
        if p < n:
            b[p] = rng.randrange(256)
    return f"box {kind_.decode('latin-1')}@{off} {what}", bytes(b)


def run_cases(paths: list[str], tmp: Path) -> tuple[dict, dict]:
    """Run ``extract_clip`` on every path in child processes. Returns (results by index, problems by
    index) where problems are 'hang' / 'crash rc=N' for the case that was running."""
    results: dict[int, dict] = {}
    problems: dict[int, str] = {}
    remaining = list(range(len(paths)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    while remaining:
        todo = tmp / f"todo-{remaining[0]}.jsonl"
        todo.write_text("".join(json.dumps([i, paths[i]]) + "\n" for i in remaining), encoding="utf-8")
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(todo), str(DECODE_TIMEOUT_S)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        lines: queue.Queue = queue.Queue()

        def reader(p=proc, q=lines) -> None:
            for ln in p.stdout:  # type: ignore[union-attr]
                q.put(ln)
            q.put(None)

        threading.Thread(target=reader, daemon=True).start()
        current = None
        deadline = time.monotonic() + 120  # child start-up (imports) + the first case
        while True:
            try:
                ln = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                proc.kill()
                proc.wait()
                if current is not None:
                    problems[current] = f"hang (> {CASE_TIMEOUT_S:.0f} s)"
                    remaining = [i for i in remaining if i != current]
                else:
                    raise AssertionError("the fuzz child did not start") from None
                break
            if ln is None:  # child exited
                rc = proc.wait()
                if current is not None:
                    problems[current] = f"crash (exit code {rc})"
                remaining = [i for i in remaining if i != current and i not in results]
                if current is None and remaining:
                    raise AssertionError(f"the fuzz child exited early with {rc}")
                break
            msg = json.loads(ln)
            if msg.get("started"):
                current = msg["i"]
                deadline = time.monotonic() + CASE_TIMEOUT_S
                continue
            results[msg["i"]] = msg
            remaining = [i for i in remaining if i != msg["i"]]
            current = None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return results, problems


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fuzz_extract_clip_on_mutated_videos(tmp_path):
    bases = [
        make_video(tmp_path / "base.mp4", frames=24, size=(64, 48), face=False, gop=4),
        make_video(tmp_path / "base_vfr.mp4", frames=10, size=(64, 48), face=False,
                   pts=[0, 40, 80, 200, 210, 400, 600, 610, 900, 1000]),
        make_video(tmp_path / "base.mkv", frames=10, size=(48, 48), face=False, codec="mpeg4", gop=3),
    ]
    rng = random.Random(20240611)
    cases: list[tuple[str, str]] = []
    for n in range(100):
        base = bases[n % len(bases)]
        desc, data = mutate(base.read_bytes(), rng)
        path = tmp_path / f"case{n:03d}{base.suffix}"
        path.write_bytes(data)
        cases.append((f"case {n} ({base.name}: {desc})", str(path)))
    results, problems = run_cases([p for _, p in cases], tmp_path)
    failures = [f"{cases[i][0]}: {why}" for i, why in sorted(problems.items())]
    for i, r in sorted(results.items()):
        name = cases[i][0]
        if r["status"] not in ALL_STATUSES:
            failures.append(f"{name}: unknown status {r['status']!r}")
        elif not isinstance(r["error"], str) or "\n" in r["error"]:
            failures.append(f"{name}: message is not one line: {r['error']!r}")
        elif r["status"] in ("ok", "no_face"):
            t = r["frames"]
            if r["shape"] != [t, 32, 32, 3] or r["dtype"] != "uint8" or not 1 <= t <= 6:
                failures.append(f"{name}: bad clip {r['shape']} {r['dtype']}")
            elif r["indices"] != sorted(set(r["indices"])) or len(r["indices"]) != t:
                failures.append(f"{name}: bad indices {r['indices']}")
        else:
            if r["shape"] is not None or not r["error"]:
                failures.append(f"{name}: status {r['status']} with a clip or without a message")
            elif r["status"] == "error" and "timed out" not in r["error"]:
                # 'error' means an unexpected exception inside the reader: a bug to report
                failures.append(f"{name}: unexpected exception: {r['error']}")
    assert len(results) + len(problems) == len(cases)
    assert not failures, "\n".join(failures)
    # the fuzz did reach the decoder: some mutants still decode, some are refused
    statuses = {r["status"] for r in results.values()}
    assert "ok" in statuses and statuses - {"ok"}, statuses


# --------------------------------------------------------------------------------------------------
# Decoder threads + FFmpeg logging: the worker set-up must not route FFmpeg's log through Python
# --------------------------------------------------------------------------------------------------

_WORKER_SETUP = r"""
import json, sys
import av.logging
from deepfake_detector.config import PreprocessConfig, to_dict
from deepfake_detector.data import preprocess
from deepfake_detector import inference
which, video, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = PreprocessConfig(frames=8, size=32, detector="center", timeout_s=30)
if which == "preprocess":
    preprocess._init_worker(to_dict(cfg), sys.argv[4], 2)
else:
    inference._worker_init(2)
print(json.dumps({"level": av.logging.get_level()}), flush=True)
for i in range(n):
    r = preprocess.extract_clip(video, cfg, threads=2)
print(json.dumps({"done": n, "status": r.status}), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("which", ["preprocess", "inference"])
def test_decoding_workers_do_not_deadlock_on_corrupt_streams(tmp_path, which):
    """PyAV's Python log callback (enabled by ``av.logging.set_level(<a level>)``) is called from
    FFmpeg's frame-decoding threads and needs the GIL, while closing a codec waits for those threads
    holding the GIL: on a corrupt H.264 stream decoded with 2+ threads that deadlocks at random (seen
    after 0-1600 videos). The worker set-up must leave FFmpeg logging disabled (level None); the stress
    loop below then finishes."""
    from tests.corpus import corrupt_mdat

    video = corrupt_mdat(make_video(tmp_path / "src.mp4", frames=24, size=(64, 64), face=False, gop=4),
                         tmp_path / "corrupt.mp4")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _WORKER_SETUP, which, str(video), "400", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{which} worker set-up: decoding deadlocked (output so far: {out!r})")
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    level = lines[0]["level"] if lines else "?"
    assert lines and level is None, (
        f"{which} worker set-up enables PyAV's Python log callback (level {level}): FFmpeg decoder "
        "threads then need the GIL and can deadlock; use av.logging.set_level(None)")
    assert lines[-1].get("done") == 400 and lines[-1]["status"] in ALL_STATUSES, lines
