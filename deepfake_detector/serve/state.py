"""What one server instance shares between its requests, and how it starts and stops.

The private upload folder, the budgets (:mod:`.admission`), the inference thread pool, the job
store and result cache (:mod:`.jobs`) and the metrics (:mod:`.metrics`) live exactly as long as the
app (the lifespan); the detector is loaded (if a callable) and its ``info()`` read once there.
Handlers get the :class:`ServerState` injected, never from a closure, so each can be read on its own.

Start-up also sweeps uploads a crashed or killed server left behind in ``--tmp-dir``: only folders
named like ours (``deepfake-detector-serve-XXXXXXXX``), real directories owned by this user, last
changed before this start, and whose owner is gone (each live server holds an exclusive ``flock`` on
its folder, which the kernel releases when the process dies, even on ``kill -9``). Nothing else is
ever touched.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .admission import Admission, BodyBudget
from .batching import ClipBatcher, supports_batching
from .jobs import JobStore, ResultCache
from .metrics import Metrics
from .responses import _jsonable, _without_paths
from .settings import MIB, ServeSettings
from .upload import probe_video

# the server's one logger name, as before it was split into modules
log = logging.getLogger("deepfake_detector.serve.app")

PRIVATE_PREFIX = "deepfake-detector-serve-"
_PRIVATE_NAME = re.compile(re.escape(PRIVATE_PREFIX) + r"[a-z0-9_]{8}")  # tempfile.mkdtemp's 8 characters
_START_GRACE_S = 5.0  # a folder changed this close to our start may belong to a server starting now


def write_warmup_video(path: Path) -> None:
    """A tiny synthetic mpeg4 video (8 frames, 64x64) for the warm-up."""
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            img = np.full((64, 64, 3), 40 + 10 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _warm_one(detector: Any, path: Path) -> None:
    probe_video(path)
    detector.predict_one(str(path))


def warm_up_workers(executor: concurrent.futures.ThreadPoolExecutor, workers: int, detector: Any,
                    folder: Path) -> None:
    """Run a tiny synthetic video through the model in EACH inference thread, so no user pays set-up.

    The first call in a thread pays for lazy imports, its own face detector (dlib: ~0.5 s), decoder
    set-up and memory allocation; doing it at start-up keeps that out of users' time. A barrier keeps
    every thread busy until all have started, so the ``workers`` warm-ups really run on ``workers``
    different threads. Blocking: call it off the event loop. Failures are logged, never fatal.
    """
    path = folder / "warmup.mp4"
    barrier = threading.Barrier(workers)

    def one() -> None:
        try:
            _warm_one(detector, path)
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=120)

    t0 = time.perf_counter()
    try:
        write_warmup_video(path)
        for future in [executor.submit(one) for _ in range(workers)]:
            future.result()
        log.info("warm-up of %d worker thread(s) done in %.2f s", workers, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a warm-up problem must not stop the server
        log.warning("warm-up failed (the first requests will be slower): %s", exc)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def _owner_alive(folder: Path) -> bool:
    """Whether a running server holds the lock on ``folder`` (when in doubt: yes)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return True  # cannot tell: leave it alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True  # locked: its server is running
    finally:
        os.close(fd)  # closing also releases a lock we just took
    return False


def sweep_stale_uploads(parent: Path, started: float, keep: Optional[Path] = None) -> int:
    """Remove private upload folders of dead servers in ``parent`` (see the module docstring); how many."""
    if os.name != "posix":
        return 0
    removed = 0
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for entry in entries:
        if not _PRIVATE_NAME.fullmatch(entry.name) or (keep is not None and entry.path == str(keep)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        recent = st.st_mtime >= started - _START_GRACE_S
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or recent:
            continue
        if _owner_alive(Path(entry.path)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += not os.path.lexists(entry.path)
    if removed:
        log.warning("removed %d upload folder(s) left in %s by a server that ended without cleaning up",
                    removed, parent)
    return removed


@dataclasses.dataclass
class ServerState:
    """The server's shared state, held on ``app.state.serve``; empty until the lifespan fills it in."""

    settings: ServeSettings
    detector: Any = None
    info: dict = dataclasses.field(default_factory=dict)
    calibrated: bool = False
    executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    private_dir: Optional[Path] = None
    admission: Optional[Admission] = None
    bodies: Optional[BodyBudget] = None
    jobs: Optional[JobStore] = None
    results: Optional[ResultCache] = None
    metrics: Optional[Metrics] = None
    batcher: Optional[ClipBatcher] = None  # --batch-window-ms: the network batched across requests
    started: float = 0.0
    _lock_fd: Optional[int] = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.snapshot)

    @property
    def is_ready(self) -> bool:
        """The model is loaded and requests are accepted (false while starting or stopping)."""
        return self.detector is not None and self.admission is not None

    def snapshot(self) -> dict:
        """Queue, bodies, jobs and cache counts (``/healthz`` and the metrics' gauges)."""
        out: dict[str, Any] = {}
        if self.admission is not None:
            out.update(self.admission.snapshot())
        if self.bodies is not None:
            out.update(self.bodies.snapshot())
        if self.jobs is not None:
            out["jobs"] = self.jobs.counts()
        if self.results is not None:
            out["cache_entries"] = len(self.results)
        return out

    def open(self) -> None:
        """Create the private 0700 upload folder (locked), the budgets, stores and inference threads."""
        s = self.settings
        parent = Path(s.tmp_dir) if s.tmp_dir else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        private = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=parent))
        os.chmod(private, 0o700)
        self.private_dir = private
        self._lock_owner(private)
        sweep_stale_uploads(parent, started, keep=private)
        self.admission = Admission(s.capacity)
        self.bodies = BodyBudget(s.max_bodies, s.body_budget_bytes)
        self.jobs = JobStore(s.max_jobs, s.job_ttl_s, max_bytes=int(float(s.jobs_mb) * MIB))
        self.results = ResultCache(s.cache_entries, int(float(s.cache_mb) * MIB), s.job_ttl_s)
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=s.workers, thread_name_prefix="deepfake-detector-infer")

    def _lock_owner(self, private: Path) -> None:
        """Hold an exclusive lock on our folder for our lifetime: other servers' sweeps see we are alive."""
        if os.name != "posix":
            return
        import fcntl

        fd = os.open(private, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd

    async def load(self, detector: Any) -> None:
        """Load the detector (if a callable), read its info and warm up each worker, off the event loop."""
        import anyio.to_thread

        det = detector
        if not hasattr(det, "predict_one") and callable(det):
            log.info("loading the model")
            det = await anyio.to_thread.run_sync(det)
        info = await anyio.to_thread.run_sync(det.info)
        if self.settings.warmup:
            assert self.executor is not None and self.private_dir is not None
            await anyio.to_thread.run_sync(warm_up_workers, self.executor, self.settings.workers, det,
                                           self.private_dir)
        info = dict(info or {})
        meta = getattr(det, "meta", None)
        from_meta = meta.get("calibration") if isinstance(meta, dict) else None
        self.calibrated = bool(info.get("calibration") or from_meta)
        self.info = _without_paths(_jsonable(info))
        assert self.metrics is not None
        self.metrics.set_model(self.info, self.calibrated)
        self.batcher = self._batcher_for(det)
        self.detector = det
        self.started = time.time()
        log.info("model %s ready; uploads go to %s", self.info.get("name"), self.private_dir)

    def _batcher_for(self, detector: Any) -> Optional[ClipBatcher]:
        """The batcher when ``--batch-window-ms`` asks for one and batches can form (>= 2 workers)."""
        s = self.settings
        if not s.batch_window_ms:
            return None
        if int(s.workers) < 2 or not supports_batching(detector):
            why = "needs --workers 2 or more" if int(s.workers) < 2 else "this detector cannot score clips"
            log.warning("--batch-window-ms ignored: batching %s", why)
            return None
        assert self.metrics is not None
        log.info("batching the network across requests: window %g ms, up to %d clips per pass",
                 s.batch_window_ms, s.workers)
        return ClipBatcher(detector, s.batch_window_ms / 1000.0, max_batch=int(s.workers),
                           on_batch=self.metrics.batch_size.observe)

    def close(self) -> None:
        """Stop accepting work, drop queued inferences and jobs, delete every upload (after :meth:`open`)."""
        self.detector = None
        if self.jobs is not None:
            self.jobs.cancel_all()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None
