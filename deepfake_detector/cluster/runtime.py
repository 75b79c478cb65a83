"""What the Ray engines share: importing Ray (or one line naming the extra), connecting to a cluster or
starting a local instance, sizing the actor pools, and making a lost worker cost a retry, not the run.

Fault tolerance, the whole story:

* A worker killed mid-video (node lost, OOM kill, preemption, ``kill -9``): Ray Data restarts the actor
  and retries its task (its defaults for actor pools: unlimited restarts and task retries). Rows reach
  the driver only from finished tasks, so every video appears exactly once; a clip rewritten by the
  retry is the same bytes, written atomically.
* A video that kills its worker every time (a crashing decoder) would be retried forever; a small
  ledger actor on the driver's node counts, per video, the starts that never finished. At
  ``max_crashes`` the video becomes an ``error`` row instead of another attempt.
* A video stuck in native code past ``hard_timeout_s``: a watchdog thread in the actor ends the
  actor's process, so the hang becomes a crash that the ledger counts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

from ..errors import UserError
from . import CLUSTER_EXTRA

log = logging.getLogger(__name__)

T = TypeVar("T")

WATCHDOG_EXIT_CODE = 70  # the actor's exit status when a video hung past the hard timeout


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or a ``UserError`` naming the extra that installs them."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engines need Ray Data, not only Ray core)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise UserError(f"--engine ray needs Ray Data, which is not installed (no module {missing!r}); "
                        f"install it with: {CLUSTER_EXTRA}") from None
    return ray


@dataclass
class RayOptions:
    """How to reach the cluster and size the actor pools (None = decided from the cluster)."""

    address: Optional[str] = None  # "auto", "HOST:PORT", "ray://HOST:PORT"; None: $RAY_ADDRESS or a new one
    workers: Optional[int] = None  # decoding actors (CPU); None: the cluster's CPUs not taken by model actors
    num_gpus_per_worker: Optional[float] = None  # GPUs per model actor; None: 1 when the cluster has GPUs
    model_workers: Optional[int] = None  # model actors; None: one per GPU share, or 1 on CPUs
    num_cpus: Optional[int] = None  # CPUs of a local instance started here (None: this machine's)
    videos_per_task: int = 1  # videos per Ray task (more when there would be over 10,000 tasks): what a
    # lost worker redoes, and the granularity of load balancing and of results reaching the driver
    max_crashes: int = 3  # a video that ended its worker this many times becomes an error row

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UserError("--workers must be >= 1 with --engine ray")
        if self.num_gpus_per_worker is not None and self.num_gpus_per_worker < 0:
            raise UserError("--num-gpus-per-worker must be >= 0")
        if self.videos_per_task < 1 or self.max_crashes < 1:
            raise UserError("videos_per_task and max_crashes must be >= 1")


@dataclass
class ClusterInfo:
    """What the driver saw when it connected."""

    address: str
    nodes: int
    cpus: float
    gpus: float
    started_here: bool

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}"
        if self.started_here:
            where = "a Ray instance started for this run"
        return f"{where}: {self.nodes} node(s), {self.cpus:g} CPU(s), {self.gpus:g} GPU(s)"


def _connect(ray: Any, opts: RayOptions) -> bool:
    """``ray.init`` for ``opts``; True when this call started a new local instance."""
    kwargs: dict = {"include_dashboard": False, "configure_logging": False, "log_to_driver": True}
    joining = bool(opts.address or os.environ.get("RAY_ADDRESS"))
    try:
        if joining:
            ray.init(address=opts.address or None, **kwargs)
        else:  # a new single-node instance for this run, even where `ray start` left one ("auto" joins that)
            ray.init(address="local", num_cpus=opts.num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = opts.address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise UserError(f"cannot start or reach Ray ({where}): {first}", exit_code=1) from None
    return not joining


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[ClusterInfo]:
    """Connected to Ray for the duration (an existing connection is reused and left open), with Ray
    Data's own progress bars and start-up lines off: the driver shows one bar and one summary."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        started = _connect(ray, opts)
    ctx = ray.data.DataContext.get_current()
    # results are keyed, not ordered; one progress bar (ours); Ray Data's start-up lines and its warning
    # that its own bars are off stay out of the way
    settings = {"enable_progress_bars": False, "print_on_execution_start": False}
    saved = {k: getattr(ctx, k) for k in settings if hasattr(ctx, k)}
    saved_order = ctx.execution_options.preserve_order
    quiet = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    saved_levels = {name: logging.getLogger(name).level for name in quiet}
    for k in saved:
        setattr(ctx, k, settings[k])
    ctx.execution_options.preserve_order = False
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(max(saved_levels[name], level))
    try:
        res = ray.cluster_resources()
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        address = str(ray.get_runtime_context().gcs_address)
        yield ClusterInfo(address, nodes, float(res.get("CPU", 0)), float(res.get("GPU", 0)), started)
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        ctx.execution_options.preserve_order = saved_order
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if started:
            ray.shutdown()


NOT_SHARED = "is not visible on every node"  # in an actor's start-up error: a path the nodes do not share


def cluster_failure(exc: BaseException, what: str) -> UserError:
    """One line for a Ray failure that ended the run (an actor that cannot start, a lost cluster): an
    actor's own "not visible on every node" line when there is one, else Ray's first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    shared = [line for line in lines if NOT_SHARED in line]
    first = (shared[-1] if shared else lines[0] if lines else type(exc).__name__)[:400]
    return UserError(f"the Ray cluster failed ({first}); {what}", exit_code=1)


def pool(size: int) -> Any:
    """A pool of up to ``size`` actors (at least one); two tasks in flight per actor bound the work a
    lost actor takes with it."""
    import ray.data

    size = max(1, int(size))
    try:
        return ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size,
                                          max_tasks_in_flight_per_actor=2)
    except TypeError:  # a Ray Data without initial_size / in-flight limits
        return ray.data.ActorPoolStrategy(min_size=1, max_size=size)


def dataset_of(items: list[dict], videos_per_task: int) -> Any:
    """``items`` as a Ray dataset of about ``videos_per_task`` rows per block (at most 10,000 blocks:
    millions of videos make larger blocks, not millions of objects)."""
    import ray.data

    blocks = min(max(1, math.ceil(len(items) / videos_per_task)), 10_000)
    return ray.data.from_items(items, override_num_blocks=blocks)


def iter_rows(ds: Any) -> Iterator[dict]:
    """The dataset's output rows as they finish (streaming: nothing is materialised)."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for k in range(n):
            yield {key: _plain(batch[key][k]) for key in keys}


def _plain(value: Any) -> Any:
    """NumPy scalars and byte strings from a Ray batch as plain Python values."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


# --------------------------------------------------------------------------------------------------
# Per-video crash ledger and hang watchdog (used inside the actors)
# --------------------------------------------------------------------------------------------------


class CrashLedger:
    """Starts that never finished, per video key: the crashes a video has caused so far."""

    def __init__(self) -> None:
        self.open: dict[str, int] = {}

    def start(self, key: str) -> int:
        earlier = self.open.get(key, 0)
        self.open[key] = earlier + 1
        return earlier

    def finish(self, key: str) -> None:
        self.open.pop(key, None)


def make_ledger() -> Any:
    """A ``CrashLedger`` actor on the driver's node (it lives and dies with the driver)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    remote = ray.remote(num_cpus=0, max_restarts=0)(CrashLedger)
    return remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()


def crash_message(crashes: int, hard_timeout_s: Optional[float]) -> str:
    stuck = f", or stuck past {hard_timeout_s:.0f} s" if hard_timeout_s else ""
    return (f"the worker processing this video died {crashes} time(s) (killed, out of memory, a crashing "
            f"decoder{stuck}); not retried again")


class VideoGuard:
    """Inside an actor: asks the ledger how often a video already ended a worker, and ends this
    worker when one video runs past ``hard_timeout_s`` (the hang then counts as a crash)."""

    def __init__(self, ledger: Any, max_crashes: int, hard_timeout_s: Optional[float]) -> None:
        self.ledger = ledger
        self.max_crashes = int(max_crashes)
        self.hard_timeout_s = hard_timeout_s
        self._busy: Optional[tuple[str, float]] = None
        if hard_timeout_s:
            threading.Thread(target=self._watch, name="video-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            busy = self._busy
            if busy and time.monotonic() - busy[1] > float(self.hard_timeout_s or 0):
                log.error("video %s still running after %.0f s: ending this worker (it is retried, then "
                          "recorded as an error)", busy[0], self.hard_timeout_s)
                os._exit(WATCHDOG_EXIT_CODE)

    def _earlier_crashes(self, key: str) -> int:
        import ray

        if self.ledger is None:
            return 0
        try:
            return int(ray.get(self.ledger.start.remote(key), timeout=60))
        except Exception as exc:  # the ledger is a safety net: without it the video is simply tried
            log.warning("crash ledger unavailable (%s); processing %s anyway", exc, key)
            return 0

    def run(self, key: str, work: Callable[[], T], give_up: Callable[[str], T]) -> T:
        """``work()``, or ``give_up(message)`` when this video already ended ``max_crashes`` workers."""
        crashes = self._earlier_crashes(key)
        if crashes >= self.max_crashes:
            self._finish(key)
            return give_up(crash_message(crashes, self.hard_timeout_s))
        self._busy = (key, time.monotonic())
        try:
            return work()
        finally:
            self._busy = None
            self._finish(key)

    def _finish(self, key: str) -> None:
        if self.ledger is not None:
            with contextlib.suppress(Exception):
                self.ledger.finish.remote(key)


__all__ = [
    "ClusterInfo",
    "CrashLedger",
    "RayOptions",
    "VideoGuard",
    "cluster_failure",
    "crash_message",
    "dataset_of",
    "iter_rows",
    "make_ledger",
    "pool",
    "ray_session",
    "require_ray",
]


def pack(obj: Any) -> bytes:
    """What one stage hands the next (a manifest row, ``(i, path, ClipResult)``, ``(i, Prediction)``),
    pickled whole, so every field (extra attributes such as ``write_errno``, other faces' tracks, the uint8
    clip) arrives as the local engine has it. Pickle is what Ray itself uses between the processes of a
    cluster: no new trust boundary."""
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(blob: Any) -> Any:
    return pickle.loads(bytes(blob))
