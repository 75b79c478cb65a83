"""Admission control: what a client can hold, and the files each request owns.

Two separate budgets, taken one after the other, so a slow client can never hold what a fast one needs:

- :class:`BodyBudget`: request bodies being *received* (a count and a total of bytes, reserved from
  ``Content-Length`` up front or as chunks arrive). A client that trickles its body holds only this.
- :class:`Admission`: *analysis* slots (``workers`` running + ``queue_size`` waiting), taken only once
  the whole body is on disk, and held until the inference thread has really finished, so
  ``workers + queue_size`` bounds disk and model use even when clients time out or disconnect.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path
from typing import Optional


class Admission:
    """Counts analyses between admission and the end of their inference (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running = 0

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def started(self) -> None:
        with self._lock:
            self._running += 1

    def finished(self) -> None:
        with self._lock:
            self._running = max(0, self._running - 1)

    def snapshot(self) -> dict:
        with self._lock:
            return {"in_flight": self._in_flight, "running": self._running, "capacity": self.capacity}


class BodyBudget:
    """Bodies being received at once, and the bytes they may take, before any analysis slot is taken."""

    def __init__(self, max_bodies: int, max_bytes: int) -> None:
        self.max_bodies = int(max_bodies)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._bodies = 0
        self._bytes = 0

    def open(self, announced: Optional[int]) -> Optional[BodyReservation]:
        """A reservation for one body (``announced`` bytes up front when known), or None when full."""
        want = max(0, int(announced or 0))
        with self._lock:
            if self._bodies >= self.max_bodies or self._bytes + want > self.max_bytes:
                return None
            self._bodies += 1
            self._bytes += want
        return BodyReservation(self, want)

    def _grow(self, n: int) -> bool:
        with self._lock:
            if self._bytes + n > self.max_bytes:
                return False
            self._bytes += n
            return True

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._bodies = max(0, self._bodies - 1)
            self._bytes = max(0, self._bytes - nbytes)

    def snapshot(self) -> dict:
        with self._lock:
            return {"bodies": self._bodies, "bytes": self._bytes, "max_bodies": self.max_bodies,
                    "max_bytes": self.max_bytes}


class BodyReservation:
    """One body's share of the :class:`BodyBudget`; grows with what really arrives, released once."""

    def __init__(self, budget: BodyBudget, reserved: int) -> None:
        self._budget = budget
        self.reserved = reserved
        self._released = False

    def cover(self, received: int) -> bool:
        """Make the reservation cover ``received`` bytes; False when the budget has no room for them."""
        extra = received - self.reserved
        if extra <= 0 or self._released:
            return True
        if not self._budget._grow(extra):
            return False
        self.reserved = received
        return True

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget._release(self.reserved)


class RequestFiles:
    """One request's private folder and, once taken, its analysis slot; released when nobody needs them.

    Holders are the request handler (or a job's task) and, once submitted, the worker thread. Files
    are removed as soon as the handler is done (even on timeout) and again when the last holder lets
    go, so nothing a timed-out worker still writes survives; the slot is freed only when both are done.
    """

    def __init__(self, private_dir: Path) -> None:
        # a random 0700 folder per request; the stored file's name is ours (see upload.stored_name)
        self.dir = private_dir / secrets.token_hex(16)
        self.dir.mkdir(mode=0o700)
        self.upload = self.dir / "upload.bin"
        self.explain_dir = self.dir / "explain"
        self.admission: Optional[Admission] = None
        self._lock = threading.Lock()
        self._holders = 1

    def take_slot(self, admission: Admission) -> bool:
        """Take an analysis slot for these files (released with the last hold); False when full."""
        if not admission.try_acquire():
            return False
        self.admission = admission
        return True

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def drop(self, cleanup: bool = True) -> None:
        """Release one hold; files go now when ``cleanup`` (the handler is done), else with the last hold."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if cleanup or last:
            self.cleanup()
        if last and self.admission is not None:
            self.admission.release()
            self.admission = None
