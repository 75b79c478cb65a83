"""HTTP behaviour of the server: every status code, the limits, auth, the queue and temp-file hygiene.

Most tests use ``StubDetector`` (conftest) so they are fast and deterministic; the tests marked
"real" run the real Detector on a tiny checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import io
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepfake_detector.serve import ServeSettings, create_app, token_from_env
from deepfake_detector.serve.app import MULTIPART_OVERHEAD, NotAVideo, probe_video
from tests.helpers import BAD_KINDS, make_bad_file, make_video
from tests.serve.conftest import StubDetector, upload_dir_files, wait_until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def client_for(detector, serve_tmp: Path, **kw) -> Iterator[TestClient]:
    kw.setdefault("warmup", False)  # tested on its own below; keeps the stub's call log clean
    settings = ServeSettings(tmp_dir=str(serve_tmp), **kw)
    app = create_app(detector, settings)
    with TestClient(app) as client:
        yield client
    # shutting down removes the private folder itself
    assert list(serve_tmp.iterdir()) == []


def post_video(client: TestClient, path: Path, name: str | None = None, explain: bool = False, **kw):
    url = "/api/v1/predict" + ("?explain=true" if explain else "")
    with open(path, "rb") as fh:
        return client.post(url, files={"file": (name or path.name, fh, "video/mp4")}, **kw)


def private_dir(client: TestClient) -> Path:
    return client.app.state.serve.private_dir


# --------------------------------------------------------------------------------------------------
# 200
# --------------------------------------------------------------------------------------------------


def test_predict_ok_with_stub(face_video: Path, serve_tmp: Path) -> None:
    det = StubDetector(p_fake=0.8, threshold=0.5)
    with client_for(det, serve_tmp) as client:
        r = post_video(client, face_video)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == "FAKE" and body["p_fake"] == pytest.approx(0.8)
        assert body["threshold"] == 0.5 and body["status"] == "ok" and body["error"] == ""
        assert body["frames"] == 4 and body["face_ratio"] == 1.0
        assert body["model"] == {"name": "stub", "sha256": "ab" * 32, "version": "test"}
        assert body["filename"] == "face.mp4" and body["size"] == face_video.stat().st_size
        assert body["video"]["width"] == 96 and body["video"]["height"] == 80
        assert body["timing"]["seconds"] >= body["timing"]["predict"] >= 0
        assert "explanation_png" not in body
        # the detector saw a private copy: random folder, 0600 file in a 0700 folder, same bytes; the
        # client's base name (so the heat map shows it) with OUR suffix
        call = det.calls[0]
        assert call["mode"] == 0o600 and call["dir_mode"] == 0o700
        assert call["size"] == face_video.stat().st_size
        assert Path(call["path"]).parent.parent == private_dir(client)
        assert Path(call["path"]).name == "face.mp4"
        assert body["cached"] is False and body["calibrated"] is False
        assert upload_dir_files(serve_tmp) == []


def test_predict_explain_returns_png(face_video: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(p_fake=0.2), serve_tmp) as client:
        r = post_video(client, face_video, explain=True)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] == "REAL"
        png = base64.b64decode(body["explanation_png"])
        assert png.startswith(PNG_MAGIC)
        assert upload_dir_files(serve_tmp) == []  # the explanation folder is gone too


def test_client_file_name_is_never_a_path(face_video: Path, serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp, cache_entries=0) as client:  # every upload reaches the detector
        r = post_video(client, face_video, name="../../etc/evil name.exe")
        assert r.status_code == 200, r.text
        assert r.json()["filename"] == "evil name.exe"
        written = Path(det.calls[0]["path"])
        assert written.parent.parent == private_dir(client) and written.name == "evil name.bin"
        assert not (serve_tmp.parent / "etc").exists()
        names = [("..", "upload.bin"), (".hidden.mp4", "hidden.mp4"), ("a\x00b\x1b[31m.mkv", None),
                 ("C:\\Users\\x\\clip.MOV", "clip.mov"), ("é" * 300 + ".mp4", "é" * 80 + ".mp4"),
                 ("con:tent.webm", "con_tent.webm")]
        for name, stored in names:
            det.calls.clear()
            r = post_video(client, face_video, name=name)
            assert r.status_code == 200, (name, r.text)
            written = Path(det.calls[0]["path"])
            assert written.parent.parent == private_dir(client), name
            assert written.name.isprintable() and written.suffix in (".mkv", ".mp4", ".mov", ".webm", ".bin")
            assert stored is None or written.name == stored, (name, written.name)


def test_unscored_status_is_reported(face_video: Path, serve_tmp: Path) -> None:
    """A decodable video the detector could not score is a 200 with status/error and no label."""
    with client_for(StubDetector(status="too_short"), serve_tmp) as client:
        body = post_video(client, face_video).json()
        assert body["status"] == "too_short" and body["label"] == "" and body["p_fake"] is None
        assert body["error"] == "stub says it cannot read face.mp4"  # no server path leaks


def test_no_face_keeps_score_and_status(faceless_video: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(status="no_face", p_fake=0.3), serve_tmp) as client:
        body = post_video(client, faceless_video).json()
        assert body["status"] == "no_face" and body["label"] == "REAL" and body["face_ratio"] == 0.0


# --------------------------------------------------------------------------------------------------
# 400 / 415
# --------------------------------------------------------------------------------------------------


def test_missing_file_field_is_400(serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp) as client:
        r = client.post("/api/v1/predict", files={"video": ("a.mp4", b"1234", "video/mp4")})
        assert r.status_code == 400 and "file" in r.json()["detail"]
        other = b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nhello\r\n--b--\r\n'
        r = client.post("/api/v1/predict", content=other,
                        headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 400 and "missing" in r.json()["detail"]
        # a plain text field called "file" is read like a file, and is not a video
        r = client.post("/api/v1/predict", files={"file": (None, b"not an upload")})
        assert r.status_code == 415
        assert det.calls == [] and upload_dir_files(serve_tmp) == []


def test_not_multipart_is_415_and_malformed_is_400(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        r = client.post("/api/v1/predict", content=b"\x00" * 100, headers={"content-type": "video/mp4"})
        assert r.status_code == 415 and "multipart" in r.json()["detail"]
        r = client.post("/api/v1/predict", content=b"garbage without boundary",
                        headers={"content-type": "multipart/form-data"})
        assert r.status_code == 400
        r = client.post("/api/v1/predict", content=b"--b\r\nnot a header line\r\n\r\n",
                        headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.status_code == 400
        assert upload_dir_files(serve_tmp) == []


def test_empty_file_is_400(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        r = client.post("/api/v1/predict", files={"file": ("e.mp4", b"", "video/mp4")})
        assert r.status_code == 400 and "empty" in r.json()["detail"]


@pytest.mark.parametrize("kind", [k for k in BAD_KINDS if k != "zero"])
def test_non_video_is_415(kind: str, tmp_path: Path, serve_tmp: Path) -> None:
    """Checked by decoding, not by name: every one of these is called ``.mp4``."""
    bad = make_bad_file(tmp_path / f"{kind}.mp4", kind)
    det = StubDetector()
    with client_for(det, serve_tmp) as client:
        r = post_video(client, bad)
        assert r.status_code == 415, (kind, r.text)
        assert r.json()["detail"].startswith("not a video")
        assert det.calls == []  # never reached the model
        assert upload_dir_files(serve_tmp) == []


def test_playlist_is_refused(tmp_path: Path) -> None:
    """HLS playlists can make FFmpeg read other files: refused before any demuxer sees them."""
    p = tmp_path / "x.mp4"
    p.write_text("#EXTM3U\n#EXTINF:1,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    with pytest.raises(NotAVideo, match="playlist"):
        probe_video(p)


def test_probe_accepts_other_containers(tmp_path: Path) -> None:
    avi = make_video(tmp_path / "v.avi", frames=4, size=(64, 48), codec="mjpeg", face=False)
    assert probe_video(avi)["format"] == "avi"
    with pytest.raises(NotAVideo, match="limit"):
        probe_video(avi, max_side=32)


# --------------------------------------------------------------------------------------------------
# 401
# --------------------------------------------------------------------------------------------------


def test_bearer_token(face_video: Path, serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp, token="s3cret-token-123") as client:
        r = post_video(client, face_video)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "detail" in r.json()
        r = post_video(client, face_video, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
        r = post_video(client, face_video, headers={"Authorization": "Basic s3cret-token-123"})
        assert r.status_code == 401
        assert client.get("/api/v1/model").status_code == 401
        assert det.calls == []  # nothing reached the model without the token
        ok = {"Authorization": "Bearer s3cret-token-123"}
        assert post_video(client, face_video, headers=ok).status_code == 200
        assert client.get("/api/v1/model", headers=ok).status_code == 200
        # liveness and the page stay open (they reveal nothing about the model)
        h = client.get("/healthz")
        assert h.status_code == 200 and h.json()["limits"]["auth"] is True
        assert "s3cret" not in h.text
        assert client.get("/").status_code == 200


def test_token_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPFAKE_DETECTOR_TOKEN", "  from-env  ")
    assert token_from_env() == "from-env"
    assert token_from_env({}) is None
    with pytest.raises(ValueError):
        ServeSettings(token="   ")
    with pytest.raises(ValueError):
        ServeSettings(token="has space")
    with pytest.raises(ValueError):
        ServeSettings(workers=0)
    with pytest.raises(ValueError):
        ServeSettings(cors_origins=("example.com",))
    s = ServeSettings()
    assert s.host == "127.0.0.1" and s.port == 8000 and s.max_upload_mb == 200 and s.cors_origins == ()
    assert s.is_loopback and not ServeSettings(host="0.0.0.0").is_loopback


# --------------------------------------------------------------------------------------------------
# 413
# --------------------------------------------------------------------------------------------------


def _multipart_head(boundary: str = "XyZ") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode()


def test_413_from_content_length(serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp, max_upload_mb=1) as client:
        big = b"\x00" * (1024 * 1024 + 1)
        r = client.post("/api/v1/predict", files={"file": ("big.mp4", big, "video/mp4")})
        assert r.status_code == 413 and "1 MB" in r.json()["detail"]
        # a lying Content-Length header is refused without reading anything
        r = client.post("/api/v1/predict", content=b"x",
                        headers={"content-type": "multipart/form-data; boundary=XyZ",
                                 "content-length": str(50 * 1024 * 1024)})
        assert r.status_code == 413
        assert det.calls == [] and upload_dir_files(serve_tmp) == []


def test_413_while_streaming_chunked_body(serve_tmp: Path) -> None:
    """No Content-Length (chunked): the byte count while streaming stops the upload."""
    det = StubDetector()
    produced = {"n": 0}

    def body() -> Iterator[bytes]:
        yield _multipart_head()
        for _ in range(64):  # offers 4 MiB against a 1 MiB limit
            produced["n"] += 1
            yield b"\x00" * 65536

    with client_for(det, serve_tmp, max_upload_mb=1) as client:
        r = client.post("/api/v1/predict", content=body(),
                        headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 413
        assert det.calls == [] and upload_dir_files(serve_tmp) == []


def _scope(path: str = "/api/v1/predict") -> dict:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 80),
        "headers": [(b"host", b"test"), (b"content-type", b"multipart/form-data; boundary=XyZ")],
    }


def _raw_call(app, receive) -> list[dict]:
    """Run one ASGI request against ``app`` (lifespan started) with a hand-made ``receive``."""
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    with TestClient(app) as client:
        client.portal.call(app, _scope(), receive, send)
        admission = app.state.serve.admission
        assert wait_until(lambda: admission.snapshot()["in_flight"] == 0)  # slot given back
    return sent


def _status(sent: list[dict]) -> int:
    return next(m for m in sent if m["type"] == "http.response.start")["status"]


def test_slow_upload_is_408(serve_tmp: Path) -> None:
    import asyncio

    settings = ServeSettings(tmp_dir=str(serve_tmp), upload_timeout_s=0.3, warmup=False)
    app = create_app(StubDetector(), settings)
    state = {"n": 0}

    async def receive() -> dict:
        state["n"] += 1
        if state["n"] == 1:
            return {"type": "http.request", "body": _multipart_head() + b"\x00" * 100, "more_body": True}
        await asyncio.sleep(5)  # a client that stops sending
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = _raw_call(app, receive)
    assert _status(sent) == 408
    assert list(serve_tmp.iterdir()) == []


def test_client_disconnect_mid_upload_leaves_nothing(serve_tmp: Path) -> None:
    det = StubDetector()
    app = create_app(det, ServeSettings(tmp_dir=str(serve_tmp), warmup=False))
    state = {"n": 0}

    async def receive() -> dict:
        state["n"] += 1
        if state["n"] == 1:
            return {"type": "http.request", "body": _multipart_head() + b"\x00" * 1000, "more_body": True}
        return {"type": "http.disconnect"}

    _raw_call(app, receive)
    assert det.calls == [] and list(serve_tmp.iterdir()) == []


def test_413_before_the_body_is_read(serve_tmp: Path) -> None:
    """Drive the ASGI app directly and count what it pulled: it stops right after the limit."""
    app = create_app(StubDetector(), ServeSettings(tmp_dir=str(serve_tmp), max_upload_mb=1, warmup=False))
    chunk = b"\x00" * 65536
    total_chunks = 1024  # 64 MiB offered, never materialised
    state = {"pulled": 0, "head": False}

    async def receive() -> dict:
        if not state["head"]:
            state["head"] = True
            return {"type": "http.request", "body": _multipart_head(), "more_body": True}
        if state["pulled"] >= total_chunks:
            return {"type": "http.request", "body": b"", "more_body": False}
        state["pulled"] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent = _raw_call(app, receive)
    assert _status(sent) == 413
    pulled_bytes = state["pulled"] * len(chunk)
    assert pulled_bytes <= 1024 * 1024 + MULTIPART_OVERHEAD * 8 + len(chunk)
    assert state["pulled"] < total_chunks // 10
    assert list(serve_tmp.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# 503 / 504 / 500
# --------------------------------------------------------------------------------------------------


def _post_in_thread(client: TestClient, path: Path, results: list) -> threading.Thread:
    def go() -> None:
        results.append(post_video(client, path))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_queue_full_is_503_with_retry_after(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    # no result cache: the same bytes sent three times must each need a slot (sharing is tested below)
    with client_for(det, serve_tmp, workers=1, queue_size=1, retry_after_s=7, cache_entries=0) as client:
        admission = client.app.state.serve.admission
        results: list = []
        try:
            t1 = _post_in_thread(client, face_video, results)
            assert det.entered.acquire(timeout=20)  # first request is inside the model
            t2 = _post_in_thread(client, face_video, results)
            assert wait_until(lambda: admission.snapshot()["in_flight"] == 2)  # second one waits
            r = post_video(client, face_video)
            assert r.status_code == 503
            assert r.headers["retry-after"] == "7" and "busy" in r.json()["detail"]
            h = client.get("/healthz").json()
            assert h["queue"] == {"in_flight": 2, "running": 1, "capacity": 2}
        finally:
            gate.set()
        t1.join(30)
        t2.join(30)
        assert [x.status_code for x in results] == [200, 200]
        assert len(det.calls) == 2
        assert wait_until(lambda: admission.snapshot()["in_flight"] == 0)
        assert upload_dir_files(serve_tmp) == []


def test_workers_run_in_parallel(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    with client_for(det, serve_tmp, workers=2, queue_size=0, cache_entries=0) as client:
        results: list = []
        try:
            threads = [_post_in_thread(client, face_video, results) for _ in range(2)]
            assert det.entered.acquire(timeout=20) and det.entered.acquire(timeout=20)  # both inside
            assert client.get("/healthz").json()["queue"]["running"] == 2
            assert post_video(client, face_video).status_code == 503
        finally:
            gate.set()
        for t in threads:
            t.join(30)
        assert [x.status_code for x in results] == [200, 200]


def test_timeout_is_504_and_slot_held_until_worker_ends(face_video: Path, serve_tmp: Path) -> None:
    gate = threading.Event()
    det = StubDetector(gate=gate)
    with client_for(det, serve_tmp, workers=1, queue_size=0, request_timeout_s=0.5,
                    cache_entries=0) as client:
        admission = client.app.state.serve.admission
        try:
            r = post_video(client, face_video)
            assert r.status_code == 504 and "limit" in r.json()["detail"]
            # the upload is deleted at once, but the model is still busy: the slot stays taken
            assert upload_dir_files(serve_tmp) == []
            assert admission.snapshot()["in_flight"] == 1
            assert post_video(client, face_video).status_code == 503
        finally:
            gate.set()
        assert wait_until(lambda: admission.snapshot()["in_flight"] == 0)
        assert upload_dir_files(serve_tmp) == []
        assert post_video(client, face_video).status_code == 200


def test_detector_crash_is_500_json(face_video: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(fail=RuntimeError("boom")), serve_tmp) as client:
        r = post_video(client, face_video)
        assert r.status_code == 500 and "detail" in r.json() and "boom" not in r.text
        assert upload_dir_files(serve_tmp) == []


def test_not_ready_without_lifespan(serve_tmp: Path) -> None:
    app = create_app(StubDetector(), ServeSettings(tmp_dir=str(serve_tmp)))
    client = TestClient(app)  # not entered: the lifespan (model load) never ran
    r = client.get("/healthz")
    assert r.status_code == 503 and "retry-after" in r.headers
    assert client.post("/api/v1/predict", files={"file": ("a.mp4", b"x")}).status_code == 503


# --------------------------------------------------------------------------------------------------
# healthz, model, page, CORS, lazy loading
# --------------------------------------------------------------------------------------------------


def test_healthz_and_model_info(serve_tmp: Path) -> None:
    with client_for(StubDetector(threshold=0.42), serve_tmp, max_upload_mb=5) as client:
        h = client.get("/healthz")
        assert h.status_code == 200
        assert h.json()["status"] == "ok" and h.json()["limits"]["max_upload_mb"] == 5
        m = client.get("/api/v1/model")
        assert m.status_code == 200
        info = m.json()
        assert info["threshold"] == 0.42 and info["name"] == "stub" and info["sha256"] == "ab" * 32
        assert info["metrics"]["val_auc"] == 0.93 and info["metrics"]["val_loss"] is None  # NaN -> null
        assert info["config"] == {"model": {"backbone": "none"}}
        assert info["server"]["max_upload_mb"] == 5
        assert m.headers["cache-control"] == "no-store"
        assert client.get("/openapi.json").json()["paths"]["/api/v1/predict"]["post"]
        docs = client.get("/docs")
        assert docs.status_code == 200 and "/static/docs.js" in docs.text
        assert "default-src 'none'" in docs.headers["content-security-policy"]  # nothing from a CDN
        assert "http" not in docs.text.split("<body>")[0]  # no external script or style
        assert client.get("/redoc").status_code == 404


def test_detector_factory_is_loaded_once_at_startup(serve_tmp: Path) -> None:
    made: list[StubDetector] = []

    def factory() -> StubDetector:
        made.append(StubDetector())
        return made[-1]

    app = create_app(factory, ServeSettings(tmp_dir=str(serve_tmp)))
    assert made == []
    with TestClient(app) as client:
        assert len(made) == 1
        client.get("/healthz")
        client.get("/api/v1/model")
        assert len(made) == 1


def test_warm_up_runs_one_video_at_startup(serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp, warmup=True) as client:
        assert len(det.calls) == 1 and det.calls[0]["path"].endswith("warmup.mp4")  # a real, decodable video
        assert upload_dir_files(serve_tmp) == []
        assert client.get("/healthz").status_code == 200
    # a detector that fails its warm-up still serves (the failure is only logged)
    with client_for(StubDetector(fail=RuntimeError("cold")), serve_tmp, warmup=True) as client:
        assert client.get("/healthz").status_code == 200


def test_page_is_self_contained(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        r = client.get("/")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        html = r.text
        assert 'type="file"' in html and "<label" in html
        for asset in ("/static/app.js", "/static/style.css"):
            assert asset in html
            a = client.get(asset)
            assert a.status_code == 200 and a.headers["x-content-type-options"] == "nosniff"
            for text in (html, a.text):
                assert "http://" not in text and "https://" not in text and "//cdn" not in text
        assert "<script>" not in html  # no inline script (the CSP forbids it)


def test_cors_only_when_asked(serve_tmp: Path) -> None:
    origin = {"Origin": "https://screening.example"}
    with client_for(StubDetector(), serve_tmp) as client:
        r = client.get("/healthz", headers=origin)
        assert "access-control-allow-origin" not in r.headers
        pre = client.options("/api/v1/predict", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers
    with client_for(StubDetector(), serve_tmp, cors_origins=("https://screening.example",)) as client:
        r = client.get("/healthz", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://screening.example"
        r = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_private_dir_mode_and_cleanup_on_shutdown(serve_tmp: Path) -> None:
    app = create_app(StubDetector(), ServeSettings(tmp_dir=str(serve_tmp)))
    with TestClient(app):
        d = app.state.serve.private_dir
        assert d.parent == serve_tmp and stat.S_IMODE(d.stat().st_mode) == 0o700
        (d / "leftover").write_bytes(b"x")
    assert not d.exists()


# --------------------------------------------------------------------------------------------------
# the real Detector on a tiny checkpoint
# --------------------------------------------------------------------------------------------------


def test_real_detector_predict_and_explain(real_detector, face_video: Path, serve_tmp: Path) -> None:
    with client_for(real_detector, serve_tmp) as client:
        r = post_video(client, face_video, explain=True)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("ok", "no_face")
        assert 0.0 <= body["p_fake"] <= 1.0
        assert body["label"] == ("FAKE" if body["p_fake"] >= body["threshold"] else "REAL")
        assert body["frames"] >= 1 and 0.0 <= body["face_ratio"] <= 1.0
        assert body["model"]["name"] == "tiny-serve" and len(body["model"]["sha256"]) == 64
        png = base64.b64decode(body["explanation_png"])
        assert png.startswith(PNG_MAGIC)
        from PIL import Image

        assert Image.open(io.BytesIO(png)).size[0] > 0
        # same verdict as the Python API on the same file
        direct = real_detector.predict_one(str(face_video))
        assert body["p_fake"] == pytest.approx(direct.p_fake, abs=1e-5)
        info = client.get("/api/v1/model").json()
        assert info["threshold"] == body["threshold"] and info["config"]["model"]["backbone"] == "tiny"
        assert upload_dir_files(serve_tmp) == []


def test_real_detector_rejects_non_video(real_detector, tmp_path: Path, serve_tmp: Path) -> None:
    with client_for(real_detector, serve_tmp) as client:
        r = post_video(client, make_bad_file(tmp_path / "img.mp4", "png"))
        assert r.status_code == 415
        assert upload_dir_files(serve_tmp) == []


def _odd_video(kind: str, path: Path) -> Path:
    if kind == "one_frame":
        return make_video(path, frames=1, size=(96, 80))
    if kind == "no_face":
        return make_video(path, frames=8, size=(96, 80), face=False)
    if kind == "rotated":
        return make_video(path, frames=8, size=(96, 80), rotation=90)
    if kind == "vfr":
        return make_video(path, frames=8, size=(96, 80), pts=[0, 40, 50, 200, 210, 400, 800, 810])
    if kind == "mjpeg_avi":
        return make_video(path.with_suffix(".avi"), frames=8, size=(96, 80), codec="mjpeg")
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["one_frame", "no_face", "rotated", "vfr", "mjpeg_avi"])
def test_real_detector_odd_videos_get_a_status(kind: str, real_detector, tmp_path: Path,
                                               serve_tmp: Path) -> None:
    """Unusual but valid videos: always a 200 with a clear status, never a crash or a hang."""
    video = _odd_video(kind, tmp_path / f"{kind}.mp4")
    with client_for(real_detector, serve_tmp) as client:
        r = post_video(client, video)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("ok", "no_face", "too_short", "unreadable", "refused"), body
        if body["status"] in ("ok", "no_face"):
            assert body["label"] in ("REAL", "FAKE") and 0 <= body["p_fake"] <= 1
        else:
            assert body["label"] == "" and body["p_fake"] is None and body["error"]
        if kind == "no_face":
            assert body["status"] == "no_face"
        assert upload_dir_files(serve_tmp) == []


# --------------------------------------------------------------------------------------------------
# invalid parameters and the OpenAPI description
# --------------------------------------------------------------------------------------------------


def test_invalid_query_value_is_400_with_a_string_detail(face_video: Path, serve_tmp: Path) -> None:
    det = StubDetector()
    with client_for(det, serve_tmp) as client:
        with open(face_video, "rb") as fh:
            r = client.post("/api/v1/predict?explain=maybe", files={"file": ("a.mp4", fh, "video/mp4")})
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        assert detail.startswith("invalid value 'maybe' for query parameter 'explain': ")
        assert det.calls == []  # refused before any upload was analysed
        r = client.post("/api/v1/predict?explain=" + "x" * 500, files={"file": ("a.mp4", b"x")})
        assert r.status_code == 400 and len(r.json()["detail"]) < 200
        assert upload_dir_files(serve_tmp) == []


def test_openapi_documents_what_the_server_really_answers(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        spec = client.get("/openapi.json").json()
    assert '"422"' not in str(spec).replace("'", '"') and "HTTPValidationError" not in str(spec)
    predict = spec["paths"]["/api/v1/predict"]["post"]
    assert "invalid parameter" in predict["responses"]["400"]["description"]
    assert predict["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["file"][
        "description"] == "the video"
    health = spec["paths"]["/healthz"]["get"]["responses"]
    assert set(health) == {"200", "503"}
    assert set(spec["paths"]["/api/v1/model"]["get"]["responses"]) == {"200", "401", "503"}


def test_validation_detail_helper() -> None:
    from deepfake_detector.serve.responses import _validation_detail

    assert _validation_detail([]) == "invalid request"
    assert _validation_detail([{"type": "missing", "loc": ["query", "n"], "msg": "Field required"}]) == (
        "missing query parameter 'n'")
    two = [{"type": "int_parsing", "loc": ["query", "n"], "msg": "Input should be a valid integer.",
            "input": "a\nb"}, {"type": "missing", "loc": ["header", "x"], "msg": "Field required"}]
    assert _validation_detail(two) == ("invalid value 'ab' for query parameter 'n': input should be a valid "
                                       "integer (and 1 more problem(s))")


def test_warm_up_runs_in_every_worker_thread(serve_tmp: Path) -> None:
    """Each worker thread builds its own face detector on first use: the warm-up pays that, not users."""

    class ThreadRecorder(StubDetector):
        def predict_one(self, path: str, explain_dir=None):
            self.threads = getattr(self, "threads", set()) | {threading.get_ident()}
            return super().predict_one(path, explain_dir)

    det = ThreadRecorder()
    with client_for(det, serve_tmp, warmup=True, workers=3) as client:
        assert len(det.calls) == 3 and len(det.threads) == 3
        assert all(c["path"].endswith("warmup.mp4") for c in det.calls)
        assert client.get("/healthz").status_code == 200
        assert upload_dir_files(serve_tmp) == []


# --------------------------------------------------------------------------------------------------
# long videos by segments (?segments=true)
# --------------------------------------------------------------------------------------------------


def test_real_detector_segments(real_detector, tmp_path: Path, serve_tmp: Path) -> None:
    video = make_video(tmp_path / "long.mp4", frames=100, size=(96, 80))  # 4 s
    with client_for(real_detector, serve_tmp) as client:
        with open(video, "rb") as fh:
            r = client.post("/api/v1/predict?segments=true&segment_seconds=1",
                            files={"file": ("long.mp4", fh, "video/mp4")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["segment_seconds"] == 1.0 and body["cached"] is False
        assert [(s["start"], s["end"]) for s in body["segments"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0),
                                                                      (3.0, 4.0)]
        assert body["p_fake"] == max(s["p_fake"] for s in body["segments"])
        direct = real_detector.predict_one(str(video), segments=1.0)
        assert body["p_fake"] == pytest.approx(direct.p_fake, abs=1e-5)
        # the same bytes without segments are another analysis (not the cached segmented one) ...
        plain = post_video(client, video).json()
        assert plain["cached"] is False and plain["segments"] == [] and plain["segment_seconds"] is None
        # ... and the same request again is the cached one
        with open(video, "rb") as fh:
            again = client.post("/api/v1/jobs?segments=true&segment_seconds=1",
                                files={"file": ("long.mp4", fh, "video/mp4")}).json()
        assert again["state"] == "done" and again["result"]["cached"] is True
        assert again["result"]["segments"] == body["segments"]
        assert upload_dir_files(serve_tmp) == []


@pytest.mark.parametrize("query, words", [("?segment_seconds=5", "segment_seconds needs segments=true"),
                                          ("?segments=true&segment_seconds=0", "segment_seconds"),
                                          ("?segments=maybe", "segments")])
def test_bad_segment_parameters_are_400(query: str, words: str, face_video: Path, serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        for route in ("/api/v1/predict", "/api/v1/jobs"):
            with open(face_video, "rb") as fh:
                r = client.post(route + query, files={"file": ("face.mp4", fh, "video/mp4")})
            assert r.status_code == 400 and words in r.json()["detail"]


def test_openapi_documents_segments(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        spec = client.get("/openapi.json").json()
    verdict = spec["components"]["schemas"]["Verdict"]["properties"]
    assert "segments" in verdict and "segment_seconds" in verdict
    for route in ("/api/v1/predict", "/api/v1/jobs"):
        names = {p["name"] for p in spec["paths"][route]["post"]["parameters"]}
        assert {"explain", "segments", "segment_seconds"} <= names


def test_page_offers_segments_and_escapes_them(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        html = client.get("/").text
        js = client.get("/static/app.js").text
    assert 'id="segments"' in html and 'id="segments-list"' in html
    assert 'query.set("segments", "true")' in js and "innerHTML" not in js.replace("never innerHTML", "")
