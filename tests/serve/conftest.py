"""Fixtures for the server tests: a stand-in detector, a real tiny checkpoint, a live uvicorn server.

The stand-in (``StubDetector``) implements the Detector interface (``predict_one``, ``info``) and
really opens the uploaded file with PyAV, so it fails if the server handed it a wrong path; it can be
made to block on an event, which makes the queue (503) and timeout (504) tests deterministic. The
end-to-end tests (load, browser) use the real ``Detector`` on a tiny-backbone checkpoint built here.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from deepfake_detector.inference import Prediction
from tests.helpers import make_video

StubPrediction = Prediction  # the stand-in detector returns the real result type


class StubDetector:
    """Detector-shaped test double: counts the video's frames with PyAV, returns a fixed verdict."""

    def __init__(self, p_fake: float = 0.8, threshold: float = 0.5, status: str = "ok",
                 gate: Optional[threading.Event] = None, fail: Optional[Exception] = None) -> None:
        self.p_fake = p_fake
        self.threshold = threshold
        self.status = status
        self.gate = gate
        self.fail = fail
        self.calls: list[dict] = []
        self.entered = threading.Semaphore(0)  # released once per predict_one that started
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"name": "stub", "sha256": "ab" * 32, "config": {"model": {"backbone": "none"}},
                "metrics": {"val_auc": 0.93, "val_loss": float("nan")}, "threshold": self.threshold,
                "version": "test"}

    def predict_one(self, path: str, explain_dir: Optional[str] = None) -> StubPrediction:
        import av

        st = os.stat(path)
        with self._lock:
            self.calls.append({"path": path, "mode": stat.S_IMODE(st.st_mode), "size": st.st_size,
                               "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode),
                               "explain_dir": explain_dir})
        self.entered.release()
        if self.gate is not None and not self.gate.wait(timeout=30):
            raise RuntimeError("test gate never opened")
        if self.fail is not None:
            raise self.fail
        with av.open(path) as container:
            frames = sum(1 for _ in container.decode(video=0))
        if self.status not in ("ok", "no_face"):
            return StubPrediction(path=path, status=self.status, frames=0,
                                  error=f"stub says it cannot read {path}")
        explanation = None
        if explain_dir is not None:
            import cv2
            import numpy as np

            strip = np.zeros((32, 96, 3), np.uint8)
            strip[:, :48, 2] = 255
            out = Path(explain_dir) / (Path(path).stem + ".png")
            cv2.imwrite(str(out), strip)
            explanation = str(out)
        label = "FAKE" if self.p_fake >= self.threshold else "REAL"
        return StubPrediction(path=path, p_fake=self.p_fake, label=label, status=self.status,
                              frames=min(frames, 4), face_ratio=1.0 if self.status == "ok" else 0.0,
                              seconds=0.01, explanation=explanation)


# --------------------------------------------------------------------------------------------------
# videos
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real-face video (carphone frames, 96x80, 12 frames)."""
    return make_video(tmp_path_factory.mktemp("videos") / "face.mp4", frames=12, size=(96, 80))


@pytest.fixture(scope="session")
def faceless_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("videos") / "noface.mp4", frames=12, size=(96, 80), face=False)


# --------------------------------------------------------------------------------------------------
# the real detector on a tiny checkpoint
# --------------------------------------------------------------------------------------------------


def make_tiny_checkpoint(path: Path, frames: int = 4, size: int = 64) -> Path:
    """A checkpoint in the train stage's format with the ``tiny`` backbone (random weights, seeded)."""
    from deepfake_detector.config import PreprocessConfig
    from tests.helpers import make_tiny_checkpoint as write_checkpoint

    pre = PreprocessConfig(frames=frames, size=size)
    metrics = {"val_auc": 0.5, "val_loss": 0.69}
    return write_checkpoint(path, pre, seq_len=frames, name="tiny-serve", metrics=metrics)


def _real_detector_available() -> Optional[str]:
    """None when the predict stack imports, else why not (the tests then skip with that reason)."""
    for mod in ("deepfake_detector.inference", "deepfake_detector.models",
                "deepfake_detector.data.preprocess"):
        try:
            __import__(mod)
        except ImportError as exc:
            return f"{mod} is not importable yet ({exc})"
    return None


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = _real_detector_available()
    if reason:
        pytest.skip(reason)
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def real_detector(tiny_checkpoint: Path) -> Any:
    import torch

    from deepfake_detector.inference import Detector

    torch.set_num_threads(1)  # 2 shared cores: keep the tests polite
    return Detector.from_checkpoint(tiny_checkpoint, device="cpu", workers=0)


# --------------------------------------------------------------------------------------------------
# clients and servers
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def serve_tmp(tmp_path: Path) -> Path:
    """Parent folder of the server's private upload folder (checked to be empty after requests)."""
    d = tmp_path / "serve-tmp"
    d.mkdir()
    return d


def upload_dir_files(parent: Path) -> list[Path]:
    """Everything left inside the server's private upload folder(s) under ``parent``."""
    return [p for p in parent.rglob("*") if p.parent != parent]


def wait_until(cond, timeout: float = 20.0, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()


def wait_for_serve(proc: Any, base: str, timeout: float = 120.0) -> None:
    """Wait until a ``serve`` subprocess answers ``/healthz`` with 200; fail with its output if it exits."""
    import httpx

    def up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            return httpx.get(base + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(up, timeout=timeout, interval=0.3)
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app: Any, timeout: float = 30.0, **overrides: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on a free loopback port in a thread; yield its base URL.

    The uvicorn settings are the ones ``serve`` uses (``serve.timeouts.uvicorn_config``: header
    timeout protocol, connection limit, keep-alive) for the app's own ``ServeSettings``.
    """
    import uvicorn

    from deepfake_detector.serve.timeouts import uvicorn_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn_config(app, app.state.serve.settings, log_level="warning", **overrides)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not wait_until(lambda: server.started, timeout=timeout):
            raise RuntimeError("uvicorn did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
