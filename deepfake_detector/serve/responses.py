"""Response shaping: JSON-safe values, the one ``{"detail": ...}`` error shape, and the OpenAPI as served.

Every error the server answers (its own refusals, bad query values, unhandled exceptions) has the same
body, ``{"detail": "<one line>"}``, so clients need one parser; nothing here knows about routes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import ntpath
import os
import re
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# the server's one logger name, as before it was split into modules
log = logging.getLogger("deepfake_detector.serve.app")


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


class ErrorReply(Exception):
    """An error answer raised from a step deep inside a handler; the handler returns ``response()``.

    ``reason`` names a refused upload for the ``uploads_rejected_total`` metric (empty: not counted).
    """

    def __init__(self, status: int, detail: str, headers: Optional[dict] = None, reason: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.reason = reason

    def response(self) -> JSONResponse:
        return _error(self.status, self.detail, self.headers)


#: Keys whose values are file-system locations: only their base name is shown to clients.
_PATH_KEYS = frozenset({
    "checkpoint", "path", "cache", "cache_dir", "root", "dataset_root", "data", "data_dir", "out", "out_dir",
    "output", "runs", "runs_dir", "run_dir", "weights_file", "torch_home", "tmp_dir", "explain", "dir",
})
_ABSOLUTE = re.compile(r"^(?:/|~|[A-Za-z]:[\\/]|\\\\)")
_EMBEDDED_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[/\\][^\s'\"]*")


def _base_name(value: str) -> str:
    return ntpath.basename(value.rstrip("/\\")) if value.strip("/\\") else ""


def _without_paths(value: Any, key: str = "") -> Any:
    """``value`` with every server path reduced to its base name: clients learn no directory layout.

    Values under path-like keys (``checkpoint``, ``cache_dir``, ``dataset_root``...), strings that are
    absolute paths, and absolute paths inside longer strings (an error message) become base names.
    """
    if isinstance(value, dict):
        return {k: _without_paths(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_paths(v, key) for v in value]
    if not isinstance(value, str):
        return value
    if key.lower() in _PATH_KEYS or key.lower().endswith(("_path", "_dir", "_file", "_root")) \
            or _ABSOLUTE.match(value):
        return _base_name(value)
    return _EMBEDDED_PATH.sub(lambda m: _base_name(m.group(0)), value)


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


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any unhandled exception: logged with its traceback, answered 500 without details."""
    log.exception("unhandled error on %s", request.url.path)
    return _error(500, "internal server error")


async def bad_parameter(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A bad query value (``?explain=maybe``) is a 400 with a string detail, like every other error."""
    return _error(400, _validation_detail(exc.errors()))


_UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def _without_validation_422(schema: dict) -> dict:
    """OpenAPI as served: a bad parameter is answered 400 (see the handler), never FastAPI's 422."""
    for item in (schema.get("paths") or {}).values():
        for op in item.values():
            responses = op.get("responses") if isinstance(op, dict) else None
            if isinstance(responses, dict) and responses.pop("422", None) is not None:
                responses.setdefault("400", {"description": "An invalid parameter value", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
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


def serve_openapi_without_422(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and /openapi.json) return the schema after :func:`_without_validation_422`."""
    default_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = _without_validation_422(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
