"""Connection hygiene against a live uvicorn: idle sockets, slow headers, slow bodies, the body budget.

Before: 63 idle TCP connections filled uvicorn's connection limit and locked every client out (idle
sockets were never closed), and five 1-byte/s uploaders held every analysis slot because slots were
taken before the body arrived. Now idle and half-sent connections are closed after the header
timeout, bodies are received before an analysis slot is taken, and slow bodies are cut off (408).

Every socket here has a timeout; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepfake_detector.serve import ServeSettings, create_app
from tests.serve.conftest import StubDetector, live_server, upload_dir_files, wait_until

N_IDLE = 100
N_SLOW = 8


def _in_flight(base: str) -> int:
    return httpx.get(base + "/healthz", timeout=5).json()["queue"]["in_flight"]


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


def _connect(base: str) -> socket.socket:
    s = socket.create_connection(_address(base), timeout=10)
    s.settimeout(10)
    return s


def _closed_by_server(s: socket.socket, within: float) -> bool:
    """True when the server closes ``s`` (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def _slow_head(port: int, length: int = 100_000) -> bytes:
    body_head = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.mp4\"\r\n"
                 b"Content-Type: video/mp4\r\n\r\n")
    return (f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {length}\r\n\r\n").encode() \
        + body_head


class SlowUploader(threading.Thread):
    """Sends its headers, then one body byte every ``interval`` seconds; records the server's answer."""

    def __init__(self, base: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.interval = interval
        self.answer = b""
        self.stop = threading.Event()

    def run(self) -> None:
        with contextlib.closing(_connect(self.base)) as s:
            s.sendall(_slow_head(_address(self.base)[1]))
            s.settimeout(self.interval)
            while not self.stop.is_set():
                try:
                    s.sendall(b"\x00")
                    chunk = s.recv(4096)
                    if not chunk:
                        return
                    self.answer += chunk
                    if b"\r\n\r\n" in self.answer:
                        return
                except socket.timeout:
                    continue
                except OSError:
                    return


@contextlib.contextmanager
def _server(serve_tmp: Path, det: StubDetector, **kw) -> Iterator[str]:
    kw.setdefault("warmup", False)
    app = create_app(det, ServeSettings(tmp_dir=str(serve_tmp), **kw))
    with live_server(app) as base:
        yield base


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_idle_and_slow_connections_do_not_lock_out_a_normal_upload(face_video: Path, serve_tmp: Path) -> None:
    det = StubDetector()
    # ONE analysis slot: if a slow uploader could take it, the normal upload below would get 503
    with _server(serve_tmp, det, workers=1, queue_size=0, header_timeout_s=4, upload_grace_s=3,
                 min_upload_rate_kbs=1) as base:
        idle = [_connect(base) for _ in range(N_IDLE)]
        slow = [SlowUploader(base) for _ in range(N_SLOW)]
        try:
            for t in slow:
                t.start()
            with httpx.Client(base_url=base, timeout=30) as client:
                assert wait_until(lambda: client.get("/healthz").json()["uploads"]["bodies"] == N_SLOW, 10)
                t0 = time.monotonic()
                h = client.get("/healthz")
                assert h.status_code == 200
                assert h.json()["queue"]["in_flight"] == 0  # the slow bodies hold no analysis slot
                files = {"file": ("face.mp4", face_video.read_bytes(), "video/mp4")}
                r = client.post("/api/v1/predict", files=files)
                assert r.status_code == 200, r.text
                assert r.json()["label"] == "FAKE"
                print(f"normal upload answered in {time.monotonic() - t0:.2f} s beside {N_IDLE} idle and "
                      f"{N_SLOW} slow connections")
            # the idle sockets are closed by the server once the header timeout has passed
            closed = sum(_closed_by_server(s, within=8) for s in idle)
            assert closed == N_IDLE
            # the slow uploaders are cut off: 408 once their average rate is below the minimum
            for t in slow:
                t.join(timeout=15)
            answers = [t.answer.split(b"\r\n", 1)[0] for t in slow]
            assert all(b" 408 " in a for a in answers), answers
            with httpx.Client(base_url=base, timeout=30) as client:
                metrics = client.get("/metrics").text
            rejected = f'deepfake_detector_uploads_rejected_total{{reason="upload_timeout"}} {N_SLOW}.0'
            assert rejected in metrics
            timed_out = next(line for line in metrics.splitlines()
                             if line.startswith("deepfake_detector_connections_timed_out_total"))
            assert float(timed_out.split()[-1]) >= N_IDLE
        finally:
            for t in slow:
                t.stop.set()
            for s in idle:
                s.close()
        assert wait_until(lambda: upload_dir_files(serve_tmp) == [], 10)


@pytest.mark.timeout(60)
def test_half_sent_headers_are_cut_off(serve_tmp: Path) -> None:
    """A slowloris client (headers trickled, never finished) is closed after the header timeout."""
    with _server(serve_tmp, StubDetector(), header_timeout_s=1.0) as base:
        s = _connect(base)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        for _ in range(4):  # keeps sending, but never the blank line that ends the headers
            time.sleep(0.2)
            with contextlib.suppress(OSError):
                s.sendall(b"X-a: b\r\n")
        assert _closed_by_server(s, within=5)
        assert time.monotonic() - t0 < 4
        s.close()
        # a keep-alive connection that trickles its NEXT request is closed the same way
        s = _connect(base)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in s.recv(4096).split(b"\r\n", 1)[0]
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert _closed_by_server(s, within=5)
        s.close()
        assert httpx.get(base + "/healthz", timeout=10).status_code == 200


@pytest.mark.timeout(60)
def test_healthz_answers_while_every_worker_is_busy(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    with _server(serve_tmp, det, workers=1, queue_size=1, cache_entries=0) as base:
        results: list = []

        def post() -> None:
            files = {"file": ("face.mp4", face_video.read_bytes(), "video/mp4")}
            results.append(httpx.post(base + "/api/v1/predict", files=files, timeout=30).status_code)

        threads = [threading.Thread(target=post, daemon=True) for _ in range(2)]
        try:
            for t in threads:
                t.start()
            assert det.entered.acquire(timeout=20)
            assert wait_until(lambda: _in_flight(base) == 2)
            for _ in range(20):
                t0 = time.monotonic()
                assert httpx.get(base + "/healthz", timeout=5).status_code == 200
                assert time.monotonic() - t0 < 1.0
        finally:
            gate.set()
        for t in threads:
            t.join(30)
        assert results == [200, 200]


# --------------------------------------------------------------------------------------------------
# body deadlines and the body budget, driven through ASGI with hand-made clients
# --------------------------------------------------------------------------------------------------


def _trickle(first: bytes, every_s: float, n: int = 1000):
    """An ASGI ``receive`` that sends ``first``, then one byte every ``every_s`` seconds."""
    import asyncio

    state = {"n": 0}

    async def receive() -> dict:
        state["n"] += 1
        if state["n"] == 1:
            return {"type": "http.request", "body": first, "more_body": True}
        if state["n"] > n:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(every_s)
        return {"type": "http.request", "body": b"\x00", "more_body": True}

    return receive, state


def test_a_stalled_body_is_408_after_the_idle_timeout(serve_tmp: Path) -> None:
    from tests.serve.test_app import _multipart_head, _raw_call, _status

    settings = ServeSettings(tmp_dir=str(serve_tmp), warmup=False, body_idle_timeout_s=0.3,
                             min_upload_rate_kbs=0)
    app = create_app(StubDetector(), settings)
    receive, _ = _trickle(_multipart_head(), every_s=5)
    t0 = time.monotonic()
    sent = _raw_call(app, receive)
    assert _status(sent) == 408 and time.monotonic() - t0 < 3
    body = next(m for m in sent if m["type"] == "http.response.body")["body"]
    assert b"no data for 0.3 s" in body
    assert (b"connection", b"close") in next(m for m in sent if m["type"] == "http.response.start")["headers"]
    assert list(serve_tmp.iterdir()) == []


def test_a_body_below_the_minimum_rate_is_408(serve_tmp: Path) -> None:
    """1 byte every 0.1 s never stalls, but averages far below 1 KiB/s: cut off after the grace period."""
    from tests.serve.test_app import _multipart_head, _raw_call, _status

    app = create_app(StubDetector(), ServeSettings(tmp_dir=str(serve_tmp), warmup=False, upload_grace_s=0.5,
                                                   min_upload_rate_kbs=1, body_idle_timeout_s=30))
    receive, state = _trickle(_multipart_head(), every_s=0.1)
    t0 = time.monotonic()
    sent = _raw_call(app, receive)
    assert _status(sent) == 408 and time.monotonic() - t0 < 3 and state["n"] < 20
    body = next(m for m in sent if m["type"] == "http.response.body")["body"]
    assert b"slower than the minimum of 1 KiB/s" in body
    assert list(serve_tmp.iterdir()) == []


def test_the_body_budget_bounds_uploads_in_flight(face_video: Path, serve_tmp: Path) -> None:
    from fastapi.testclient import TestClient

    from tests.serve.test_app import _multipart_head, _scope

    settings = ServeSettings(tmp_dir=str(serve_tmp), warmup=False, max_bodies=2, max_upload_mb=1,
                             body_budget_mb=2.5)
    app = create_app(StubDetector(), settings)
    with TestClient(app) as client:
        bodies = app.state.serve.bodies
        # two bodies trickling in (hand-made ASGI calls on the app's loop), holding the two body slots
        hold = threading.Event()
        video = {"file": ("face.mp4", face_video.read_bytes(), "video/mp4")}

        def slow_client():
            sent = {"head": False}

            async def receive() -> dict:
                import anyio

                if not sent["head"]:
                    sent["head"] = True
                    return {"type": "http.request", "body": _multipart_head(), "more_body": True}
                if hold.is_set():
                    return {"type": "http.disconnect"}
                await anyio.sleep(0.05)
                return {"type": "http.request", "body": b"\x00", "more_body": True}

            return receive

        async def ignore(_message: dict) -> None:
            return None

        futures = [client.portal.start_task_soon(app, _scope(), slow_client(), ignore) for _ in range(2)]
        try:
            assert wait_until(lambda: bodies.snapshot()["bodies"] == 2, 10)
            r = client.post("/api/v1/predict", files=video)
            assert r.status_code == 503 and "being received" in r.json()["detail"]
            assert "retry-after" in r.headers
            assert client.get("/healthz").json()["uploads"]["bodies"] == 2
        finally:
            hold.set()
        for f in futures:
            with contextlib.suppress(Exception):
                f.result(timeout=10)
        assert wait_until(lambda: bodies.snapshot() == {"bodies": 0, "bytes": 0, "max_bodies": 2,
                                                        "max_bytes": int(2.5 * 1024 * 1024)}, 10)
        # an announced length that does not fit what is left of the budget is refused unread
        reservation = bodies.open(2 * 1024 * 1024)
        try:
            r = client.post("/api/v1/predict", files={"file": ("face.mp4", b"\x00" * 700_000, "video/mp4")})
            assert r.status_code == 503 and "being received" in r.json()["detail"]
        finally:
            reservation.release()
        assert client.post("/api/v1/predict", files=video).status_code == 200
        metrics = client.get("/metrics").text
        assert 'deepfake_detector_uploads_rejected_total{reason="body_budget"} 2.0' in metrics
    assert upload_dir_files(serve_tmp) == []


def test_budget_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="body budget"):
        ServeSettings(max_upload_mb=100, body_budget_mb=50)
    with pytest.raises(ValueError):
        ServeSettings(max_connections=2)
    with pytest.raises(ValueError):
        ServeSettings(header_timeout_s=0)
    s = ServeSettings(max_upload_mb=700)
    assert s.body_budget_bytes == 1400 * 1024 * 1024 and ServeSettings().body_budget_bytes == 1024 ** 3
    assert ServeSettings(min_upload_rate_kbs=2).min_upload_rate == 2048
