"""Load test on loopback: a real uvicorn server, the real Detector, concurrent uploads.

Bounded: 16 requests fired at once (plus 2 non-videos) against 1 worker + 2 queue slots; every
request has a client time limit and the test has a pytest time limit. Every answer must be a
correct verdict, a 415 for the non-videos, or a 503 with Retry-After; the server must stay up and
leave nothing behind.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from deepfake_detector.serve import ServeSettings, create_app
from tests.helpers import carphone_path, make_bad_file
from tests.serve.conftest import live_server, upload_dir_files, wait_until

N_VIDEOS = 16
N_BAD = 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_uploads_get_answer_or_503(real_detector, face_video: Path, tmp_path: Path,
                                              serve_tmp: Path) -> None:
    bad = make_bad_file(tmp_path / "image.mp4", "png")
    # no result cache: identical uploads would otherwise share one analysis and never fill the queue
    # (that sharing is tested in test_jobs.py)
    settings = ServeSettings(tmp_dir=str(serve_tmp), workers=1, queue_size=2, request_timeout_s=120,
                             retry_after_s=3, cache_entries=0)
    app = create_app(real_detector, settings)
    jobs = [("video", face_video)] * (N_VIDEOS // 2) + [("video", carphone_path())] * (N_VIDEOS // 2) \
        + [("bad", bad)] * N_BAD
    barrier = threading.Barrier(len(jobs))

    with live_server(app) as base:
        def fire(job: tuple[str, Path]) -> tuple[str, int, dict, dict]:
            kind, path = job
            data = path.read_bytes()
            with httpx.Client(base_url=base, timeout=150) as client:
                barrier.wait(timeout=30)  # all at once
                r = client.post("/api/v1/predict", files={"file": (path.name, data, "video/mp4")})
                return kind, r.status_code, dict(r.headers), r.json()

        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(fire, jobs))

        codes = [code for _, code, _, _ in results]
        tally = ", ".join(f"{codes.count(c)} x {c}" for c in sorted(set(codes)))
        print(f"load: {len(codes)} concurrent requests -> {tally}")
        ok = [(k, body) for k, code, _, body in results if code == 200]
        busy = [(headers, body) for _, code, headers, body in results if code == 503]
        for kind, code, _, body in results:
            assert code in (200, 415, 503), (code, body)
            if code == 415:
                assert kind == "bad"
            if code == 200:
                assert kind == "video"
                assert body["status"] in ("ok", "no_face")
                assert 0.0 <= body["p_fake"] <= 1.0
                assert body["label"] == ("FAKE" if body["p_fake"] >= body["threshold"] else "REAL")
        for headers, body in busy:
            assert headers["retry-after"] == "3" and "busy" in body["detail"]
        assert ok, f"no request was served: {codes}"
        assert busy, f"the queue never filled with {len(jobs)} concurrent requests: {codes}"

        # the server survived: healthy, queue drained, a new request is served, nothing left on disk
        with httpx.Client(base_url=base, timeout=60) as client:
            h = client.get("/healthz")
            assert h.status_code == 200
            assert wait_until(lambda: client.get("/healthz").json()["queue"]["in_flight"] == 0)
            again = {"file": ("again.mp4", face_video.read_bytes(), "video/mp4")}
            r = client.post("/api/v1/predict", files=again)
            assert r.status_code == 200 and r.json()["status"] in ("ok", "no_face")
        assert upload_dir_files(serve_tmp) == []
    assert list(serve_tmp.iterdir()) == []  # shutdown removed the private folder


@pytest.mark.timeout(120)
def test_413_over_a_real_socket(serve_tmp: Path) -> None:
    """Through uvicorn, both a sized and a chunked too-large upload get a clean 413 JSON answer."""
    from tests.serve.conftest import StubDetector

    app = create_app(StubDetector(), ServeSettings(tmp_dir=str(serve_tmp), max_upload_mb=1))
    head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n\r\n'

    def chunked():
        yield head
        for _ in range(160):  # 10 MiB offered
            yield b"\x00" * 65536

    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        r = client.post("/api/v1/predict", files={"file": ("big.mp4", b"\x00" * (5 * 1024 * 1024))})
        assert r.status_code == 413 and "1 MB" in r.json()["detail"]
        r = client.post("/api/v1/predict", content=chunked(),
                        headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 413 and "1 MB" in r.json()["detail"]
        assert client.get("/healthz").json()["queue"]["in_flight"] == 0
        assert upload_dir_files(serve_tmp) == []
