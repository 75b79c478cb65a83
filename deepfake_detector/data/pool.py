"""A process pool that survives the videos that kill or hang their decoder.

Shared by ``preprocess`` and ``predict``: native decoders (FFmpeg, dlib) can segfault, be OOM-killed
or hang on hostile files. ``imap_resilient`` keeps at most ``2 * workers`` items in flight (bounded
memory however many are queued); when a worker dies or overruns the hard timeout the pool is killed
and rebuilt, the items that were in flight are retried one at a time, and an item that breaks the
pool on its own becomes a per-item failure instead of the end of the run.
"""

from __future__ import annotations

import ast
import concurrent.futures as cf
import contextlib
import functools
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Optional

from ..errors import UserError

log = logging.getLogger(__name__)

MAX_TASKS_PER_CHILD = 200  # a worker process is replaced after this many items (bounds native leaks)
MAX_BREAKS_IN_A_ROW = 3  # pool breaks with no finished item in between: the workers cannot run at all


def _main_alive(pid: int) -> bool:
    """Is process ``pid`` still running (a killed, not yet reaped zombie counts as dead)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True  # no /proc (macOS): the kill(0) answer stands


def _watch_main(pid: int, interval_s: float = 1.0) -> None:
    while True:
        time.sleep(interval_s)
        if not _main_alive(pid):
            os._exit(1)  # the main process was killed (kill -9): never outlive it


def _bootstrap(main_pid: int, initializer: Optional[Callable], initargs: tuple) -> None:
    """Worker start-up: a watchdog thread ends the worker when the main process dies, then the
    caller's initializer. Without it, ``kill -9`` of the main process leaves workers running."""
    threading.Thread(target=_watch_main, args=(main_pid,), daemon=True, name="main-watchdog").start()
    if initializer is not None:
        initializer(*initargs)


# Imported once by the forkserver and inherited by every worker it forks, so a worker starts in
# milliseconds instead of importing the decoders itself. None of these imports torch (a test pins it):
# workers stay free of torch's thread pools and CUDA state.
PRELOAD = ("deepfake_detector.data.preprocess", "deepfake_detector.data.faces", "cv2", "av", "dlib")


def main_reimport_is_safe() -> bool:
    """Whether a worker process may import the user's main script, as forkserver/spawn workers do.

    A script without an ``if __name__ == "__main__":`` guard (the usual first try of the Python API)
    would run again in every worker, start workers of its own and fail with multiprocessing's long
    traceback; such a script is decoded in its own process instead. Notebooks, ``python -c`` and stdin
    have no main file and are safe.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(spec, "origin", None) or getattr(main, "__file__", None)
    return path is None or _has_main_guard(os.path.abspath(path))


@functools.lru_cache(maxsize=8)
def _has_main_guard(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return True  # not a readable Python source (frozen, zipapp...): let multiprocessing decide
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            sides = [node.test.left, *node.test.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            values = {s.value for s in sides if isinstance(s, ast.Constant)}
            if "__name__" in names and "__main__" in values:
                return True
    return False


def _context() -> Any:
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))  # no effect once this process's server runs
        return ctx
    return mp.get_context("spawn")


def warm_up() -> None:
    """Start the worker-forking server now, in the background (it imports ``PRELOAD``), so the first
    pool of this process starts fast. ``predict`` calls it before loading the model: both at once."""
    if _context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    try:
        forkserver.ensure_running()
    except (OSError, RuntimeError) as exc:  # only a head start: the pool reports real start failures
        log.debug("worker server not started early: %s", exc)


def new_pool(workers: int, initializer: Optional[Callable] = None,
             initargs: tuple = ()) -> cf.ProcessPoolExecutor:
    """forkserver/spawn workers start clean (no inherited torch/OpenCV threads or CUDA state)."""
    kwargs: dict = {"max_workers": workers, "mp_context": _context(),
                    "initializer": _bootstrap, "initargs": (os.getpid(), initializer, initargs)}
    if sys.version_info >= (3, 11):
        kwargs["max_tasks_per_child"] = MAX_TASKS_PER_CHILD
    return cf.ProcessPoolExecutor(**kwargs)


def kill_pool(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool whose worker is stuck in native code (uses CPython's private ``_processes``)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(Exception):
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


def _ping() -> int:
    return os.getpid()


def pool_starts(pool: cf.ProcessPoolExecutor, timeout_s: float = 180.0) -> bool:
    """Can this pool run anything at all? (A worker that cannot import the caller's main module would
    otherwise make every item look like a decoder crash.)"""
    try:
        pool.submit(_ping).result(timeout=timeout_s)
        return True
    except (BrokenProcessPool, cf.TimeoutError, OSError):
        return False


IDLE = -1  # the index of imap_resilient's "nothing ready yet" marker


def imap_resilient(
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    workers: int,
    failure: Callable[[Any, str], Any],
    initializer: Optional[Callable] = None,
    initargs: tuple = (),
    hard_timeout: Optional[float] = None,
    idle_marker: bool = False,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, fn(items[index]))`` in completion order, running ``fn`` in worker processes.

    With ``idle_marker`` it also yields ``(IDLE, None)`` once each time it is about to wait with no
    result ready: a consumer that batches results (predict) uses it to work on a partial batch while
    the workers go on, instead of waiting for the batch to fill.

    ``fn`` must be a module-level function that reports bad input in its return value; an exception
    it raises, a crash of its worker, or a run past ``hard_timeout`` seconds becomes
    ``failure(item, message)`` for that item alone. When the workers cannot start at all, items are
    processed in this process instead (with a warning).
    """
    if not items:
        return
    if not main_reimport_is_safe():
        log.info("decoding in this process: the main script has no `if __name__ == '__main__':` guard, so "
                 "worker processes would re-run it (add the guard to decode in parallel)")
        yield from _run_in_process(fn, items, failure, initializer, initargs)
        return
    workers = max(1, min(workers, len(items)))
    pool = new_pool(workers, initializer, initargs)
    if not pool_starts(pool):
        kill_pool(pool)
        log.warning("worker processes could not start; working in this process")
        yield from _run_in_process(fn, items, failure, initializer, initargs)
        return
    run = _PoolRun(pool, fn, items, workers, failure, initializer, initargs, hard_timeout)
    yield from run.results(idle_marker)


def _error_message(exc: BaseException) -> str:
    """The one-line failure text of an exception ``fn`` raised (bounded: it ends up in a CSV cell)."""
    return f"{type(exc).__name__}: {exc}"[:500]


def _run_in_process(fn: Callable[[Any], Any], items: Sequence[Any], failure: Callable[[Any, str], Any],
                    initializer: Optional[Callable], initargs: tuple) -> Iterator[tuple[int, Any]]:
    """The fallback when no worker can start: slower, but the run still finishes."""
    if initializer is not None:
        initializer(*initargs)
    for i, item in enumerate(items):
        try:
            yield i, fn(item)
        except Exception as exc:  # a bug on one item: reported for that item
            yield i, failure(item, _error_message(exc))


class _PoolRun:
    """The state of one ``imap_resilient`` run over a live pool.

    Items wait in ``queue``; ``in_flight`` maps each submitted future to its item index and start
    time. When the pool breaks, the items that were in flight become ``suspects`` and are retried one
    at a time (their futures are kept in ``alone``), so a crash there names the culprit.
    """

    def __init__(self, pool: cf.ProcessPoolExecutor, fn: Callable[[Any], Any], items: Sequence[Any],
                 workers: int, failure: Callable[[Any, str], Any], initializer: Optional[Callable],
                 initargs: tuple, hard_timeout: Optional[float]) -> None:
        self.pool = pool
        self.fn = fn
        self.items = items
        self.workers = workers
        self.failure = failure
        self.initializer = initializer
        self.initargs = initargs
        self.hard_timeout = hard_timeout
        self.queue = deque(range(len(items)))
        self.suspects: deque = deque()  # in flight when the pool broke: retried one at a time
        self.in_flight: dict[cf.Future, tuple[int, float]] = {}
        self.alone: set = set()  # suspects running on their own: a crash there names the culprit
        self.breaks_in_a_row = 0

    def results(self, idle_marker: bool) -> Iterator[tuple[int, Any]]:
        """The main loop: submit, wait, collect, and rebuild the pool whenever it breaks. On any exit
        other than the normal end (an error, or the consumer closing the generator) the pool is
        killed, so no worker outlives the run."""
        idle_sent = False
        try:
            while self.queue or self.suspects or self.in_flight:
                self._submit()
                if idle_marker and not idle_sent and not any(f.done() for f in self.in_flight):
                    idle_sent = True
                    yield IDLE, None
                done, _ = cf.wait(list(self.in_flight), timeout=1.0, return_when=cf.FIRST_COMPLETED)
                if done:
                    idle_sent = False
                # resolved: did any item get its answer (result or named culprit) this round?
                broken, resolved = yield from self._collect(done)
                if not broken and self.hard_timeout is not None:
                    late = yield from self._fail_late(self.hard_timeout)
                    resolved = resolved or late
                    broken = late
                if resolved:
                    self.breaks_in_a_row = 0
                if broken:
                    yield from self._restart(resolved)
        except BaseException:
            for fut in self.in_flight:
                fut.cancel()
            kill_pool(self.pool)
            raise
        self.pool.shutdown(wait=True)

    def _submit(self) -> None:
        """Top up the pool: suspects first, one at a time; queued items only when nobody is isolated."""
        # isolate while a suspect waits OR runs alone (not only while suspects wait)
        isolating = bool(self.suspects) or any(f in self.alone for f in self.in_flight)
        limit = 1 if isolating else 2 * self.workers
        while len(self.in_flight) < limit and (self.suspects or (self.queue and not isolating)):
            if self.suspects:
                i = self.suspects.popleft()
                fut = self.pool.submit(self.fn, self.items[i])
                self.alone.add(fut)
            else:
                i = self.queue.popleft()
                fut = self.pool.submit(self.fn, self.items[i])
            self.in_flight[fut] = (i, time.monotonic())

    def _collect(self, done: set) -> Generator[tuple[int, Any], None, tuple[bool, bool]]:
        """Yield the finished futures' results; returns ``(broken, resolved)`` for this round."""
        broken = False
        resolved = False
        for fut in done:
            i, _ = self.in_flight.pop(fut)
            was_alone = fut in self.alone
            self.alone.discard(fut)
            try:
                res = fut.result()
            except BrokenProcessPool:
                broken = True
                if was_alone:
                    resolved = True
                    msg = "worker process crashed on this video (killed or segfault)"
                    yield i, self.failure(self.items[i], msg)
                else:
                    self.suspects.append(i)
                continue
            except Exception as exc:  # pickling problems and the like: per item
                res = self.failure(self.items[i], _error_message(exc))
            resolved = True
            yield i, res
        return broken, resolved

    def _fail_late(self, hard_timeout: float) -> Generator[tuple[int, Any], None, bool]:
        """Fail the first item running past ``hard_timeout``; returns True when there was one (its
        worker is stuck, so the pool must be rebuilt)."""
        now = time.monotonic()
        late = [f for f, (_, t) in self.in_flight.items() if now - t > hard_timeout]
        if not late:
            return False
        i, _ = self.in_flight.pop(late[0])
        self.alone.discard(late[0])
        yield i, self.failure(self.items[i], f"timed out (worker killed after {hard_timeout:.0f} s)")
        return True

    def _restart(self, resolved: bool) -> Iterator[tuple[int, Any]]:
        """Kill the broken pool and start a new one. Results already in are yielded; the other items
        in flight become suspects. Gives up when the pool keeps breaking with nothing finished."""
        self.breaks_in_a_row += 0 if resolved else 1
        if self.breaks_in_a_row > MAX_BREAKS_IN_A_ROW:
            raise UserError("worker processes keep dying before finishing any video (see the "
                            "messages above); try --workers 0 to work in this process", exit_code=1)
        for fut, (i, _) in list(self.in_flight.items()):
            if fut.done() and fut.exception() is None:
                yield i, fut.result()
            else:
                self.suspects.append(i)
        self.in_flight.clear()
        self.alone.clear()
        kill_pool(self.pool)
        log.warning("a worker process died or hung; restarting the pool (%d item(s) to retry one "
                    "by one)", len(self.suspects))
        self.pool = new_pool(self.workers, self.initializer, self.initargs)
