"""The route handlers: pages, /healthz, /metrics, /api/v1/model, /api/v1/predict and /api/v1/jobs.

Each handler gets the :class:`ServerState` injected (``Depends(server_state)``), so none hides state
in a closure. The upload handlers are thin: :mod:`.analysis` receives the upload and produces the
verdict in named steps; a step that refuses raises :class:`ErrorReply`, which the handler turns into
the answer (and counts in ``uploads_rejected_total``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, Response

from .. import __version__
from ..config import SegmentConfig
from . import analysis
from .jobs import Job
from .responses import ErrorReply, _error, _jsonable, _model_summary
from .schemas import Job as JobBody
from .schemas import Verdict, error
from .security import check_bearer
from .settings import ServeSettings
from .state import ServerState

# the server's one logger name, as before it was split into modules
log = logging.getLogger("deepfake_detector.serve.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"

_NOT_LOADED = "The model is not loaded (the server is starting or stopping); see Retry-After"

_PREDICT_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "the video"}},
        }}},
    }
}

_UPLOAD_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: error("Missing `file` field, malformed or empty upload, or an invalid parameter value (such as "
               "`explain=maybe`)"),
    401: error("Missing or wrong bearer token"),
    408: error("The upload was too slow (stalled, below the minimum rate, or over the upload time limit)"),
    413: error("The file is larger than the upload limit"),
    415: error("Not multipart, or the file is not a decodable video"),
    503: error("Queue full, too many uploads being received, or model not loaded (see Retry-After)"),
    507: error("The server has no room to store the upload right now"),
}
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The video was processed; its `status` says how (a verdict, or why none)",
          "model": Verdict},
    **_UPLOAD_REFUSALS,
    500: error("The detector failed on this video, or uploads cannot be stored (see the server log)"),
    504: error("The analysis took longer than the request time limit"),
}
_JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "The job was created; poll `GET /api/v1/jobs/{id}` (also in `Location`)",
          "model": JobBody},
    **_UPLOAD_REFUSALS,
    500: error("Uploads cannot be stored right now (see the server log)"),
}

router = APIRouter()


async def server_state(request: Request) -> ServerState:
    """The app's shared state (``app.state.serve``), injected into each handler that needs it."""
    return request.app.state.serve


def require_token(request: Request, state: ServerState = Depends(server_state)) -> None:
    """Bearer-token check (constant-time); a no-op when no token is configured."""
    if state.settings.token is None:
        return
    check_bearer(request.headers.get("authorization", ""), state.settings.token)


def _retry_after(settings: ServeSettings) -> dict:
    return {"Retry-After": str(settings.retry_after_s)}


def _ready(state: ServerState) -> None:
    if not state.is_ready:
        raise HTTPException(503, "the model is not loaded (the server is starting or stopping)",
                            headers=_retry_after(state.settings))


def _refused(state: ServerState, exc: ErrorReply) -> JSONResponse:
    """The answer for a refused upload, counted by reason."""
    if state.metrics is not None:
        state.metrics.reject(exc.reason)
    return exc.response()


# --------------------------------------------------------------------------------------------------
# Pages and status
# --------------------------------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
async def api_docs() -> FileResponse:
    """The API reference, rendered from /openapi.json in the browser with no external resources."""
    return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})


@router.get("/healthz", summary="Liveness and readiness", responses={
    200: {"description": "The model is loaded and requests are accepted"},
    503: error(_NOT_LOADED),
})
async def healthz(state: ServerState = Depends(server_state)) -> JSONResponse:
    """200 when the model is loaded and requests are accepted; 503 otherwise. No authentication.

    Never waits on an analysis: it only reads counters, so it answers while every worker is busy.
    """
    settings = state.settings
    if not state.is_ready:
        return _error(503, "the model is not loaded", _retry_after(settings))
    assert state.admission is not None and state.bodies is not None and state.jobs is not None
    return JSONResponse({
        "status": "ok",
        "version": __version__,
        "uptime_s": round(time.time() - state.started, 3),
        "queue": state.admission.snapshot(),
        "uploads": state.bodies.snapshot(),
        "jobs": state.jobs.counts(),
        "limits": settings.public_dict(),
    })


@router.get("/metrics", summary="Prometheus metrics", dependencies=[Depends(require_token)],
            response_class=Response, responses={
                200: {"description": "Metrics in Prometheus text format", "content": {"text/plain": {}}},
                401: error("Missing or wrong bearer token (when the server has one)")})
async def metrics(state: ServerState = Depends(server_state)) -> Response:
    """Requests, latency, analysis time, queue depth, bodies in flight, rejected uploads, model info."""
    assert state.metrics is not None
    data, content_type = state.metrics.exposition()
    return Response(data, media_type=content_type, headers={"Cache-Control": "no-store"})


@router.get("/api/v1/model", summary="The loaded checkpoint", dependencies=[Depends(require_token)],
            responses={200: {"description": "The loaded model and the server's limits"},
                       401: error("Missing or wrong bearer token"),
                       503: error(_NOT_LOADED)})
async def model_info(state: ServerState = Depends(server_state)) -> JSONResponse:
    """Name, checkpoint sha256, config, metrics and threshold of the loaded model, plus server limits.

    File-system paths are reduced to base names (the server's layout is nobody's business).
    """
    _ready(state)
    body = dict(state.info)
    body.setdefault("model", _model_summary(state.info))
    body["calibrated"] = state.calibrated
    body["server"] = {**state.settings.public_dict(), **_jsonable(state.settings.extra)}
    return JSONResponse(body)


# --------------------------------------------------------------------------------------------------
# Predict and jobs
# --------------------------------------------------------------------------------------------------

_EXPLAIN = Query(False, description="also return the heat-map strip as base64 PNG")
_SEGMENTS = Query(False, description="long videos: score consecutive time windows, each sampled like a whole "
                                     "clip; the verdict is the highest window's, `segments` lists them all")
_SEGMENT_SECONDS = Query(None, gt=0, le=3600, description="with `segments=true`: window width in seconds "
                                                          "(default 10; wider when a video would need more "
                                                          "than 64 windows)")


def _segment_request(segments: bool, segment_seconds: Optional[float]) -> Optional[SegmentConfig]:
    """The upload's segment settings from the query (None: one clip for the whole video)."""
    if not segments:
        if segment_seconds is not None:
            raise ErrorReply(400, "segment_seconds needs segments=true", reason="bad_parameter")
        return None
    return SegmentConfig() if segment_seconds is None else SegmentConfig(seconds=segment_seconds)


@router.post("/api/v1/predict", summary="Screen one video", dependencies=[Depends(require_token)],
             openapi_extra=_PREDICT_REQUEST_BODY, responses=_PREDICT_RESPONSES)
async def predict(request: Request, explain: bool = _EXPLAIN, segments: bool = _SEGMENTS,
                  segment_seconds: Optional[float] = _SEGMENT_SECONDS,
                  state: ServerState = Depends(server_state)) -> JSONResponse:
    """Upload a video as multipart field `file`; get the verdict as JSON.

    `status` says what happened to the video (`ok`, `no_face` = no face found and the centre of the
    frame was scored, `unreadable`, ...); `label` and `p_fake` are empty when it could not be scored.
    `cached` is true when the same bytes were analysed before (the verdict is reused, not recomputed).
    With `segments=true` the video is scored window by window (`segments`: each window's start, end and
    p_fake; the verdict is the highest window's).
    """
    try:
        seg = _segment_request(segments, segment_seconds)
        upload = await analysis.receive(state, request)
    except ErrorReply as exc:
        return _refused(state, exc)
    upload.segments = seg
    try:
        return JSONResponse(await analysis.analyse(state, upload, explain))
    except ErrorReply as exc:
        return _refused(state, exc)
    finally:
        upload.files.drop()


@router.post("/api/v1/jobs", summary="Screen one video asynchronously", status_code=202,
             dependencies=[Depends(require_token)], openapi_extra=_PREDICT_REQUEST_BODY,
             responses=_JOB_RESPONSES)
async def create_job(request: Request, explain: bool = _EXPLAIN, segments: bool = _SEGMENTS,
                     segment_seconds: Optional[float] = _SEGMENT_SECONDS,
                     state: ServerState = Depends(server_state)) -> JSONResponse:
    """Upload a video as for `/api/v1/predict`; get a job id at once (202) and poll it.

    The job's `state` goes `queued` -> `processing` -> `done` (with `result`, the body
    `/api/v1/predict` would have answered) or `error` (with `error.status` and `error.detail`). A video
    analysed before is `done` at once. Finished jobs are kept for the server's job time-to-live.
    """
    try:
        seg = _segment_request(segments, segment_seconds)
        upload = await analysis.receive(state, request)
    except ErrorReply as exc:
        return _refused(state, exc)
    upload.segments = seg
    try:
        job = _start_job(state, upload, explain)
    except ErrorReply as exc:
        upload.files.drop()
        return _refused(state, exc)
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/v1/jobs/{job.id}"})


def _start_job(state: ServerState, upload: analysis.Upload, explain: bool) -> Job:
    """A job for ``upload``: done at once from the cache, else analysed by a task that owns the files."""
    assert state.jobs is not None and state.results is not None and state.admission is not None
    key = analysis.key_for(upload, explain)
    cached = state.results.get(key)
    shared = cached is None and state.results.pending(key) is not None
    if cached is None and not shared and not upload.files.take_slot(state.admission):
        raise analysis._busy(state)
    job = state.jobs.create(upload.filename, upload.size, explain)
    if job is None:
        raise ErrorReply(503, "too many jobs are kept right now; retry later", _retry_after(state.settings),
                         reason="jobs_full")
    if cached is not None:
        assert state.metrics is not None
        state.metrics.cache.labels(outcome="hit").inc()
        state.jobs.finish(job, result=analysis.render(cached, upload, cached=True))
        upload.files.drop()
        return job
    if shared:
        job.set_state("processing")  # someone is analysing the same bytes right now
    job.task = asyncio.get_running_loop().create_task(_run_job(state, job, upload, explain))
    return job


async def _run_job(state: ServerState, job: Job, upload: analysis.Upload, explain: bool) -> None:
    """The job's analysis; its outcome is stored in the job, its files removed at the end."""
    assert state.jobs is not None
    loop = asyncio.get_running_loop()

    def started() -> None:  # in the worker thread
        loop.call_soon_threadsafe(job.set_state, "processing")

    try:
        state.jobs.finish(job, result=await analysis.analyse(state, upload, explain, on_start=started))
    except ErrorReply as exc:
        if state.metrics is not None:
            state.metrics.reject(exc.reason)
        state.jobs.finish(job, error=exc)
    except asyncio.CancelledError:
        state.jobs.finish(job, error=ErrorReply(503, "the server stopped before the analysis ended"))
        raise
    except Exception:
        log.exception("job failed")
        state.jobs.finish(job, error=ErrorReply(500, "internal server error"))
    finally:
        upload.files.drop()


@router.get("/api/v1/jobs/{job_id}", summary="A job's state and result",
            dependencies=[Depends(require_token)],
            responses={200: {"description": "The job: `state`, and `result` or `error` once finished",
                             "model": JobBody},
                       401: error("Missing or wrong bearer token"),
                       404: error("No such job (never created, or expired)")})
async def get_job(job_id: str = PathParam(..., description="the id from `POST /api/v1/jobs`", max_length=64),
                  state: ServerState = Depends(server_state)) -> JSONResponse:
    """The job's state (`queued`, `processing`, `done`, `error`) and, once finished, its result or error."""
    job = state.jobs.get(job_id) if state.jobs is not None else None
    if job is None:
        return _error(404, "no such job (unknown id, or its result has expired)")
    return JSONResponse(_jsonable(job.to_dict()))
