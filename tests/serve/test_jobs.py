"""Asynchronous jobs, the result cache by SHA-256, and the bounded stores behind them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from deepfake_detector.serve.jobs import JobStore, ResultCache, cache_key
from deepfake_detector.serve.responses import ErrorReply
from tests.helpers import make_bad_file, make_video
from tests.serve.conftest import StubDetector, upload_dir_files, wait_until
from tests.serve.test_app import client_for, post_video


def post_job(client, path: Path, name: str | None = None, explain: bool = False, **kw):
    url = "/api/v1/jobs" + ("?explain=true" if explain else "")
    with open(path, "rb") as fh:
        return client.post(url, files={"file": (name or path.name, fh, "video/mp4")}, **kw)


def wait_job(client, job_id: str, timeout: float = 20, **kw) -> dict:
    seen: dict = {}

    def finished() -> bool:
        seen.update(client.get(f"/api/v1/jobs/{job_id}", **kw).json())
        return seen["state"] in ("done", "error")

    assert wait_until(finished, timeout=timeout, interval=0.05), seen
    return seen


def test_job_lifecycle_and_result(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    with client_for(det, serve_tmp, workers=1, queue_size=2) as client:
        r = post_job(client, face_video)
        assert r.status_code == 202, r.text
        job = r.json()
        assert len(job["id"]) == 32 and int(job["id"], 16) >= 0  # 128 random bits, hex
        assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
        assert job["state"] in ("queued", "processing") and job["filename"] == "face.mp4"
        assert det.entered.acquire(timeout=20)  # the worker has it
        assert wait_until(lambda: client.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "processing")
        gate.set()
        done = wait_job(client, job["id"])
        assert done["state"] == "done" and "error" not in done
        result = done["result"]
        assert result["label"] == "FAKE" and result["p_fake"] == pytest.approx(0.8)
        assert result["status"] == "ok"
        assert result["filename"] == "face.mp4" and result["cached"] is False
        # the same body as the synchronous endpoint gives (that one now comes from the cache)
        sync = post_video(client, face_video).json()
        assert sync["cached"] is True and len(det.calls) == 1
        for key in ("label", "p_fake", "threshold", "status", "frames", "face_ratio", "video", "model"):
            assert sync[key] == result[key], key
        assert wait_until(lambda: upload_dir_files(serve_tmp) == [])


def test_same_video_is_never_analysed_twice(face_video: Path, tmp_path: Path, serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp) as client:
        first = post_video(client, face_video, name="a.mp4").json()
        again = post_video(client, face_video, name="b.mp4").json()
        job = post_job(client, face_video, name="c.mp4").json()
        assert job["state"] == "done" and job["result"]["cached"] is True
        assert job["result"]["filename"] == "c.mp4"
        assert first["cached"] is False and again["cached"] is True and again["filename"] == "b.mp4"
        assert len(det.calls) == 1
        # different bytes are a different video
        other = make_video(tmp_path / "other.mp4", frames=6, size=(96, 80))
        assert post_video(client, other).json()["cached"] is False and len(det.calls) == 2
        # a heat map shows the file name: another name is another analysis, never someone else's strip
        assert post_video(client, face_video, name="x.mp4", explain=True).json()["cached"] is False
        assert post_video(client, face_video, name="x.mp4", explain=True).json()["cached"] is True
        assert post_video(client, face_video, name="y.mp4", explain=True).json()["cached"] is False
        assert len(det.calls) == 4
        # the client's name in a reused error message is the current client's
    with client_for(StubDetector(status="too_short"), serve_tmp) as client:
        assert post_video(client, face_video, name="one.mp4").json()["error"].endswith("one.mp4")
        reused = post_video(client, face_video, name="two.mp4").json()
        assert reused["cached"] is True and reused["error"] == "stub says it cannot read two.mp4"


def test_an_analysis_in_progress_is_shared(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    with client_for(det, serve_tmp, workers=1, queue_size=0) as client:
        results: list = []

        def post() -> None:
            results.append(post_video(client, face_video).json())

        first = threading.Thread(target=post, daemon=True)
        first.start()
        assert det.entered.acquire(timeout=20)
        # the one slot is taken, yet the same bytes are not refused: they wait for the running analysis
        second = threading.Thread(target=post, daemon=True)
        second.start()
        job = post_job(client, face_video).json()
        assert job["state"] == "processing", job
        # a video already analysed is answered from the cache even while every worker is busy
        time.sleep(0.2)
        gate.set()
        first.join(20)
        second.join(20)
        assert sorted(r["cached"] for r in results) == [False, True]
        assert wait_job(client, job["id"])["result"]["cached"] is True
        assert len(det.calls) == 1


def test_job_errors_and_unknown_ids(face_video: Path, tmp_path: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        bad = post_job(client, make_bad_file(tmp_path / "x.mp4", "png"))
        assert bad.status_code == 202
        failed = wait_job(client, bad.json()["id"])
        assert failed["state"] == "error" and failed["error"]["status"] == 415
        assert failed["error"]["detail"].startswith("not a video")
        for unknown in ("0" * 32, "f" * 32, "x" * 64, "x" * 65, bad.json()["id"].upper(), "..%2F..%2Fetc"):
            r = client.get(f"/api/v1/jobs/{unknown}")
            assert r.status_code in (400, 404) and isinstance(r.json()["detail"], str), unknown
        assert client.get("/api/v1/jobs/" + "0" * 32).json()["detail"].startswith("no such job")
        assert client.get("/api/v1/jobs/../../etc/passwd").status_code == 404
        # refusals before a job exists are answered like /predict
        r = client.post("/api/v1/jobs", content=b"x", headers={"content-type": "video/mp4"})
        assert r.status_code == 415
        ids = {post_job(client, face_video).json()["id"] for _ in range(20)}
        assert len(ids) == 20  # each job its own random id, even for the same video


def test_jobs_need_the_token(face_video: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp, token="job-token-1") as client:
        assert post_job(client, face_video).status_code == 401
        ok = {"Authorization": "Bearer job-token-1"}
        job = post_job(client, face_video, headers=ok).json()
        assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 401
        assert wait_job(client, job["id"], headers=ok)["state"] == "done"


def test_job_timeout_is_an_error_state(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    with client_for(StubDetector(gate=gate), serve_tmp, request_timeout_s=0.5) as client:
        try:
            job = post_job(client, face_video).json()
            failed = wait_job(client, job["id"])
            assert failed["state"] == "error" and failed["error"]["status"] == 504
        finally:
            gate.set()


def test_queued_jobs_at_shutdown_leave_nothing(face_video: Path, tmp_path: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    videos = [make_video(tmp_path / f"v{i}.mp4", frames=4 + i, size=(64, 48)) for i in range(3)]
    try:
        with client_for(det, serve_tmp, workers=1, queue_size=2, cache_entries=0) as client:
            codes = [post_job(client, v).status_code for v in videos]
            assert codes == [202, 202, 202]
            assert post_job(client, face_video).status_code == 503  # the queue is full: refused, not kept
            gate.set()
        # client_for checks the private folder is gone
    finally:
        gate.set()


# --------------------------------------------------------------------------------------------------
# the stores, with a fake clock
# --------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_job_store_is_bounded_and_expires() -> None:
    clock = Clock()
    store = JobStore(max_jobs=2, ttl_s=10, clock=clock)
    a = store.create("a.mp4", 1, False)
    b = store.create("b.mp4", 1, False)
    assert a and b and a.id != b.id
    assert store.create("c.mp4", 1, False) is None  # two live jobs: full
    store.finish(a, result={"label": "REAL"})
    c = store.create("c.mp4", 1, False)  # the finished one makes room
    assert c is not None and store.get(a.id) is None and store.get(b.id) is b
    store.finish(b, error=ErrorReply(504, "late"))
    assert store.get(b.id).to_dict()["error"] == {"status": 504, "detail": "late"}
    clock.now = 10.0
    assert store.get(b.id) is None and store.get(c.id) is c  # expired after the time-to-live
    assert store.counts() == {"queued": 1, "processing": 0, "done": 0, "error": 0}
    assert store.get("not-an-id") is None


def test_job_store_bounds_the_memory_of_results() -> None:
    store = JobStore(max_jobs=10, ttl_s=100, max_bytes=1000, clock=Clock())
    jobs = [store.create(f"{i}.mp4", 1, True) for i in range(3)]
    store.finish(jobs[0], result={"png": "a" * 600})
    store.finish(jobs[1], result={"png": "b" * 600})  # over the budget: the oldest finished one goes
    assert store.get(jobs[0].id) is None and store.get(jobs[1].id) is not None
    store.finish(jobs[2], result={"png": "c" * 5000})  # alone over the budget: kept, the others go
    assert store.get(jobs[2].id) is not None and store.get(jobs[1].id) is None and len(store) == 1


def test_result_cache_is_bounded_in_entries_bytes_and_time() -> None:
    clock = Clock()
    cache = ResultCache(max_entries=2, max_bytes=200, ttl_s=5, clock=clock)
    k = [cache_key(str(i) * 64, False, "") for i in range(4)]
    cache.put(k[0], {"x": 1})
    cache.put(k[1], {"x": 2})
    assert cache.get(k[0]) == {"x": 1}  # now the most recent
    cache.put(k[2], {"x": 3})
    assert cache.get(k[1]) is None and cache.get(k[0]) and cache.get(k[2])  # least recent went
    cache.put(k[3], {"big": "y" * 500})
    assert cache.get(k[3]) is None  # larger than the whole cache: not kept
    clock.now = 5.0
    assert cache.get(k[0]) is None and len(cache) <= 1
    assert cache_key("s", True, "a.mp4") != cache_key("s", True, "b.mp4")
    assert cache_key("s", False, "") == cache_key("s", False, "")
    off = ResultCache(max_entries=0, max_bytes=100, ttl_s=5)
    off.put(k[0], {"x": 1})
    assert off.get(k[0]) is None and not off.enabled

    async def shared() -> None:
        future = cache.begin(k[0])
        assert cache.pending(k[0]) is future
        cache.end(k[0], future, body={"x": 9}, keep=True)
        assert await future == {"x": 9} and cache.pending(k[0]) is None and cache.get(k[0]) == {"x": 9}
        failing = cache.begin(k[1])
        cache.end(k[1], failing, error=ErrorReply(415, "no"))
        with pytest.raises(ErrorReply):
            await failing

    asyncio.run(shared())


def test_cache_key_variant_keeps_segmented_verdicts_apart() -> None:
    assert cache_key("s", False, "") == ("s", False, "")  # no variant: the key it always was
    assert cache_key("s", False, "", "segments:10:64") != cache_key("s", False, "")
    assert cache_key("s", False, "", "segments:10:64") != cache_key("s", False, "", "segments:5:64")
