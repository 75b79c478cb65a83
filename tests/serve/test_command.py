"""``deepfake-detector serve``: arguments, errors, and a real start-up in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deepfake_detector.cli import main
from tests.serve.conftest import free_port, wait_for_serve


def test_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--host", "--port", "--max-upload-mb", "--workers", "--token", "--queue-size", "--timeout",
                "--cors-origin", "127.0.0.1", "--legacy", "--legacy-mode", "--legacy-frames",
                "--legacy-preprocess", "--legacy-readout", "--no-calibration", "--batch-window-ms",
                "--max-connections", "--header-timeout", "--keep-alive-timeout", "--body-idle-timeout",
                "--min-upload-rate", "--max-bodies", "--body-budget-mb", "--max-jobs", "--job-ttl",
                "--cache-entries", "--cache-mb", "/metrics", "/api/v1/jobs"):
        assert opt in out, opt


def test_help_states_true_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "default: True" not in out  # --no-warmup is off unless given
    assert "--no-warmup skip the start-up run" in out and "default: warm up" in out
    assert "(default: None)" not in out and "(default: [])" not in out


def test_port_in_use_is_one_line_error_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_detector.inference import Detector

    def never(*a, **k):
        raise AssertionError("the model must not be loaded when the port is taken")

    monkeypatch.setattr(Detector, "from_checkpoint", never)
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"not loaded")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert main(["serve", str(ckpt), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert err == f"error: cannot listen on 127.0.0.1:{port}: address already in use; choose another --port\n"
    assert "serving" not in out and "loading" not in err


def test_listen_check_accepts_a_free_port_and_rejects_a_foreign_address() -> None:
    from deepfake_detector.commands.serve import check_can_listen
    from deepfake_detector.errors import UserError

    check_can_listen("127.0.0.1", free_port())
    check_can_listen("127.0.0.1", 0)
    with pytest.raises(UserError, match="no such address"):
        check_can_listen("192.0.2.1", free_port())  # TEST-NET-1: never this machine's


@pytest.mark.parametrize("content", [b"garbage\n", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint_is_unreadable_not_unsafe(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                     content: bytes) -> None:
    ckpt = tmp_path / "bad.pt"
    ckpt.write_bytes(content)
    assert main(["serve", str(ckpt), "--port", str(free_port()), "--device", "cpu", "--no-warmup"]) == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not a readable checkpoint (corrupt" in lines[0]
    assert "refusing" not in err and "Traceback" not in err and "serving" not in out


def test_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and "Traceback" not in err


def test_bad_limits_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "x.pt"), "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pt"), "--cors-origin", "example.com"]) == 2
    assert "CORS" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pt"), "--max-upload-mb", "500", "--body-budget-mb", "100"]) == 2
    assert "body budget" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pt"), "--header-timeout", "0"]) == 2
    assert "header_timeout" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pt"), "--batch-window-ms", "-1"]) == 2
    assert "batching window" in capsys.readouterr().err
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"x")
    assert main(["serve", str(ckpt), "--legacy", "--legacy-frames", "0", "--port", str(free_port())]) == 2
    assert "--legacy-frames must be >= 1" in capsys.readouterr().err


def test_legacy_options_reach_the_detector_like_predict(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_detector.errors import UserError
    from deepfake_detector.inference import Detector

    seen: list[dict] = []

    def record(path, **kwargs):
        seen.append(kwargs)
        raise UserError("stop here")

    monkeypatch.setattr(Detector, "from_checkpoint", record)
    ckpt = tmp_path / "reference_10frames.pt"
    ckpt.write_bytes(b"x")
    port = str(free_port())
    assert main(["serve", str(ckpt), "--port", port, "--legacy", "--legacy-mode", "exact",
                 "--legacy-frames", "10", "--legacy-preprocess", "ours", "--legacy-readout", "mean",
                 "--device", "cpu"]) == 2
    assert main(["serve", str(ckpt), "--port", port, "--threshold", "0.7", "--no-calibration"]) == 2
    assert "stop here" in capsys.readouterr().err
    assert seen[0] == {"device": "cpu", "compile": False, "legacy": True, "legacy_mode": "exact",
                       "legacy_frames": 10, "legacy_preprocess": "ours", "legacy_readout": "mean",
                       "calibration": True}
    # without --legacy: auto-detected (None) in the default 'fixed' mode, as predict does
    assert seen[1]["legacy"] is None and seen[1]["legacy_mode"] == "fixed" and seen[1]["threshold"] == 0.7
    assert seen[1]["legacy_readout"] is None and seen[1]["calibration"] is False
    assert main(["serve", str(ckpt), "--port", port, "--workers", "16", "--batch-window-ms", "10"]) == 2
    assert seen[2]["batch_size"] == 16  # the batcher's largest batch is one forward pass


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_serve_subprocess_with_env_token(tiny_checkpoint: Path, face_video: Path, tmp_path: Path) -> None:
    port = free_port()
    tmp_parent = tmp_path / "uploads"
    env = {**os.environ, "DEEPFAKE_DETECTOR_TOKEN": "env-token-123", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepfake_detector", "serve", str(tiny_checkpoint), "--port", str(port),
         "--tmp-dir", str(tmp_parent), "--device", "cpu", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_serve(proc, base)
        files = {"file": ("face.mp4", face_video.read_bytes(), "video/mp4")}
        r = httpx.post(base + "/api/v1/predict", files=files, timeout=60)
        assert r.status_code == 401
        r = httpx.post(base + "/api/v1/predict", files=files, timeout=60,
                       headers={"Authorization": "Bearer env-token-123"})
        assert r.status_code == 200 and r.json()["model"]["name"] == "tiny-serve"
        # a token in the URL is refused, even a right one, and written to no log (the access log included)
        r = httpx.get(base + "/api/v1/model?token=env-token-123", timeout=10,
                      headers={"Authorization": "Bearer env-token-123"})
        assert r.status_code == 401 and "Authorization header" in r.json()["detail"]
        metrics = httpx.get(base + "/metrics", timeout=10, headers={"Authorization": "Bearer env-token-123"})
        assert metrics.status_code == 200 and 'route="/api/v1/model",status="401"' in metrics.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"at http://127.0.0.1:{port}/" in out
    assert "env-token-123" not in out  # the token is never printed, nor logged
    # one access-log line per request at --log-level info: the route, never the query string
    assert "method=POST route=/api/v1/predict status=200" in out
    assert "method=GET route=/api/v1/model status=401" in out and "?token" not in out
    time.sleep(0.1)
    assert list(tmp_parent.iterdir()) == []  # the private upload folder was removed on shutdown
