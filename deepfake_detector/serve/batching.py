"""One forward pass for several uploads: the network batched across concurrent requests.

Each worker thread still decodes and crops its own upload (per-thread decoders and face detectors,
exactly as without batching); only the network call is shared. A thread hands its prepared clip to
the :class:`ClipBatcher` and waits. The batcher's own thread takes the first clip waiting, then keeps
collecting for up to the batching window (``--batch-window-ms``), but only while another worker is
still preparing a clip and the batch is not full, so a lone request never waits. It scores the batch
with one ``Detector.score_clips`` call (calibration and threshold applied as ``predict_one`` applies
them) and hands every thread its own ``Prediction``. One network call runs at a time; clips that
arrive meanwhile form the next batch, so under load batches grow by themselves.

Why: on a GPU a forward pass over 8 clips costs little more than over one, so N concurrent uploads
need one pass instead of N. On a CPU a pass costs about the same per clip either way (see
docs/serve.md for the measurements); the default is off.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
from typing import Any, Callable, Optional

log = logging.getLogger("deepfake_detector.serve.app")


@dataclasses.dataclass
class _Item:
    """A prepared clip waiting for its score, and the event its worker thread waits on."""

    path: str
    clip: Any
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: Optional[BaseException] = None

    def finish(self, result: Any = None, error: Optional[BaseException] = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class BatcherClosed(RuntimeError):
    """The server is stopping: a clip still waiting for a batch gets no score."""


def supports_batching(detector: Any) -> bool:
    """Whether ``detector`` can score clips prepared elsewhere (the real ``Detector``; not a stand-in)."""
    return all(callable(getattr(detector, name, None)) for name in ("score_clips", "clip_config"))


class ClipBatcher:
    """Collects prepared clips from the worker threads and scores each batch in one network call.

    ``detector`` needs ``score_clips([(path, ClipResult), ...]) -> [Prediction, ...]`` and
    ``clip_config()``; ``prepare(path) -> ClipResult`` decodes and crops one video (default: what
    ``predict_one`` does, ``inference.extract_video``). ``on_batch(n)`` is told each batch's size.
    """

    def __init__(self, detector: Any, window_s: float, max_batch: int,
                 prepare: Optional[Callable[[str], Any]] = None,
                 on_batch: Optional[Callable[[int], None]] = None) -> None:
        if prepare is None:
            from ..inference import extract_video

            prepare = functools.partial(extract_video, cfg=detector.clip_config())
        self._score = detector.score_clips
        self._prepare = prepare
        self.window_s = max(0.0, float(window_s))
        self.max_batch = max(1, int(max_batch))
        self._on_batch = on_batch
        self._cond = threading.Condition()
        self._queue: collections.deque[_Item] = collections.deque()
        self._preparing = 0  # worker threads decoding a clip now: the ones worth waiting for
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="deepfake-detector-batcher", daemon=True)
        self._thread.start()

    def predict(self, path: str) -> Any:
        """``predict_one(path)`` with the network call shared: decode here, score in the next batch."""
        with self._cond:
            self._preparing += 1
        try:
            clip = self._prepare(path)
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify_all()  # the batch being collected may stop waiting for this thread
        return self.score(path, clip)

    def score(self, path: str, clip: Any) -> Any:
        """The ``Prediction`` for one prepared clip, scored with the clips of other threads (blocking)."""
        item = _Item(path, clip)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is stopping")
            self._queue.append(item)
            self._cond.notify_all()
        item.done.wait()
        if isinstance(item.error, BatcherClosed):
            raise BatcherClosed(str(item.error))
        if item.error is not None:  # one exception object per thread: they all raise it at once
            raise RuntimeError(f"the batched network call failed: {item.error}") from item.error
        return item.result

    def close(self, timeout: float = 5.0) -> None:
        """Stop: clips still waiting get :class:`BatcherClosed`; a network call under way finishes."""
        with self._cond:
            self._closed = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in waiting:
            item.finish(error=BatcherClosed("the server is stopping"))
        self._thread.join(timeout=timeout)

    # ---- the batcher's thread ---------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> Optional[list[_Item]]:
        """The next batch: the first clip waiting plus those that come within the window (None: closed)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = time.monotonic() + self.window_s
            while len(self._queue) < self.max_batch and self._preparing > 0 and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]

    def _run(self, batch: list[_Item]) -> None:
        """Score ``batch`` in one call; a failure is every item's failure (each request answers 500)."""
        try:
            preds = self._score([(item.path, item.clip) for item in batch])
            if len(preds) != len(batch):
                raise RuntimeError(f"score_clips returned {len(preds)} results for {len(batch)} clips")
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting threads, which report it
            log.warning("a batch of %d clip(s) failed: %s", len(batch), exc)
            for item in batch:
                item.finish(error=exc)
            return
        for item, pred in zip(batch, preds):
            item.finish(result=pred)
        if self._on_batch is not None:
            self._on_batch(len(batch))
