"""API fuzzing: requests generated from the server's own OpenAPI description (schemathesis).

Every operation in ``/openapi.json`` gets valid (positive) and invalid (negative) requests -- query
values, multipart bodies of random bytes, wrong types, missing fields, odd path ids -- sent to a real
uvicorn server on 127.0.0.1 that runs the real ``Detector`` on the tiny checkpoint; the upload
operations also get a real face video, so the analysis path runs. For each answer: no 5xx, no hang (a
client time limit per request), a status and content type the schema documents, a body that matches
the documented schema, and every error JSON of the form ``{"detail": "<one line>"}``.

Hypothesis drives the generation directly (``operation.as_strategy``): schemathesis's own pytest
wrapper does not run under pytest 9.2. Bounded: ``MAX_EXAMPLES`` per operation and mode, a time limit
per request and per test; about 20 s on 2 cores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="a dev extra: pip install -e '.[dev]'")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deepfake_detector.serve import ServeSettings, create_app  # noqa: E402
from tests.serve.conftest import live_server  # noqa: E402

MAX_EXAMPLES = 25  # per operation and mode; nearly every answer takes milliseconds
REQUEST_TIMEOUT_S = 20.0  # a request that takes longer is a hang
UPLOADS = ("/api/v1/predict", "/api/v1/jobs")
OPERATIONS = [("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/api/v1/model"), ("POST", "/api/v1/predict"),
              ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs/{job_id}")]
# what can be made invalid (the others take no input, so they have no negative cases)
WITH_INPUT = [("POST", "/api/v1/predict"), ("POST", "/api/v1/jobs"), ("GET", "/api/v1/jobs/{job_id}")]
CASES = [(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "negative") for m, p in WITH_INPUT]


@pytest.fixture(scope="module")
def fuzz_server(real_detector: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live server with small limits (1 MB uploads, short timeouts) so hostile inputs end fast."""
    tmp = tmp_path_factory.mktemp("fuzz-serve")
    limits = ServeSettings(tmp_dir=str(tmp), max_upload_mb=1, workers=1, queue_size=2, request_timeout_s=15,
                           upload_timeout_s=10, body_idle_timeout_s=5, header_timeout_s=5, warmup=False)
    with live_server(create_app(real_detector, limits)) as base:
        yield base
    assert list(tmp.iterdir()) == []  # every upload and the private folder are gone


@pytest.fixture(scope="module")
def api_schema(fuzz_server: str) -> Any:
    """The schema exactly as the server serves it."""
    return schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")


def error_body_is_json_detail(ctx: Any, response: Any, case: Any) -> None:
    """Every 4xx/5xx answer is ``{"detail": "<one line>"}`` (the shape docs/serve.md promises)."""
    if response.status_code < 400:
        return
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:200]!r}") \
            from None
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), \
        f"{response.status_code} answer has no string 'detail': {body!r}"[:300]
    assert body["detail"] and "\n" not in body["detail"], f"detail is not one line: {body['detail']!r}"


def _strategy(operation: Any, mode: Any, video: bytes) -> Any:
    """Generated cases; for the uploads in positive mode, also ones whose file is a real face video."""
    from schemathesis import GenerationMode

    strategy = operation.as_strategy(GenerationMode(mode))
    if mode == "positive" and operation.path in UPLOADS:
        strategy = st.one_of(strategy, operation.as_strategy(body={"file": video}))
    return strategy


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_from_its_openapi_schema(method: str, path: str, mode: str, api_schema: Any, fuzz_server: str,
                                     face_video: Path) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    operation = api_schema[path][method]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]

    @given(case=_strategy(operation, mode, face_video.read_bytes()))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        response = case.call(base_url=fuzz_server, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=checks, additional_checks=[error_body_is_json_detail])
        if response.status_code == 202:
            _job_ends_without_a_server_error(api_schema, fuzz_server, response)

    fuzz()


def _job_ends_without_a_server_error(api_schema: Any, base: str, created: Any) -> None:
    """A created job finishes in time, matches the documented Job schema, and never ends in a 500."""
    poll = api_schema["/api/v1/jobs/{job_id}"]["GET"]
    location = f"/api/v1/jobs/{created.json()['id']}"
    assert created.headers.get("location") == [location]
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        answer = httpx.get(base + location, timeout=REQUEST_TIMEOUT_S)
        assert answer.status_code == 200, answer.text[:300]
        poll.validate_response(answer)
        job = answer.json()
        if job["state"] in ("done", "error"):
            break
        assert time.monotonic() < deadline, f"job still {job['state']} after {REQUEST_TIMEOUT_S:g} s"
        time.sleep(0.05)
    if job["state"] == "error":
        assert job["error"]["status"] in (415, 503, 504), job["error"]  # 500 would be a hidden server error
    else:
        assert job["result"]["status"], job


def test_every_api_operation_is_fuzzed(real_detector: Any, tmp_path: Path) -> None:
    """A new route cannot slip past the fuzzing: OPERATIONS lists every operation the schema has."""
    app = create_app(real_detector, ServeSettings(tmp_dir=str(tmp_path), warmup=False))
    served = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    assert served == set(OPERATIONS)


def test_a_gif_is_refused_like_any_other_non_video(real_detector: Any, tmp_path: Path) -> None:
    """Found by the fuzzing: a GIF passed the content check, then the pipeline refused it as a still
    image, so the client got 200 with status ``unreadable`` instead of the documented 415."""
    from fastapi.testclient import TestClient

    gif = (b"GIF87a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff,\x00\x00\x00\x00\x01\x00"
           b"\x01\x00\x00\x02\x02D\x01\x00;")
    app = create_app(real_detector, ServeSettings(tmp_dir=str(tmp_path), warmup=False))
    with TestClient(app) as client:
        r = client.post("/api/v1/predict", files={"file": ("a.gif", gif, "image/gif")})
    assert r.status_code == 415 and r.json()["detail"].startswith("not a video"), r.text

