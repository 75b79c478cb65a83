"""What one server instance shares between its requests, and how it starts and stops.

The private upload folder, the admission counter and the inference thread pool live exactly as long
as the app (the lifespan); the detector is loaded (if a callable) and its ``info()`` read once there.
Handlers get the :class:`ServerState` injected, never from a closure, so each can be read on its own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from .admission import Admission
from .responses import _jsonable
from .settings import ServeSettings
from .upload import probe_video

# the server's one logger name, as before it was split into modules
log = logging.getLogger("deepfake_detector.serve.app")


def warm_up(detector: Any, folder: Path) -> None:
    """Run a tiny synthetic video through ``detector`` so the first real request is not the slow one.

    The first call pays for lazy imports, decoder and face-detector set-up and memory allocation;
    doing it at start-up keeps that out of users' time. Failures are logged, never fatal.
    """
    import av
    import numpy as np

    path = folder / "warmup.mp4"
    t0 = time.perf_counter()
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for i in range(8):
                img = np.full((64, 64, 3), 40 + 10 * i, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        probe_video(path)
        detector.predict_one(str(path))
        log.info("warm-up done in %.2f s", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a warm-up problem must not stop the server
        log.warning("warm-up failed (the first request will be slower): %s", exc)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


@dataclasses.dataclass
class ServerState:
    """The server's shared state, held on ``app.state.serve``; empty until the lifespan fills it in."""

    settings: ServeSettings
    detector: Any = None
    info: dict = dataclasses.field(default_factory=dict)
    executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    private_dir: Optional[Path] = None
    admission: Optional[Admission] = None
    started: float = 0.0

    @property
    def is_ready(self) -> bool:
        """The model is loaded and requests are accepted (false while starting or stopping)."""
        return self.detector is not None and self.admission is not None

    def open(self) -> None:
        """Create the private 0700 upload folder, the admission counter and the inference threads."""
        parent = self.settings.tmp_dir
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="deepfake-detector-serve-", dir=parent))
        os.chmod(private, 0o700)
        self.private_dir = private
        self.admission = Admission(self.settings.capacity)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="deepfake-detector-infer")

    async def load(self, detector: Any) -> None:
        """Load the detector (if a callable), read its info and warm it up, off the event loop."""
        import anyio.to_thread

        det = detector
        if not hasattr(det, "predict_one") and callable(det):
            log.info("loading the model")
            det = await anyio.to_thread.run_sync(det)
        info = await anyio.to_thread.run_sync(det.info)
        if self.settings.warmup:
            await anyio.to_thread.run_sync(warm_up, det, self.private_dir)
        self.info = _jsonable(dict(info or {}))
        self.detector = det
        self.started = time.time()
        log.info("model %s ready; uploads go to %s", self.info.get("name"), self.private_dir)

    def close(self) -> None:
        """Stop accepting work, drop queued inferences and delete every upload (runs after :meth:`open`)."""
        self.detector = None
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
