"""The HTTP API and upload page: a thin, hardened adapter over :class:`deepfake_detector.inference.Detector`.

Why it is built the way it is:

- The upload is parsed from ``request.stream()`` with ``python_multipart``'s streaming parser and
  written straight to a private folder, counting bytes on the way, so a too-large upload is refused
  (413) long before it is read in full and nothing is ever buffered in memory.
- A request is admitted (or answered 503 + ``Retry-After``) *before* its body is read, and the slot is
  held until its inference thread has really finished, so ``workers + queue_size`` bounds memory,
  disk (that many uploads at most) and model use even when clients time out or disconnect.
- The content is checked by decoding (PyAV with a demuxer allow-list, one frame decoded), never by the
  file name: images, playlists, audio-only files and random bytes get 415.
- Each upload goes to a random 0700 folder inside a private 0700 folder, under a fixed name
  (``upload.<known video extension>``, never the client's name), and is deleted whatever happens.

``create_app(detector, settings)`` takes any object with ``predict_one(path, explain_dir=None)`` and
``info()`` (or a zero-argument callable that returns one, called once at start-up), so the HTTP
behaviour can be tested with a stand-in as well as with the real model.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from .. import __version__
from ..utils import is_within
from .settings import ServeSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Bytes a multipart envelope may add around the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD = 64 * 1024

#: Demuxers an upload may be read with. Everything else (image pipes, HLS/concat playlists that can
#: reference other files, raw formats guessed from noise) is refused before the model sees it.
ALLOWED_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "flv", "mpeg",
    "ogg", "asf", "gif", "h264", "hevc", "m4v", "dv",
)

_VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".flv", ".mpg",
                   ".mpeg", ".ogv", ".wmv", ".asf", ".3gp", ".gif", ".h264", ".hevc"}

_FINAL_STATUSES_WITH_SCORE = ("ok", "no_face")


class NotAVideo(Exception):
    """The upload could not be decoded as a video (answered 415)."""


# --------------------------------------------------------------------------------------------------
# Content check by decoding
# --------------------------------------------------------------------------------------------------


def probe_video(path: str | os.PathLike, max_packets: int = 500, max_side: int = 8192) -> dict:
    """Decode the first frame of ``path`` with an allow-listed demuxer, else raise :class:`NotAVideo`.

    This is the server's content check: the file name says nothing, so the bytes must open as a
    known video container with a video stream whose first frame really decodes.
    """
    import av

    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise NotAVideo("the uploaded file is empty")
    if head.lstrip().startswith((b"#EXTM3U", b"ffconcat")):
        raise NotAVideo("playlists are not accepted; upload the video file itself")
    try:
        container = av.open(str(path), options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)})
    except Exception as exc:  # noqa: BLE001 - any demuxer failure means "not a video we accept"
        raise NotAVideo("not a readable video file (no known container format found)") from exc
    try:
        if not container.streams.video:
            raise NotAVideo("the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        width = int(stream.codec_context.width or 0)
        height = int(stream.codec_context.height or 0)
        if width > max_side or height > max_side:
            raise NotAVideo(f"video dimensions {width}x{height} exceed the limit of {max_side} pixels")
        packets = 0
        try:
            for packet in container.demux(stream):
                packets += 1
                for frame in packet.decode():
                    return {
                        "format": container.format.name,
                        "codec": stream.codec_context.name,
                        "width": int(frame.width),
                        "height": int(frame.height),
                        "duration": float(container.duration / 1e6) if container.duration else None,
                    }
                if packets >= max_packets:
                    break
        except NotAVideo:
            raise
        except Exception as exc:  # noqa: BLE001
            raise NotAVideo("the video stream could not be decoded") from exc
        raise NotAVideo("no frame of the video stream could be decoded")
    finally:
        container.close()


def warm_up(detector: Any, folder: Path) -> None:
    """Run a tiny synthetic video through ``detector`` so the first real request is not the slow one.

    The first call pays for lazy imports, decoder and face-detector set-up and memory allocation;
    doing it at start-up keeps that out of users' time. Failures are logged, never fatal.
    """
    import av
    import numpy as np

    path = folder / "warmup.mp4"
    t0 = time.perf_counter()
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for i in range(8):
                img = np.full((64, 64, 3), 40 + 10 * i, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        probe_video(path)
        detector.predict_one(str(path))
        log.info("warm-up done in %.2f s", time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a warm-up problem must not stop the server
        log.warning("warm-up failed (the first request will be slower): %s", exc)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


# --------------------------------------------------------------------------------------------------
# Admission: a bounded number of requests in flight
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Streaming multipart upload
# --------------------------------------------------------------------------------------------------


class _UploadError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _content_disposition(value: bytes) -> tuple[Optional[str], Optional[str]]:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value)
    if kind != b"form-data":
        return None, None
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None)


def _safe_display_name(name: Optional[str]) -> str:
    """The client's file name for display only (never used as a path)."""
    if not name:
        return ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:200]


def _suffix_for(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix in _VIDEO_SUFFIXES else ".bin"


async def _stream_upload(request: Request, job: _Job, boundary: bytes, settings: ServeSettings) -> dict:
    """Stream the multipart body; write the ``file`` part to ``job.upload``; return name and size.

    Raises :class:`_UploadError` (400/413) on a bad or too-large body; partial files are removed by
    the caller's ``job.drop()``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    limit = settings.max_upload_bytes
    body_limit = limit + MULTIPART_OVERHEAD * settings.max_parts
    st: dict[str, Any] = {
        "parts": 0, "field": b"", "value": b"", "headers": {}, "target": None,
        "file_seen": False, "file_done": False, "size": 0, "filename": "", "too_large": False,
    }

    def on_part_begin() -> None:
        st["parts"] += 1
        st["headers"] = {}
        st["target"] = None
        if st["parts"] > settings.max_parts:
            raise _UploadError(400, f"too many multipart parts (at most {settings.max_parts})")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st["value"] += data[start:end]

    def on_header_end() -> None:
        st["headers"][st["field"].lower()] = st["value"]
        st["field"] = b""
        st["value"] = b""

    def on_headers_finished() -> None:
        name, filename = _content_disposition(st["headers"].get(b"content-disposition", b""))
        if name == "file" and not st["file_seen"]:  # with or without a filename= parameter
            st["file_seen"] = True
            st["filename"] = _safe_display_name(filename)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(job.upload, flags, 0o600)
            st["target"] = os.fdopen(fd, "wb")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        target = st["target"]
        if target is None:
            return  # other fields are ignored, never buffered
        n = end - start
        if st["size"] + n > limit:
            st["too_large"] = True
            raise _UploadError(413, f"the file is larger than the limit of {settings.max_upload_mb:g} MB")
        target.write(data[start:end])
        st["size"] += n

    def on_part_end() -> None:
        target = st["target"]
        if target is not None:
            target.close()
            st["target"] = None
            st["file_done"] = True

    parser = MultipartParser(boundary, callbacks={  # type: ignore[arg-type]
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished,
    })
    received = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            if received > body_limit:
                raise _UploadError(413, f"the request body is larger than the limit of "
                                        f"{settings.max_upload_mb:g} MB")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise _UploadError(400, f"malformed multipart body: {exc}") from exc
    finally:
        if st["target"] is not None:
            st["target"].close()
            st["target"] = None
    if not st["file_seen"]:
        raise _UploadError(400, "missing multipart field 'file' (send the video as form field 'file')")
    if not st["file_done"]:
        raise _UploadError(400, "the multipart body ended before the file was complete")
    if st["size"] == 0:
        raise _UploadError(400, "the uploaded file is empty")
    return {"filename": st["filename"], "size": st["size"]}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Builtins only, NaN/inf as null (JSON has no NaN), numpy and paths converted."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return _jsonable(item())
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        with contextlib.suppress(Exception):
            return _jsonable(tolist())
    return str(value)


def _prediction_dict(pred: Any) -> dict:
    if hasattr(pred, "to_dict"):
        return dict(pred.to_dict())
    if dataclasses.is_dataclass(pred) and not isinstance(pred, type):
        return dataclasses.asdict(pred)
    if isinstance(pred, dict):
        return dict(pred)
    raise TypeError(f"the detector returned {type(pred).__name__}, not a Prediction")


def _model_summary(info: dict) -> dict:
    sha = info.get("sha256") or info.get("checkpoint_sha256") or info.get("checkpoint_hash")
    return {"name": info.get("name"), "sha256": sha, "version": info.get("version")}


def _error(status: int, detail: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


_PARAMETER_KINDS = {"query": "query parameter", "path": "path parameter", "header": "header",
                    "cookie": "cookie", "body": "body field"}


def _validation_detail(errors: Any) -> str:
    """FastAPI's list of validation problems as the one-line ``detail`` every other error has.

    ``[{"loc": ["query", "explain"], "msg": "Input should be a valid boolean...", "input": "maybe"}]``
    becomes ``invalid value 'maybe' for query parameter 'explain': input should be a valid boolean...``.
    """
    errors = list(errors or [])
    if not errors:
        return "invalid request"
    first = errors[0] if isinstance(errors[0], dict) else {}
    loc = [str(part) for part in first.get("loc") or ()]
    kind = _PARAMETER_KINDS.get(loc[0], "parameter") if loc else "parameter"
    name = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "?")
    msg = " ".join(str(first.get("msg") or "invalid value").split()).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    value = first.get("input")
    shown = ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = "".join(ch for ch in str(value) if ch.isprintable())
        shown = f" {text[:40] + '...' if len(text) > 40 else text!r}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if first.get("type") == "missing":
        return f"missing {kind} '{name}'{more}"
    return f"invalid value{shown} for {kind} '{name}': {msg}{more}"


_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _without_validation_422(schema: dict) -> dict:
    """OpenAPI as served: a bad parameter is answered 400 (see the handler), never FastAPI's 422."""
    for item in (schema.get("paths") or {}).values():
        for op in item.values():
            responses = op.get("responses") if isinstance(op, dict) else None
            if isinstance(responses, dict) and responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "An invalid parameter value"})
    components = schema.get("components") or {}
    schemas = components.get("schemas") or {}
    text = json.dumps(schema.get("paths") or {})
    for name in _UNUSED_SCHEMAS:
        if f"#/components/schemas/{name}" not in text:
            schemas.pop(name, None)
    if "schemas" in components and not schemas:
        del components["schemas"]
    if "components" in schema and not components:
        del schema["components"]
    return schema


@dataclasses.dataclass
class _State:
    settings: ServeSettings
    detector: Any = None
    info: dict = dataclasses.field(default_factory=dict)
    executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    private_dir: Optional[Path] = None
    admission: Optional[Admission] = None
    started: float = 0.0


class _SecurityHeaders:
    """Pure ASGI middleware (does not touch the request body): conservative response headers.

    The upload page and its static files get a strict Content-Security-Policy (same origin only, no
    inline script), which also proves the page uses no external resources; so does ``/docs``.
    """

    PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        page = path in ("/", "/docs") or path.startswith("/static/")

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                headers.append((b"referrer-policy", b"no-referrer"))
                if page:
                    headers.append((b"content-security-policy", self.PAGE_CSP.encode()))
                    headers.append((b"x-frame-options", b"DENY"))
                if path.startswith("/api/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


def create_app(detector: Any, settings: Optional[ServeSettings] = None) -> FastAPI:
    """Build the FastAPI app around ``detector`` (a Detector-like object, or a callable returning one).

    The detector is loaded (if a callable) and its ``info()`` read once in the lifespan start-up;
    the private upload folder and the inference thread pool live exactly as long as the app.
    """
    settings = settings or ServeSettings()
    state = _State(settings=settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        parent = settings.tmp_dir
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix="deepfake-detector-serve-", dir=parent))
        os.chmod(private, 0o700)
        state.private_dir = private
        state.admission = Admission(settings.capacity)
        state.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.workers, thread_name_prefix="deepfake-detector-infer")
        try:
            det = detector
            if not hasattr(det, "predict_one") and callable(det):
                log.info("loading the model")
                det = await anyio.to_thread.run_sync(det)
            info = await anyio.to_thread.run_sync(det.info)
            if settings.warmup:
                await anyio.to_thread.run_sync(warm_up, det, private)
            state.info = _jsonable(dict(info or {}))
            state.detector = det
            state.started = time.time()
            log.info("model %s ready; uploads go to %s", state.info.get("name"), private)
            yield
        finally:
            state.detector = None
            state.executor.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(private, ignore_errors=True)

    app = FastAPI(
        title="deepfake-detector",
        version=__version__,
        description="Screen a video for deepfake manipulation: sampled face crops -> CNN -> LSTM -> "
                    "REAL/FAKE. Upload with `POST /api/v1/predict` (multipart field `file`).",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their JavaScript from a CDN: /docs is our own page
        redoc_url=None,
    )
    app.state.serve = state
    app.add_middleware(_SecurityHeaders)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"], max_age=600,
        )

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal server error")

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A bad query value (``?explain=maybe``) is a 400 with a string detail, like every other error."""
        return _error(400, _validation_detail(exc.errors()))

    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _without_validation_422(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    def require_token(request: Request) -> None:
        """Bearer-token check (constant-time); a no-op when no token is configured."""
        if settings.token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise HTTPException(401, "missing bearer token (send 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": 'Bearer realm="deepfake-detector"'})
        if not hmac.compare_digest(credentials.strip().encode("utf-8"), settings.token.encode("utf-8")):
            raise HTTPException(401, "invalid bearer token", headers={
                "WWW-Authenticate": 'Bearer realm="deepfake-detector", error="invalid_token"'})

    def ready() -> None:
        if state.detector is None or state.admission is None:
            raise HTTPException(503, "the model is not loaded (the server is starting or stopping)",
                                headers={"Retry-After": str(settings.retry_after_s)})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        """The API reference, rendered from /openapi.json in the browser with no external resources."""
        return FileResponse(STATIC_DIR / "docs.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="Liveness and readiness", responses={
        200: {"description": "The model is loaded and requests are accepted"},
        503: {"description": "The model is not loaded (the server is starting or stopping); see Retry-After"},
    })
    async def healthz() -> JSONResponse:
        """200 when the model is loaded and requests are accepted; 503 otherwise. No authentication."""
        if state.detector is None or state.admission is None:
            return _error(503, "the model is not loaded", {"Retry-After": str(settings.retry_after_s)})
        return JSONResponse({
            "status": "ok",
            "version": __version__,
            "uptime_s": round(time.time() - state.started, 3),
            "queue": state.admission.snapshot(),
            "limits": settings.public_dict(),
        })

    @app.get("/api/v1/model", summary="The loaded checkpoint", dependencies=[Depends(require_token)],
             responses={200: {"description": "The loaded model and the server's limits"},
                        401: {"description": "Missing or wrong bearer token"},
                        503: {"description": "The model is not loaded (the server is starting or stopping); "
                                             "see Retry-After"}})
    async def model_info() -> JSONResponse:
        """Name, checkpoint sha256, config, metrics and threshold of the loaded model, plus server limits."""
        ready()
        body = dict(state.info)
        body.setdefault("model", _model_summary(state.info))
        body["server"] = {**settings.public_dict(), **_jsonable(settings.extra)}
        return JSONResponse(body)

    @app.post(
        "/api/v1/predict",
        summary="Screen one video",
        dependencies=[Depends(require_token)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary",
                                            "description": "the video"}},
                }}},
            }
        },
        responses={
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
        },
    )
    async def predict(
        request: Request,
        explain: bool = Query(False, description="also return the heat-map strip as base64 PNG"),
    ) -> JSONResponse:
        """Upload a video as multipart field `file`; get the verdict as JSON.

        `status` says what happened to the video (`ok`, `no_face` = no face found and the centre of the
        frame was scored, `unreadable`, ...); `label` and `p_fake` are empty when it could not be scored.
        """
        t0 = time.perf_counter()
        ready()
        from python_multipart.multipart import parse_options_header

        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        if ctype != b"multipart/form-data":
            return _error(415, "send the video as multipart/form-data with the field 'file'")
        boundary = params.get(b"boundary")
        if not boundary or len(boundary) > 200:
            return _error(400, "multipart/form-data without a valid boundary")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return _error(400, "invalid Content-Length")
            if n > settings.max_upload_bytes + MULTIPART_OVERHEAD * settings.max_parts:
                return _error(413, f"the file is larger than the limit of {settings.max_upload_mb:g} MB")
        admission = state.admission
        assert admission is not None and state.private_dir is not None and state.executor is not None
        if not admission.try_acquire():
            return _error(503, "the server is busy (queue full); retry later",
                          {"Retry-After": str(settings.retry_after_s)})
        try:
            job = _Job(admission, state.private_dir)
        except OSError:
            admission.release()
            log.exception("cannot create an upload folder in %s", state.private_dir)
            return _error(500, "the server cannot store uploads right now")
        try:
            return await _handle_predict(request, job, boundary, explain, t0)
        except ClientDisconnect:
            log.info("client disconnected during upload")
            return _error(400, "client disconnected")
        finally:
            job.drop()

    async def _handle_predict(request: Request, job: _Job, boundary: bytes, explain: bool,
                              t0: float) -> JSONResponse:
        try:
            upload = await asyncio.wait_for(_stream_upload(request, job, boundary, settings),
                                            timeout=settings.upload_timeout_s)
        except _UploadError as exc:
            return _error(exc.status, exc.detail)
        except asyncio.TimeoutError:
            return _error(408, f"the upload took longer than {settings.upload_timeout_s:g} s")
        except OSError as exc:  # disk full, quota, read-only temp dir
            log.error("cannot store an upload: %s", exc)
            return _error(507, "the server has no room to store this upload right now")
        t_uploaded = time.perf_counter()
        if upload["filename"]:
            suffix = _suffix_for(upload["filename"])
            if suffix != job.upload.suffix:  # readers like a familiar extension; the content decides anyway
                renamed = job.upload.with_name("upload" + suffix)
                os.replace(job.upload, renamed)
                job.upload = renamed
        explain_dir: Optional[Path] = None
        if explain:
            job.explain_dir.mkdir(mode=0o700)
            explain_dir = job.explain_dir
        detector = state.detector
        admission = state.admission
        assert admission is not None and state.executor is not None

        def work() -> dict:
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

        job.hold()
        try:
            future = state.executor.submit(work)
        except RuntimeError:  # executor shut down
            job.drop(cleanup=False)
            return _error(503, "the server is shutting down", {"Retry-After": str(settings.retry_after_s)})
        future.add_done_callback(lambda _f: job.drop(cleanup=False))
        remaining = max(0.001, settings.request_timeout_s - (time.perf_counter() - t_uploaded))
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout=remaining)
        except asyncio.TimeoutError:
            future.cancel()
            log.warning("request timed out after %.1f s", time.perf_counter() - t0)
            return _error(504, f"the analysis took longer than the limit of "
                               f"{settings.request_timeout_s:g} s; try a shorter video or retry later")
        except Exception:
            log.exception("the detector failed")
            return _error(500, "the detector failed on this video (see the server log)")
        if "not_video" in result:
            return _error(415, f"not a video: {result['not_video']}")
        pred = _jsonable(_prediction_dict(result["pred"]))
        status = str(pred.get("status") or "")
        threshold = pred.get("threshold")
        if threshold is None:
            threshold = state.info.get("threshold")
        timing = {
            "seconds": round(time.perf_counter() - t0, 4),
            "upload": round(t_uploaded - t0, 4),
            "queue": round(result["queued"], 4),
            "probe": round(result["probe_s"], 4),
            "predict": round(result["predict_s"], 4),
        }
        for key, value in pred.items():  # decode/infer timings when the detector reports them
            if key.endswith("seconds") and isinstance(value, (int, float)) and key != "seconds":
                timing[key.replace("_seconds", "")] = round(float(value), 4)
        if isinstance(pred.get("seconds"), (int, float)):
            timing["detector"] = round(float(pred["seconds"]), 4)
        scored = status in _FINAL_STATUSES_WITH_SCORE and pred.get("p_fake") is not None
        # the server's own paths are nobody's business: show the client's file name instead
        error = str(pred.get("error") or "").replace(str(job.upload), upload["filename"] or "the upload")
        error = error.replace(str(job.dir), "").replace(str(state.private_dir), "")
        body: dict[str, Any] = {
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
        if explain:
            body["explanation_png"] = _read_explanation(pred.get("explanation"), explain_dir)
        return JSONResponse(body)

    def _read_explanation(path: Any, explain_dir: Optional[Path]) -> Optional[str]:
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

    return app


_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


def generate_token() -> str:
    """A random token for ``--token generate`` (URL-safe, 32 bytes of entropy)."""
    token = secrets.token_urlsafe(32)
    assert _TOKEN_RE.match(token)
    return token
