"""``deepfake-detector serve``: arguments, errors, and a real start-up in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deepfake_detector.cli import main
from tests.serve.conftest import free_port, wait_until


def test_help_lists_the_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--host", "--port", "--max-upload-mb", "--workers", "--token", "--queue-size", "--timeout",
                "--cors-origin", "127.0.0.1"):
        assert opt in out


def test_missing_checkpoint_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint not found") and "Traceback" not in err


def test_bad_limits_are_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", str(tmp_path / "x.pt"), "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "x.pt"), "--cors-origin", "example.com"]) == 2
    assert "CORS" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_serve_subprocess_with_env_token(tiny_checkpoint: Path, face_video: Path, tmp_path: Path) -> None:
    port = free_port()
    tmp_parent = tmp_path / "uploads"
    env = {**os.environ, "DEEPFAKE_DETECTOR_TOKEN": "env-token-123", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepfake_detector", "serve", str(tiny_checkpoint), "--port", str(port),
         "--tmp-dir", str(tmp_parent), "--device", "cpu", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(base + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=120, interval=0.3)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        files = {"file": ("face.mp4", face_video.read_bytes(), "video/mp4")}
        r = httpx.post(base + "/api/v1/predict", files=files, timeout=60)
        assert r.status_code == 401
        r = httpx.post(base + "/api/v1/predict", files=files, timeout=60,
                       headers={"Authorization": "Bearer env-token-123"})
        assert r.status_code == 200 and r.json()["model"]["name"] == "tiny-serve"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"at http://127.0.0.1:{port}/" in out
    assert "env-token-123" not in out  # the token is never printed
    time.sleep(0.1)
    assert list(tmp_parent.iterdir()) == []  # the private upload folder was removed on shutdown
