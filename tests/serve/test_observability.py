"""``/metrics`` (Prometheus), access log, tokens in URLs, ``/api/v1/model`` without paths, start-up sweep."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from deepfake_detector.serve import ServeSettings, create_app
from tests.helpers import make_bad_file
from tests.serve.conftest import StubDetector
from tests.serve.test_app import client_for, post_video


def _samples(text: str) -> dict[tuple, float]:
    """{(sample, frozenset(labels)): value} from the Prometheus text format (parsing proves it scrapes)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_latency_analyses_and_rejections(face_video: Path, tmp_path: Path,
                                                                serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp) as client:
        assert client.get("/healthz").status_code == 200
        assert post_video(client, face_video).status_code == 200
        assert post_video(client, face_video).json()["cached"] is True  # same bytes: reused
        assert post_video(client, make_bad_file(tmp_path / "x.mp4", "png")).status_code == 415
        for i in range(5):  # unknown paths share one label value: no unbounded label sets
            assert client.get(f"/no/such/path/{i}").status_code == 404
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = _samples(r.text)
    total = "deepfake_detector_http_requests_total"
    assert _value(m, total, route="/healthz", method="GET", status="200") == 1
    assert _value(m, total, route="/api/v1/predict", method="POST", status="200") == 2
    assert _value(m, total, route="/api/v1/predict", method="POST", status="415") == 1
    assert _value(m, total, route="other", method="GET", status="404") == 5
    assert not any("/no/such" in str(key) for key in m)
    assert _value(m, "deepfake_detector_http_request_duration_seconds_count", route="/api/v1/predict") == 3
    assert _value(m, "deepfake_detector_analysis_seconds_count") == 1  # the cached one was not analysed
    assert _value(m, "deepfake_detector_uploads_rejected_total", reason="not_video") == 1
    assert _value(m, "deepfake_detector_result_cache_lookups_total", outcome="hit") == 1
    for gauge in ("queue_depth", "analyses_running", "bodies_in_flight", "body_bytes_reserved"):
        assert (f"deepfake_detector_{gauge}", frozenset()) in m, gauge
    assert _value(m, "deepfake_detector_jobs", state="queued") == 0
    info = next(dict(k[1]) for k in m if k[0] == "deepfake_detector_model_info")
    assert info["name"] == "stub" and info["sha256"] == "ab" * 8 and info["calibrated"] == "false"
    assert "/no/such" not in r.text


def test_each_app_has_its_own_registry(face_video: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with client_for(StubDetector(), tmp_path / "a") as a, client_for(StubDetector(), tmp_path / "b") as b:
        for _ in range(3):
            a.get("/healthz")
        b.get("/healthz")
        count_a = _value(_samples(a.get("/metrics").text), "deepfake_detector_http_requests_total",
                         route="/healthz", method="GET", status="200")
        count_b = _value(_samples(b.get("/metrics").text), "deepfake_detector_http_requests_total",
                         route="/healthz", method="GET", status="200")
    assert (count_a, count_b) == (3, 1)


def test_metrics_obey_the_token(serve_tmp: Path) -> None:
    with client_for(StubDetector(), serve_tmp, token="metrics-token-1") as client:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers={"Authorization": "Bearer metrics-token-1"})
        assert r.status_code == 200 and "deepfake_detector_http_requests_total" in r.text
        assert "metrics-token-1" not in r.text


def test_access_log_has_one_line_per_request_and_no_secrets(face_video: Path, serve_tmp: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level: nothing may carry the secret
    secret = "query-secret-987"
    with client_for(StubDetector(), serve_tmp, token=secret) as client:
        ok = {"Authorization": f"Bearer {secret}"}
        assert post_video(client, face_video, headers=ok).status_code == 200
        for url in (f"/api/v1/model?token={secret}", f"/healthz?access_token={secret}",
                    f"/api/v1/predict?explain=true&api_key={secret}", f"/?TOKEN={secret}"):
            r = client.get(url, headers=ok) if "predict" not in url else client.post(url, headers=ok)
            assert r.status_code == 401, url  # refused even with a valid header: the URL leaked it
            assert "Authorization header" in r.json()["detail"] and r.headers["connection"] == "close"
        assert client.get("/metrics", headers=ok).status_code == 200
    access = [r for r in caplog.records if r.name == "deepfake_detector.serve.access"]
    assert len(access) == 6
    first = access[0].getMessage()
    assert first.startswith("method=POST route=/api/v1/predict status=200 duration_ms=")
    assert "bytes_in=" in first and "bytes_out=" in first and "client=" in first
    assert access[0].http["status"] == 200 and access[0].http["bytes_in"] > face_video.stat().st_size
    assert "route=/api/v1/model status=401" in access[1].getMessage()
    assert all("?" not in r.getMessage() for r in access)
    server_side = [r for r in caplog.records if not r.name.startswith("httpx")]  # httpx: the test's client
    assert server_side and all(secret not in r.getMessage() for r in server_side)
    assert all(secret not in str(getattr(r, "http", "")) for r in server_side)


def test_model_info_has_no_server_paths(serve_tmp: Path, tmp_path: Path) -> None:
    class PathyStub(StubDetector):
        def info(self) -> dict:
            return {**super().info(), "checkpoint": str(tmp_path / "runs" / "exp" / "best.pt"),
                    "config": {"data": {"cache_dir": str(tmp_path / "cache"), "frames": 20},
                               "train": {"out": "/srv/runs", "note": f"made from {tmp_path}/data/x.csv"}},
                    "torch_home": "/root/.cache/torch", "calibration": {"method": "temperature", "t": 1.2}}

    with client_for(PathyStub(), serve_tmp) as client:
        info = client.get("/api/v1/model").json()
        text = client.get("/api/v1/model").text
    assert info["checkpoint"] == "best.pt" and info["config"]["data"]["cache_dir"] == "cache"
    assert info["config"]["train"]["out"] == "runs" and info["torch_home"] == "torch"
    assert info["config"]["train"]["note"] == "made from x.csv"
    assert info["config"]["data"]["frames"] == 20
    assert str(tmp_path) not in text and "/srv" not in text and "/root" not in text
    assert info["calibrated"] is True


def test_real_model_info_has_no_server_paths(real_detector, tiny_checkpoint: Path, serve_tmp: Path) -> None:
    with client_for(real_detector, serve_tmp) as client:
        text = client.get("/api/v1/model").text
        info = client.get("/api/v1/model").json()
    assert info["checkpoint"] == tiny_checkpoint.name
    assert str(tiny_checkpoint.parent) not in text and '"/' not in text
    assert info["calibrated"] is False


def _old(path: Path, age_s: float = 3600) -> Path:
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_startup_sweeps_only_our_dead_upload_folders(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    dead = parent / "deepfake-detector-serve-abcd_123"
    (dead / "0123abcd").mkdir(parents=True)
    (dead / "0123abcd" / "face.mp4").write_bytes(b"x" * 100)
    _old(dead)
    live = parent / "deepfake-detector-serve-live0000"  # its server still runs: it holds the lock
    live.mkdir()
    _old(live)
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    recent = parent / "deepfake-detector-serve-recent00"  # may belong to a server starting right now
    recent.mkdir()
    others = {
        "mine": parent / "my-files",  # not ours
        "prefix-only": parent / "deepfake-detector-serve-not-mkdtemp-name",
        "file": parent / "deepfake-detector-serve-file0000",
    }
    others["mine"].mkdir()
    others["prefix-only"].mkdir()
    others["file"].write_bytes(b"keep me")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_bytes(b"keep me")
    link = parent / "deepfake-detector-serve-link0000"
    link.symlink_to(target, target_is_directory=True)
    for p in (*others.values(),):
        _old(p)
    try:
        app = create_app(StubDetector(), ServeSettings(tmp_dir=str(parent), warmup=False))
        with TestClient(app):
            ours = app.state.serve.private_dir
            assert not dead.exists()
            assert live.exists() and recent.exists() and link.is_symlink()
            assert all(p.exists() for p in others.values())
            assert (target / "precious").read_bytes() == b"keep me"
            # our own folder is locked while we run: another server's sweep leaves it alone
            _old(ours)
            with TestClient(create_app(StubDetector(), ServeSettings(tmp_dir=str(parent), warmup=False))):
                assert ours.exists()
        assert not ours.exists()
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
