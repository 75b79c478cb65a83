"""The HTTP API and upload page: a thin, hardened adapter over :class:`deepfake_detector.inference.Detector`.

``create_app(detector, settings)`` takes any object with ``predict_one(path, explain_dir=None)`` and
``info()`` (or a zero-argument callable that returns one, called once at start-up), so the HTTP
behaviour can be tested with a stand-in as well as with the real model. It only composes the parts:

- :mod:`.upload`: streams the multipart upload to a private file (413 long before it is read in full,
  nothing buffered in memory, hashed on the way) and checks its content by decoding, never by its name;
- :mod:`.admission`: the body budget (bodies being received) and the analysis slots (taken only once
  a body is complete, held until its inference thread has really finished), so slow clients cannot
  hold workers and ``workers + queue_size`` bounds disk and model use;
- :mod:`.timeouts`: header, idle and body deadlines (uvicorn has no body deadline of its own);
- :mod:`.analysis`: from a request to a verdict; :mod:`.jobs`: asynchronous jobs and the result cache;
- :mod:`.metrics`: ``/metrics`` (a registry per app) and the access log;
- :mod:`.state`: the private 0700 upload folder, thread pool and loaded model, for the app's lifetime;
- :mod:`.routes`: the handlers; :mod:`.responses`: the JSON shapes; :mod:`.security`: headers and token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Optional

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles

from .. import __version__
from .metrics import Observe
from .responses import bad_parameter, internal_error, serve_openapi_without_422
from .routes import STATIC_DIR, router
from .security import _RefuseSecretsInUrl, _SecurityHeaders, generate_token
from .settings import ServeSettings
from .state import ServerState
from .timeouts import BodyTimeouts
from .upload import MULTIPART_OVERHEAD, NotAVideo, probe_video

# generate_token (the serve command) and the upload checks (tests) have always been importable from here
__all__ = ["MULTIPART_OVERHEAD", "NotAVideo", "create_app", "generate_token", "probe_video"]


def create_app(detector: Any, settings: Optional[ServeSettings] = None) -> FastAPI:
    """Build the FastAPI app around ``detector`` (a Detector-like object, or a callable returning one).

    The detector is loaded (if a callable) and its ``info()`` read once in the lifespan start-up;
    the private upload folder and the inference thread pool live exactly as long as the app.
    """
    settings = settings or ServeSettings()
    state = ServerState(settings=settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.open()
        try:
            await state.load(detector)
            yield
        finally:
            state.close()

    app = FastAPI(
        title="deepfake-detector",
        version=__version__,
        description="Screen a video for deepfake manipulation: sampled face crops -> CNN -> LSTM -> "
                    "REAL/FAKE. Upload with `POST /api/v1/predict` (multipart field `file`), or "
                    "`POST /api/v1/jobs` and poll `GET /api/v1/jobs/{id}` for long videos.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their JavaScript from a CDN: /docs is our own page
        redoc_url=None,
    )
    app.state.serve = state
    # added innermost first: Observe (outermost) sees every answer; a secret in the URL is refused before
    # any route reads the request; the body deadlines wrap the routes' receive
    app.add_middleware(BodyTimeouts, settings=settings)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=False,
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"], max_age=600,
            expose_headers=["Location", "Retry-After"],
        )
    app.add_middleware(_RefuseSecretsInUrl)
    app.add_middleware(_SecurityHeaders)
    app.add_middleware(Observe, metrics_for=lambda: state.metrics, routes_for=lambda: router.routes)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(RequestValidationError, bad_parameter)  # type: ignore[arg-type]
    serve_openapi_without_422(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
