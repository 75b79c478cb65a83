"""Admission control: a bounded number of requests in flight, and the files each one owns.

A request is admitted (or refused) *before* its body is read, and its slot is held until its
inference thread has really finished, so ``workers + queue_size`` bounds memory, disk and model use
even when clients time out or disconnect.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path


class Admission:
    """Counts requests between admission and the end of their inference (thread-safe)."""

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


class _Job:
    """One admitted request: its files and its admission slot, released when nobody needs them.

    Holders are the request handler and, once submitted, the worker thread. Files are removed as
    soon as the handler is done (even on timeout) and again when the last holder lets go, so
    nothing a timed-out worker still writes survives; the slot is freed only when both are done.
    """

    def __init__(self, admission: Admission, private_dir: Path) -> None:
        self.admission = admission
        # a random 0700 folder per request; the file names inside are fixed, never the client's
        self.dir = private_dir / secrets.token_hex(16)
        self.dir.mkdir(mode=0o700)
        self.upload = self.dir / "upload.bin"
        self.explain_dir = self.dir / "explain"
        self._lock = threading.Lock()
        self._holders = 1

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
        if last:
            self.admission.release()
