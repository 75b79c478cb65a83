"""Stress: hundreds of parallel face-video uploads against the real ``serve`` command, ``--workers 1, 2, 4``.

The face detector (dlib) and the decoders are native code that is not thread-safe; with one shared
detector, ``--workers 2`` crashed (SIGSEGV, glibc heap corruption) under a handful of parallel face
uploads. Here the real command runs in a subprocess (a native crash ends the server, not pytest) with
the real dlib detector and the tiny checkpoint, the result cache off (every upload is analysed) and
videos of four frame sizes (dlib's scanner reallocates its image pyramid per size: the crash needed
that). Every answer must be 200 or 503, and the server must still be up and clean at the end.

Bounded: N_REQUESTS per setting, at most N_PARALLEL in flight, client timeouts, a pytest time limit;
about a minute in all on 2 cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import make_video
from tests.serve.conftest import free_port, wait_for_serve, wait_until

N_REQUESTS = 500
N_PARALLEL = 64
SIZES = [(96, 80), (128, 96), (160, 120), (112, 112)]


@pytest.fixture(scope="module")
def face_videos(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    d = tmp_path_factory.mktemp("stress")
    return [make_video(d / f"face{w}x{h}.mp4", frames=8, size=(w, h)).read_bytes() for w, h in SIZES]


def _start(checkpoint: Path, workers: int, port: int, tmp_dir: Path,
           window_ms: float = 0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEEPFAKE_DETECTOR_TOKEN": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "deepfake_detector", "serve", str(checkpoint), "--port", str(port),
         "--device", "cpu", "--workers", str(workers), "--queue-size", "24", "--cache-entries", "0",
         "--tmp-dir", str(tmp_dir), "--log-level", "warning", "--timeout", "60",
         "--batch-window-ms", f"{window_ms:g}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


async def _fire(base: str, videos: list[bytes]) -> list[int]:
    limit = asyncio.Semaphore(N_PARALLEL)
    # no keep-alive: a request sent on a kept-alive connection just as the server closes it idle is lost
    # (HTTP/1.1's close race, on the client), so -1 below means the server really dropped a connection
    limits = httpx.Limits(max_connections=N_PARALLEL, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, timeout=90, limits=limits) as client:
        async def one(i: int) -> int:
            async with limit:
                files = {"file": (f"face{i}.mp4", videos[i % len(videos)], "video/mp4")}
                try:
                    return (await client.post("/api/v1/predict", files=files)).status_code
                except httpx.HTTPError:
                    return -1  # connection dropped: what a crashing server does
        return await asyncio.gather(*(one(i) for i in range(N_REQUESTS)))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("workers", "window_ms"), [(1, 0), (2, 0), (4, 0), (4, 10)])
def test_parallel_face_uploads_never_crash_the_server(workers: int, window_ms: float, tiny_checkpoint: Path,
                                                       face_videos: list[bytes], tmp_path: Path) -> None:
    """(4, 10): the same with the network batched across requests (--batch-window-ms 10)."""
    port = free_port()
    proc = _start(tiny_checkpoint, workers, port, tmp_path, window_ms)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_serve(proc, base)
        t0 = time.perf_counter()
        codes = asyncio.run(_fire(base, face_videos))
        seconds = time.perf_counter() - t0
        tally = {c: codes.count(c) for c in sorted(set(codes))}
        print(f"stress --workers {workers} --batch-window-ms {window_ms:g}: {len(codes)} uploads "
              f"({N_PARALLEL} in flight) in {seconds:.1f} s -> {tally}")
        assert proc.poll() is None, f"the server died (exit code {proc.returncode})"
        assert set(codes) <= {200, 503}, tally
        assert codes.count(200) >= workers, tally
        health = httpx.get(base + "/healthz", timeout=10)
        assert health.status_code == 200
        assert wait_until(lambda: httpx.get(base + "/healthz", timeout=10).json()["queue"]["in_flight"] == 0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Segmentation fault" not in out and "corrupted" not in out, out[-2000:]
    assert proc.returncode in (0, 130), out[-2000:]  # 130: ended by our Ctrl+C; a signal is negative
    assert list(tmp_path.iterdir()) == []  # every upload and the private folder are gone
