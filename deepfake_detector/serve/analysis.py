"""From an HTTP request to a verdict body: receive the upload, then analyse it (or reuse a verdict).

Shared by ``POST /api/v1/predict`` (answers when done) and ``POST /api/v1/jobs`` (answers at once,
the analysis runs in a task). The order of the steps is the point:

1. cheap refusals from the headers alone: not ready (503), not multipart (415), too large by
   ``Content-Length`` (413); nothing of the body is read;
2. the body is received into the request's private folder within the *body budget* (bodies and
   bytes in flight; 503 when full) and the body deadlines (408, :mod:`.timeouts`), hashed as it goes;
3. the verdict comes from the result cache or from the same upload's analysis in progress (even
   when every worker is busy: neither needs one), else
4. an *analysis slot* is taken (503 when full; slow uploaders never hold one) and a worker thread
   probes the file by decoding and runs the model, within ``--timeout`` (504).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from starlette.requests import ClientDisconnect, Request

from ..utils import is_within
from .admission import Admission, RequestFiles
from .batching import ClipBatcher
from .jobs import FILE_PLACEHOLDER, cache_key
from .metrics import Metrics
from .responses import ErrorReply, _jsonable, _model_summary, _prediction_dict
from .settings import ServeSettings
from .state import ServerState
from .timeouts import ReceiveTimeout
from .upload import NotAVideo, _stream_upload, multipart_boundary, probe_video, stored_name

log = logging.getLogger("deepfake_detector.serve.app")

_FINAL_STATUSES_WITH_SCORE = ("ok", "no_face")


@dataclasses.dataclass
class Upload:
    """A received upload: its private files (released by whoever ends up owning it) and what we know."""

    files: RequestFiles
    filename: str
    size: int
    sha256: str
    t0: float
    t_uploaded: float
    segments: Any = None  # ?segments=true: the request's ``config.SegmentConfig`` (None: one clip)


def key_for(upload: Upload, explain: bool) -> tuple:
    """The result-cache key of ``upload`` analysed this way (scored by segments answers differently)."""
    seg = upload.segments
    variant = f"segments:{seg.seconds:g}:{seg.max_segments}" if seg is not None else ""
    return cache_key(upload.sha256, explain, upload.filename, variant)


def retry_after(settings: ServeSettings) -> dict:
    return {"Retry-After": str(settings.retry_after_s)}


def ensure_ready(state: ServerState) -> None:
    """503 + Retry-After while the model is not loaded (starting or stopping)."""
    if not state.is_ready:
        raise ErrorReply(503, "the model is not loaded (the server is starting or stopping)",
                         retry_after(state.settings), reason="not_ready")


def _busy(state: ServerState) -> ErrorReply:
    return ErrorReply(503, "the server is busy (queue full); retry later", retry_after(state.settings),
                      reason="busy")


async def receive(state: ServerState, request: Request) -> Upload:
    """Steps 1 and 2: refuse from the headers, else stream the body to a private file within the budgets."""
    t0 = time.perf_counter()
    ensure_ready(state)
    settings = state.settings
    assert state.admission is not None and state.bodies is not None and state.private_dir is not None
    boundary = multipart_boundary(request.headers, settings)
    length = request.headers.get("content-length")
    reservation = state.bodies.open(int(length) if length and length.isdigit() else None)
    if reservation is None:
        raise ErrorReply(503, "too many uploads are being received right now; retry later",
                         retry_after(settings), reason="body_budget")
    try:
        files = _new_files(state)
        try:
            got = await _receive_body(request, files, boundary, settings, reservation)
            if got["filename"]:
                _rename_upload(files, got["filename"])
        except BaseException:
            files.drop()
            raise
    finally:
        reservation.release()
    return Upload(files, got["filename"], got["size"], got["sha256"], t0, time.perf_counter())


def _new_files(state: ServerState) -> RequestFiles:
    assert state.private_dir is not None
    try:
        return RequestFiles(state.private_dir)
    except OSError:
        log.exception("cannot create an upload folder in %s", state.private_dir)
        raise ErrorReply(500, "the server cannot store uploads right now", reason="disk") from None


async def _receive_body(request: Request, files: RequestFiles, boundary: bytes, settings: ServeSettings,
                        reservation: Any) -> dict:
    """Stream the upload within the body deadlines; refuse with 400/413 (bad body), 408, 503 or 507."""
    try:
        return await asyncio.wait_for(_stream_upload(request, files, boundary, settings, reservation),
                                      timeout=settings.upload_timeout_s)
    except (asyncio.TimeoutError, ReceiveTimeout) as exc:
        detail = str(exc) or f"the upload took longer than {settings.upload_timeout_s:g} s"
        raise ErrorReply(408, detail, {"Connection": "close"}, reason="upload_timeout") from None
    except ClientDisconnect:
        log.info("client disconnected during upload")
        raise ErrorReply(400, "client disconnected", reason="disconnected") from None
    except OSError as exc:  # disk full, quota, read-only temp dir
        log.error("cannot store an upload: %s", exc)
        raise ErrorReply(507, "the server has no room to store this upload right now",
                         reason="disk") from None


def _rename_upload(files: RequestFiles, filename: str) -> None:
    """Store the file under :func:`upload.stored_name`: the heat map then shows the client's name."""
    name = stored_name(filename)
    if name != files.upload.name:
        renamed = files.upload.with_name(name)
        try:
            os.replace(files.upload, renamed)
        except OSError:  # a name this file system refuses: keep ours
            return
        files.upload = renamed


# --------------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------------


async def analyse(state: ServerState, upload: Upload, explain: bool,
                  on_start: Optional[Callable[[], None]] = None) -> dict:
    """Steps 3 and 4: the verdict body, from the cache, from the same upload in progress, or analysed now."""
    results, metrics = state.results, state.metrics
    assert results is not None and metrics is not None
    key = key_for(upload, explain)
    cached = results.get(key)
    if cached is not None:
        metrics.cache.labels(outcome="hit").inc()
        upload.files.cleanup()
        return render(cached, upload, cached=True)
    pending = results.pending(key)
    if pending is not None:
        metrics.cache.labels(outcome="shared").inc()
        upload.files.cleanup()  # not needed while waiting: a waiter holds a connection, not disk
        return render(await _wait_for(state, pending, upload), upload, cached=True)
    metrics.cache.labels(outcome="miss").inc()
    future = results.begin(key)
    try:
        body = await _analyse_now(state, upload, explain, on_start)
    except ErrorReply as exc:
        results.end(key, future, error=exc)
        raise
    except BaseException:
        results.end(key, future, error=ErrorReply(500, "the analysis failed"))
        raise
    results.end(key, future, body=body, keep=body.get("status") != "error")
    return render(body, upload, cached=False)


async def _wait_for(state: ServerState, pending: asyncio.Future, upload: Upload) -> dict:
    """The body of the same upload's analysis in progress, within this request's own time limit."""
    timeout = state.settings.request_timeout_s
    remaining = max(0.001, timeout - (time.perf_counter() - upload.t_uploaded))
    try:
        return await asyncio.wait_for(asyncio.shield(pending), timeout=remaining)
    except asyncio.TimeoutError:
        raise ErrorReply(504, f"the analysis took longer than the limit of {timeout:g} s; try a shorter "
                              "video or retry later", reason="timeout") from None


async def _analyse_now(state: ServerState, upload: Upload, explain: bool,
                       on_start: Optional[Callable[[], None]]) -> dict:
    """Take an analysis slot (503 when full), run probe + model, shape the (cacheable) verdict body."""
    assert state.admission is not None
    files = upload.files
    if files.admission is None and not files.take_slot(state.admission):
        raise _busy(state)
    explain_dir: Optional[Path] = None
    if explain:
        files.explain_dir.mkdir(mode=0o700, exist_ok=True)
        explain_dir = files.explain_dir
    result = await _run_inference(state, upload, explain_dir, on_start)
    if "not_video" in result:
        raise ErrorReply(415, f"not a video: {result['not_video']}", reason="not_video")
    pred = _jsonable(_prediction_dict(result["pred"]))
    body = _verdict_body(state, files, pred, result)
    if explain:
        body["explanation_png"] = _read_explanation(_main_explanation(pred), explain_dir, state.settings)
    for face in body["faces"]:  # several faces: each face's own strip, inline; never a server path
        path = face.pop("explanation", None)
        if explain:
            face["explanation_png"] = _read_explanation(path, explain_dir, state.settings)
    return body


def _main_explanation(pred: dict) -> Any:
    """The main face's heat map: the Prediction's one PNG, or (faces listed) track 0's."""
    if not isinstance(pred.get("explanation"), list):
        return pred.get("explanation")
    return next((f.get("explanation") for f in pred.get("faces") or [] if f.get("track") == 0), None)


def _predict(detector: Any, batcher: Optional[ClipBatcher], path: str, explain_dir: Optional[str],
             segments: Any = None) -> Any:
    """The detector's Prediction; with a batcher the network call is shared with other requests' clips.

    Heat maps need the model's gradients for this one clip, so an explained upload runs on its own; an
    upload scored by segments too (its windows are batched among themselves).
    """
    if segments is not None:
        return detector.predict_one(path, explain_dir=explain_dir, segments=segments)
    if batcher is None or explain_dir is not None:
        return detector.predict_one(path, explain_dir=explain_dir)
    return batcher.predict(path)


def _infer(detector: Any, admission: Admission, files: RequestFiles, explain_dir: Optional[Path],
           settings: ServeSettings, t_uploaded: float, metrics: Metrics,
           on_start: Optional[Callable[[], None]], batcher: Optional[ClipBatcher] = None,
           segments: Any = None) -> dict:
    """In a worker thread: check the content by decoding, then run the model; with the step times."""
    t_start = time.perf_counter()
    admission.started()
    metrics.queue_wait.observe(t_start - t_uploaded)
    if on_start is not None:
        on_start()
    try:
        try:
            probe = probe_video(files.upload, settings.probe_max_packets, settings.max_video_side)
        except NotAVideo as exc:
            return {"not_video": str(exc), "queued": t_start - t_uploaded}
        t_probed = time.perf_counter()
        out = str(explain_dir) if explain_dir else None
        pred = _predict(detector, batcher, str(files.upload), out, segments)
        done = time.perf_counter()
        metrics.analysis.observe(done - t_start)
        return {"pred": pred, "probe": probe, "queued": t_start - t_uploaded,
                "probe_s": t_probed - t_start, "predict_s": done - t_probed, "upload": str(files.upload),
                "dir": str(files.dir)}
    finally:
        admission.finished()


async def _run_inference(state: ServerState, upload: Upload, explain_dir: Optional[Path],
                         on_start: Optional[Callable[[], None]]) -> dict:
    """Queue :func:`_infer` and wait within the request time limit (503 stopping, 504 late, 500 failed).

    The worker holds the files too, so a timed-out analysis keeps its slot until it really ends.
    """
    settings, files = state.settings, upload.files
    assert state.admission is not None and state.executor is not None and state.metrics is not None
    work = functools.partial(_infer, state.detector, state.admission, files, explain_dir, settings,
                             upload.t_uploaded, state.metrics, on_start, state.batcher, upload.segments)
    files.hold()
    try:
        future = state.executor.submit(work)
    except RuntimeError:  # executor shut down
        files.drop(cleanup=False)
        raise ErrorReply(503, "the server is shutting down", retry_after(settings),
                         reason="stopping") from None
    future.add_done_callback(lambda _f: files.drop(cleanup=False))
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(_retrieved)  # a timed-out analysis may still fail later: no stray warning
    remaining = max(0.001, settings.request_timeout_s - (time.perf_counter() - upload.t_uploaded))
    try:
        return await asyncio.wait_for(asyncio.shield(wrapped), timeout=remaining)
    except asyncio.TimeoutError:
        future.cancel()
        log.warning("analysis timed out after %.1f s", time.perf_counter() - upload.t0)
        raise ErrorReply(504, f"the analysis took longer than the limit of {settings.request_timeout_s:g} s; "
                              "try a shorter video or retry later", reason="timeout") from None
    except Exception:
        log.exception("the detector failed")
        raise ErrorReply(500, "the detector failed on this video (see the server log)",
                         reason="failed") from None


def _retrieved(future: asyncio.Future) -> None:
    """Mark an analysis outcome as seen (asyncio would otherwise log "exception never retrieved")."""
    if not future.cancelled() and future.exception() is not None:
        log.debug("an analysis nobody waited for anymore ended with %s", type(future.exception()).__name__)


def _analysis_timing(pred: dict, result: dict) -> dict:
    """Seconds per analysis step, plus the detector's own decode/infer timings when it reports them."""
    timing = {"queue": round(result["queued"], 4), "probe": round(result["probe_s"], 4),
              "predict": round(result["predict_s"], 4)}
    for key, value in pred.items():
        if key.endswith("seconds") and isinstance(value, (int, float)) and key != "seconds":
            timing[key.replace("_seconds", "")] = round(float(value), 4)
    if isinstance(pred.get("seconds"), (int, float)):
        timing["detector"] = round(float(pred["seconds"]), 4)
    return timing


def _verdict_body(state: ServerState, files: RequestFiles, pred: dict, result: dict) -> dict[str, Any]:
    """The cacheable part of the 200 body: a label and score only when scored, no server paths or names."""
    status = str(pred.get("status") or "")
    threshold = pred.get("threshold")
    if threshold is None:
        threshold = state.info.get("threshold")
    scored = status in _FINAL_STATUSES_WITH_SCORE and pred.get("p_fake") is not None
    # the server's own paths are nobody's business; the client's name is filled in per request
    error = str(pred.get("error") or "").replace(result["upload"], FILE_PLACEHOLDER)
    error = error.replace(result["dir"], "").replace(str(state.private_dir), "")
    return {
        "label": (pred.get("label") or "") if scored else "",
        "p_fake": pred.get("p_fake") if scored else None,
        "threshold": threshold,
        "calibrated": state.calibrated,
        "status": status,
        "error": error,
        "frames": pred.get("frames"),
        "face_ratio": pred.get("face_ratio"),
        "faces": (pred.get("faces") or []) if scored else [],
        "segments": (pred.get("segments") or []) if scored else [],
        "segment_seconds": pred.get("segment_seconds") if scored else None,
        "video": result["probe"],
        "model": _model_summary(state.info),
        "timing": _analysis_timing(pred, result),
    }


def render(body: dict, upload: Upload, cached: bool) -> dict:
    """The verdict body as sent for ``upload``: its file name, size and times, and whether it was reused."""
    timing = {"seconds": round(time.perf_counter() - upload.t0, 4),
              "upload": round(upload.t_uploaded - upload.t0, 4)}
    if not cached:
        timing.update(body.get("timing") or {})
    out = {"filename": upload.filename, "size": upload.size, **body, "timing": timing, "cached": cached}
    out["error"] = str(body.get("error") or "").replace(FILE_PLACEHOLDER, upload.filename or "the upload")
    return out


def _read_explanation(path: Any, explain_dir: Optional[Path], settings: ServeSettings) -> Optional[str]:
    """The heat-map PNG as base64, only if it is a PNG of sane size inside this request's folder."""
    if not path or explain_dir is None:
        return None
    p = Path(str(path))
    if not is_within(p, explain_dir) or not p.is_file():
        log.warning("explanation %s is not inside the request's folder; not returned", p)
        return None
    if p.stat().st_size > settings.max_explain_mb * 1024 * 1024:
        log.warning("explanation %s is too large to return inline", p)
        return None
    data = p.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return base64.b64encode(data).decode("ascii")
