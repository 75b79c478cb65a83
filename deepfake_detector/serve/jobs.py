"""Asynchronous jobs and the result cache: a video is analysed once, however often it is sent.

- :class:`ResultCache`: verdicts by the upload's SHA-256 (computed while the body streams), bounded
  in entries and bytes, each kept ``job_ttl_s``. An analysis in progress is shared too: a second
  upload of the same bytes waits for the first one's result instead of taking a worker. Heat maps
  carry the file name they were rendered with, so results with a heat map are keyed by the name as
  well (one client's file name is never shown to another).
- :class:`JobStore`: ``POST /api/v1/jobs`` records, bounded in number (``max_jobs``) and in the
  memory their results take (``jobs_mb``: the oldest finished jobs are forgotten first), and
  forgotten ``job_ttl_s`` after they finish. Job ids are 128 random bits (``secrets``): knowing one
  id says nothing about another client's.

Both live on the event loop thread (handlers and the jobs' tasks), so they need no locks.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .responses import ErrorReply

JOB_STATES = ("queued", "processing", "done", "error")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")

#: Stands for the client's file name in a cached verdict's ``error`` text (filled in per request).
FILE_PLACEHOLDER = "\x00file\x00"


def cache_key(sha256: str, explain: bool, filename: str, variant: str = "") -> tuple:
    """The cache key of an upload: its bytes, plus its name when a heat map (which shows it) is asked, plus
    ``variant`` for analyses that answer differently (scored by segments: their width and bound)."""
    key = (sha256, True, filename) if explain else (sha256, False, "")
    return key + (variant,) if variant else key


class ResultCache:
    """Verdict bodies by :func:`cache_key`: LRU within ``max_entries`` and ``max_bytes``, kept ``ttl_s``."""

    def __init__(self, max_entries: int, max_bytes: int, ttl_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self._items: OrderedDict[tuple, tuple[float, int, dict]] = OrderedDict()  # (expiry, size, body)
        self._bytes = 0
        self._pending: dict[tuple, asyncio.Future] = {}

    def __len__(self) -> int:
        return len(self._items)

    @property
    def enabled(self) -> bool:
        """False with ``cache_entries=0``: every upload is analysed, none shares another's analysis."""
        return self.max_entries > 0

    def get(self, key: tuple) -> Optional[dict]:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self.clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item[2]

    def put(self, key: tuple, body: dict) -> None:
        """Keep ``body`` (a JSON-safe verdict); too large or a zero-sized cache: not kept."""
        if self.max_entries <= 0:
            return
        size = len(json.dumps(body, separators=(",", ":")))
        if size > self.max_bytes:
            return
        if key in self._items:
            self._drop(key)
        self._items[key] = (self.clock() + self.ttl_s, size, body)
        self._bytes += size
        while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple) -> None:
        _expiry, size, _body = self._items.pop(key)
        self._bytes -= size

    def pending(self, key: tuple) -> Optional[asyncio.Future]:
        """The analysis of the same upload now in progress, if any (await it for its body)."""
        return self._pending.get(key)

    def begin(self, key: tuple) -> asyncio.Future:
        """Announce an analysis of ``key``; later uploads of the same bytes wait for it."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        if self.enabled:
            self._pending[key] = future
        return future

    def end(self, key: tuple, future: asyncio.Future, body: Optional[dict] = None,
            error: Optional[BaseException] = None, keep: bool = False) -> None:
        """Finish the announced analysis: its waiters get ``body`` (or ``error``); kept when ``keep``."""
        if self._pending.get(key) is future:
            del self._pending[key]
        if keep and body is not None:
            self.put(key, body)
        if not future.done():
            if body is not None:
                future.set_result(body)
            else:
                future.set_exception(error or ErrorReply(500, "the analysis failed"))


@dataclass
class Job:
    """One asynchronous analysis; ``to_dict`` is what ``GET /api/v1/jobs/{id}`` answers."""

    id: str
    filename: str
    size: int
    explain: bool
    state: str = "queued"
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    finished_at: Optional[float] = None  # monotonic, for expiry
    result: Optional[dict] = None
    error: Optional[dict] = None  # {"status": http status, "detail": one line}
    task: Any = None
    nbytes: int = 0  # size of the stored result (JSON)

    def set_state(self, state: str) -> None:
        self.state = state
        self.updated = time.time()

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "state": self.state, "filename": self.filename,
                               "size": self.size, "explain": self.explain, "created": round(self.created, 3),
                               "updated": round(self.updated, 3)}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class JobStore:
    """At most ``max_jobs`` jobs and ``max_bytes`` of results; finished ones go ``ttl_s`` after they end.

    Room is made by forgetting the oldest finished jobs; live (queued, processing) ones are never dropped.
    """

    def __init__(self, max_jobs: int, ttl_s: float, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_jobs = int(max_jobs)
        self.ttl_s = float(ttl_s)
        self.max_bytes = int(max_bytes)
        self.clock = clock
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def create(self, filename: str, size: int, explain: bool) -> Optional[Job]:
        """A new queued job with a random 128-bit id, or None when the store is full of live jobs."""
        self.expire()
        if len(self._jobs) >= self.max_jobs and not self._forget_oldest_finished():
            return None
        job = Job(id=secrets.token_hex(16), filename=filename, size=size, explain=explain)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Optional[Job]:
        if not _JOB_ID.match(job_id or ""):
            return None
        self.expire()
        return self._jobs.get(job_id)

    def _forget(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._bytes -= job.nbytes

    def _forget_oldest_finished(self, keep: Optional[Job] = None) -> bool:
        oldest = next((j for j in self._jobs.values() if j.finished_at is not None and j is not keep), None)
        if oldest is None:
            return False
        self._forget(oldest.id)
        return True

    def finish(self, job: Job, result: Optional[dict] = None, error: Optional[ErrorReply] = None) -> None:
        """Record the outcome; older finished jobs are forgotten while the results exceed ``max_bytes``."""
        job.result = result
        if error is not None:
            job.error = {"status": error.status, "detail": error.detail}
        job.set_state("done" if error is None else "error")
        job.finished_at = self.clock()
        if job.id in self._jobs:
            job.nbytes = len(json.dumps(result, separators=(",", ":"))) if result is not None else 0
            self._bytes += job.nbytes
        while self._bytes > self.max_bytes and self._forget_oldest_finished(keep=job):
            pass

    def expire(self) -> None:
        now = self.clock()
        for job_id in [j.id for j in self._jobs.values()
                       if j.finished_at is not None and now - j.finished_at >= self.ttl_s]:
            self._forget(job_id)

    def counts(self) -> dict:
        out = dict.fromkeys(JOB_STATES, 0)
        for job in self._jobs.values():
            out[job.state] = out.get(job.state, 0) + 1
        return out

    def cancel_all(self) -> None:
        """Stop every job's task (server shutdown); their files are removed by the tasks' cleanup."""
        for job in self._jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
