"""The route handlers: the upload page, the docs page, /healthz, /api/v1/model and /api/v1/predict.

Each handler gets the :class:`ServerState` injected (``Depends(server_state)``), so none hides state
in a closure. ``predict`` is a sequence of named steps: check the headers, admit, receive the upload,
run probe + model in a worker thread, shape the verdict; a step that refuses raises
:class:`ErrorReply`, which the handler turns into the answer.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import ClientDisconnect

from .. import __version__
from ..utils import is_within
from .admission import Admission, _Job
from .responses import ErrorReply, _error, _jsonable, _model_summary, _prediction_dict
from .security import check_bearer
from .settings import ServeSettings
from .state import ServerState
from .upload import NotAVideo, _stream_upload, _suffix_for, multipart_boundary, probe_video

# the server's one logger name, as before it was split into modules
log = logging.getLogger("deepfake_detector.serve.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"

_FINAL_STATUSES_WITH_SCORE = ("ok", "no_face")

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

_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The video was processed; its `status` says how (a verdict, or why none)"},
    400: {"description": "Missing `file` field, malformed or empty upload, or an invalid parameter "
                         "value (such as `explain=maybe`)"},
    401: {"description": "Missing or wrong bearer token"},
    408: {"description": "The upload took longer than the upload time limit"},
    413: {"description": "The file is larger than the upload limit"},
    415: {"description": "Not multipart, or the file is not a decodable video"},
    503: {"description": "Queue full or model not loaded (see Retry-After)"},
    504: {"description": "The analysis took longer than the request time limit"},
    507: {"description": "The server has no room to store the upload right now"},
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
    503: {"description": _NOT_LOADED},
})
async def healthz(state: ServerState = Depends(server_state)) -> JSONResponse:
    """200 when the model is loaded and requests are accepted; 503 otherwise. No authentication."""
    settings = state.settings
    if not state.is_ready:
        return _error(503, "the model is not loaded", _retry_after(settings))
    assert state.admission is not None
    return JSONResponse({
        "status": "ok",
        "version": __version__,
        "uptime_s": round(time.time() - state.started, 3),
        "queue": state.admission.snapshot(),
        "limits": settings.public_dict(),
    })


@router.get("/api/v1/model", summary="The loaded checkpoint", dependencies=[Depends(require_token)],
            responses={200: {"description": "The loaded model and the server's limits"},
                       401: {"description": "Missing or wrong bearer token"},
                       503: {"description": _NOT_LOADED}})
async def model_info(state: ServerState = Depends(server_state)) -> JSONResponse:
    """Name, checkpoint sha256, config, metrics and threshold of the loaded model, plus server limits."""
    _ready(state)
    body = dict(state.info)
    body.setdefault("model", _model_summary(state.info))
    body["server"] = {**state.settings.public_dict(), **_jsonable(state.settings.extra)}
    return JSONResponse(body)


# --------------------------------------------------------------------------------------------------
# Predict
# --------------------------------------------------------------------------------------------------


@router.post("/api/v1/predict", summary="Screen one video", dependencies=[Depends(require_token)],
             openapi_extra=_PREDICT_REQUEST_BODY, responses=_PREDICT_RESPONSES)
async def predict(
    request: Request,
    explain: bool = Query(False, description="also return the heat-map strip as base64 PNG"),
    state: ServerState = Depends(server_state),
) -> JSONResponse:
    """Upload a video as multipart field `file`; get the verdict as JSON.

    `status` says what happened to the video (`ok`, `no_face` = no face found and the centre of the
    frame was scored, `unreadable`, ...); `label` and `p_fake` are empty when it could not be scored.
    """
    t0 = time.perf_counter()
    _ready(state)
    try:
        boundary = multipart_boundary(request.headers, state.settings)
        job = _admit(state)
    except ErrorReply as exc:
        return exc.response()
    try:
        return await _handle_predict(state, request, job, boundary, explain, t0)
    except ErrorReply as exc:
        return exc.response()
    except ClientDisconnect:
        log.info("client disconnected during upload")
        return _error(400, "client disconnected")
    finally:
        job.drop()


def _admit(state: ServerState) -> _Job:
    """Take an admission slot and a private folder for this request, or refuse (503 busy, 500)."""
    admission = state.admission
    assert admission is not None and state.private_dir is not None and state.executor is not None
    if not admission.try_acquire():
        raise ErrorReply(503, "the server is busy (queue full); retry later", _retry_after(state.settings))
    try:
        return _Job(admission, state.private_dir)
    except OSError:
        admission.release()
        log.exception("cannot create an upload folder in %s", state.private_dir)
        raise ErrorReply(500, "the server cannot store uploads right now") from None


async def _handle_predict(state: ServerState, request: Request, job: _Job, boundary: bytes,
                          explain: bool, t0: float) -> JSONResponse:
    """Receive, analyse and answer one admitted request; the caller releases ``job``."""
    upload = await _receive_upload(request, job, boundary, state.settings)
    t_uploaded = time.perf_counter()
    if upload["filename"]:
        _rename_upload(job, upload["filename"])
    explain_dir: Optional[Path] = None
    if explain:
        job.explain_dir.mkdir(mode=0o700)
        explain_dir = job.explain_dir
    result = await _run_inference(state, job, explain_dir, t_uploaded, t0)
    if "not_video" in result:
        raise ErrorReply(415, f"not a video: {result['not_video']}")
    pred = _jsonable(_prediction_dict(result["pred"]))
    body = _verdict_body(state, job, upload, pred, result, _timing(pred, result, t0, t_uploaded))
    if explain:
        body["explanation_png"] = _read_explanation(pred.get("explanation"), explain_dir, state.settings)
    return JSONResponse(body)


async def _receive_upload(request: Request, job: _Job, boundary: bytes, settings: ServeSettings) -> dict:
    """Stream the upload within the upload time limit; refuse with 400/413 (bad body), 408 or 507."""
    try:
        return await asyncio.wait_for(_stream_upload(request, job, boundary, settings),
                                      timeout=settings.upload_timeout_s)
    except asyncio.TimeoutError:
        raise ErrorReply(408, f"the upload took longer than {settings.upload_timeout_s:g} s") from None
    except OSError as exc:  # disk full, quota, read-only temp dir
        log.error("cannot store an upload: %s", exc)
        raise ErrorReply(507, "the server has no room to store this upload right now") from None


def _rename_upload(job: _Job, filename: str) -> None:
    """Give the stored file the client's video extension: readers like a familiar one; the content decides."""
    suffix = _suffix_for(filename)
    if suffix != job.upload.suffix:
        renamed = job.upload.with_name("upload" + suffix)
        os.replace(job.upload, renamed)
        job.upload = renamed


def _infer(detector: Any, admission: Admission, job: _Job, explain_dir: Optional[Path],
           settings: ServeSettings, t_uploaded: float) -> dict:
    """In a worker thread: check the content by decoding, then run the model; with the step times."""
    t_start = time.perf_counter()
    admission.started()
    try:
        try:
            probe = probe_video(job.upload, settings.probe_max_packets, settings.max_video_side)
        except NotAVideo as exc:
            return {"not_video": str(exc), "queued": t_start - t_uploaded}
        t_probed = time.perf_counter()
        out = str(explain_dir) if explain_dir else None
        pred = detector.predict_one(str(job.upload), explain_dir=out)
        return {"pred": pred, "probe": probe, "queued": t_start - t_uploaded,
                "probe_s": t_probed - t_start, "predict_s": time.perf_counter() - t_probed}
    finally:
        admission.finished()


async def _run_inference(state: ServerState, job: _Job, explain_dir: Optional[Path], t_uploaded: float,
                         t0: float) -> dict:
    """Queue :func:`_infer` and wait within the request time limit (503 stopping, 504 late, 500 failed).

    The worker holds ``job`` too, so a timed-out analysis keeps its admission slot until it really ends.
    """
    settings = state.settings
    admission = state.admission
    assert admission is not None and state.executor is not None
    work = functools.partial(_infer, state.detector, admission, job, explain_dir, settings, t_uploaded)
    job.hold()
    try:
        future = state.executor.submit(work)
    except RuntimeError:  # executor shut down
        job.drop(cleanup=False)
        raise ErrorReply(503, "the server is shutting down", _retry_after(settings)) from None
    future.add_done_callback(lambda _f: job.drop(cleanup=False))
    remaining = max(0.001, settings.request_timeout_s - (time.perf_counter() - t_uploaded))
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout=remaining)
    except asyncio.TimeoutError:
        future.cancel()
        log.warning("request timed out after %.1f s", time.perf_counter() - t0)
        raise ErrorReply(504, f"the analysis took longer than the limit of {settings.request_timeout_s:g} s; "
                              "try a shorter video or retry later") from None
    except Exception:
        log.exception("the detector failed")
        raise ErrorReply(500, "the detector failed on this video (see the server log)") from None


def _timing(pred: dict, result: dict, t0: float, t_uploaded: float) -> dict:
    """Seconds per step of this request, plus the detector's own decode/infer timings when it reports them."""
    timing = {
        "seconds": round(time.perf_counter() - t0, 4),
        "upload": round(t_uploaded - t0, 4),
        "queue": round(result["queued"], 4),
        "probe": round(result["probe_s"], 4),
        "predict": round(result["predict_s"], 4),
    }
    for key, value in pred.items():
        if key.endswith("seconds") and isinstance(value, (int, float)) and key != "seconds":
            timing[key.replace("_seconds", "")] = round(float(value), 4)
    if isinstance(pred.get("seconds"), (int, float)):
        timing["detector"] = round(float(pred["seconds"]), 4)
    return timing


def _verdict_body(state: ServerState, job: _Job, upload: dict, pred: dict, result: dict,
                  timing: dict) -> dict[str, Any]:
    """The 200 body: a label and score only when the video was really scored, no server paths."""
    status = str(pred.get("status") or "")
    threshold = pred.get("threshold")
    if threshold is None:
        threshold = state.info.get("threshold")
    scored = status in _FINAL_STATUSES_WITH_SCORE and pred.get("p_fake") is not None
    # the server's own paths are nobody's business: show the client's file name instead
    error = str(pred.get("error") or "").replace(str(job.upload), upload["filename"] or "the upload")
    error = error.replace(str(job.dir), "").replace(str(state.private_dir), "")
    return {
        "filename": upload["filename"],
        "size": upload["size"],
        "label": (pred.get("label") or "") if scored else "",
        "p_fake": pred.get("p_fake") if scored else None,
        "threshold": threshold,
        "status": status,
        "error": error,
        "frames": pred.get("frames"),
        "face_ratio": pred.get("face_ratio"),
        "video": result["probe"],
        "model": _model_summary(state.info),
        "timing": timing,
    }


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
